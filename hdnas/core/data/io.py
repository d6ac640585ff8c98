"""Image reading: any common image file -> uint8 RGB ``(H, W, 3)`` numpy array, or a :class:`DataError`.

Pillow decodes lazily, so a truncated PNG/JPEG opens fine and only fails (or, for JPEG, is silently
padded with grey) when pixels are read.  We force a full decode with truncated images *not* allowed,
so a half-downloaded file is reported by name instead of training on grey stripes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from hdnas.core.errors import DataError, DataNote

__all__ = ["IMAGE_SUFFIXES", "is_image_file", "list_images", "read_image", "to_rgb_uint8"]

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg")


def is_image_file(path: Path) -> bool:
    """True for ``.png/.bmp/.jpg/.jpeg`` files (case-insensitive) that are not hidden."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files directly inside ``folder``; :class:`DataError` if missing or empty."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: folder does not exist")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    files = sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)
    if not files:
        raise DataError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}, any case)")
    return files


def to_rgb_uint8(img: Image.Image, name: str = "image") -> np.ndarray:
    """Convert a decoded Pillow image of any mode to uint8 RGB; alpha is dropped, grey replicated.

    16-bit images keep their high byte (``v >> 8``): Pillow already does that to 16-bit RGB PNGs
    while decoding, and grey 16-bit (modes ``I;16*`` / ``I``) is reduced the same way so that a grey
    and an RGB copy of one picture give the same pixels.  Float images (mode ``F``) are taken as [0, 1].
    """
    mode = img.mode
    if mode == "RGB":
        arr = np.asarray(img, dtype=np.uint8)
    elif mode in ("L", "1"):
        arr = np.asarray(img.convert("L"), dtype=np.uint8)
    elif mode in ("RGBA", "RGBX", "CMYK", "YCbCr", "P", "PA", "LA", "La", "RGBa", "LAB", "HSV"):
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    elif mode.startswith("I;16") or mode == "I":
        raw = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        arr = (raw >> 8).astype(np.uint8)
    elif mode == "F":
        raw = np.asarray(img).astype(np.float64)
        arr = np.clip(np.floor(raw * 255.0 + 0.5), 0, 255).astype(np.uint8)
    else:
        try:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except Exception as exc:  # pragma: no cover - exotic modes
            raise DataError(f"{name}: unsupported image mode {mode!r} ({exc})") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, dtype=np.uint8, order="C")  # Pillow's buffers are read-only
    return arr


_NOTES = {
    "L": "greyscale: the channel is replicated to RGB",
    "1": "1-bit: taken as greyscale and replicated to RGB",
    "I": "16/32-bit greyscale: reduced to 8 bits and replicated to RGB",
    "F": "float greyscale: taken as [0, 1], reduced to 8 bits and replicated to RGB",
    "LA": "greyscale with alpha: alpha dropped, the channel replicated to RGB",
    "La": "greyscale with alpha: alpha dropped, the channel replicated to RGB",
    "PA": "palette with alpha: alpha dropped",
    "RGBA": "RGBA: the alpha channel is dropped",
    "RGBa": "RGBA: the alpha channel is dropped",
    "CMYK": "CMYK: converted to RGB",
    "LAB": "Lab: converted to RGB",
    "HSV": "HSV: converted to RGB",
}


def conversion_note(mode: str) -> str | None:
    """What reading an image of Pillow ``mode`` changes about it; None when RGB keeps everything."""
    if mode.startswith("I;16"):
        mode = "I"
    return _NOTES.get(mode)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file fully into a uint8 ``(H, W, 3)`` RGB array.

    Raises :class:`DataError` naming the file for a missing file, a file that is not an image, or
    a truncated/corrupt one. A lossy or unusual conversion (greyscale, alpha) is reported as a
    :class:`DataNote` warning naming the file: metrics on such an image are not comparable to RGB ones.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # make truncation an error even if someone enabled it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning, palette transparency
            with Image.open(path) as img:
                img.load()  # force full decode: truncated files fail here, not later
                mode = img.mode
                arr = to_rgb_uint8(img, str(path))
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot decode image, file is truncated or corrupt ({exc})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    note = conversion_note(mode)
    if note is not None:
        warnings.warn(f"{path}: {note}", DataNote, stacklevel=2)
    return arr
