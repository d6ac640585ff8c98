"""Built-in sample set: natural photos shipped inside scikit-image's wheel, used when no ``--data`` is given.

It lets every tool (search, retrain, evaluate) run out of the box, offline, in seconds.  The files
are read straight from ``skimage/data/`` with Pillow -- never through ``skimage.data`` functions,
which may try to download (pooch) -- and without importing scikit-image at all.

| split | image | size (W x H) | mode |
|---|---|---|---|
| train | astronaut.png | 512 x 512 | RGB |
| train | camera.png | 512 x 512 | grey (replicated to RGB) |
| train | coffee.png | 600 x 400 | RGB |
| train | rocket.jpg | 640 x 427 | RGB |
| train | motorcycle_left.png | 741 x 500 | RGB |
| train | brick.png | 512 x 512 | grey |
| train | grass.png | 512 x 512 | grey |
| train | gravel.png | 512 x 512 | grey |
| val | chelsea.png | 451 x 300 | RGB |
| val | coins.png | 384 x 303 | grey |

(Sizes as in scikit-image 0.26.)  Images missing from an installed version are skipped; a split
with none left raises :class:`DataError`.  This is a smoke-test set, not a benchmark: its figures
are not comparable with papers'.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np

from hdnas.core.data.io import read_image
from hdnas.core.errors import DataError, DataNote

__all__ = ["SAMPLE_FILES", "sample_dir", "sample_name", "sample_named", "sample_images"]

SAMPLE_FILES: dict[str, tuple[str, ...]] = {
    "train": (
        "astronaut.png",
        "camera.png",
        "coffee.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "brick.png",
        "grass.png",
        "gravel.png",
    ),
    "val": ("chelsea.png", "coins.png"),
}
_ALIASES = {"train": "train", "val": "val", "valid": "val", "test": "val"}


def sample_dir() -> Path:
    """``skimage/data`` of the installed scikit-image, located without importing it."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("built-in sample set: scikit-image is not installed; pass --data FOLDER instead")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def sample_named(split: str = "train") -> list[tuple[str, np.ndarray]]:
    """``[(name, uint8 HxWx3 array), ...]`` of a split (``train`` or ``val``), in a fixed order."""
    key = _ALIASES.get(split)
    if key is None:
        raise DataError(f"built-in sample set: unknown split {split!r} (expected train or val)")
    folder = sample_dir()
    with warnings.catch_warnings():  # the grey photos are chosen and listed above: no note for each
        warnings.simplefilter("ignore", DataNote)
        out = [(Path(f).stem, read_image(folder / f)) for f in SAMPLE_FILES[key] if (folder / f).is_file()]
    if not out:
        raise DataError(f"built-in sample set: none of {', '.join(SAMPLE_FILES[key])} found in {folder}")
    return out


def sample_images(split: str = "train") -> list[np.ndarray]:
    """The uint8 RGB arrays of a split, without names."""
    return [arr for _, arr in sample_named(split)]


def sample_name(split: str = "train") -> str:
    """``sample-train`` / ``sample-val``: the name the split's image set carries."""
    return f"sample-{_ALIASES.get(split, split)}"
