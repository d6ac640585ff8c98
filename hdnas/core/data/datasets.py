"""Image sets held in memory, and random aligned LR/HR training patches drawn from them.

Two levels, because evaluation wants whole images and training wants many small patches:

* :class:`SRImageSet` -- whole images, each an :class:`SRImage` (uint8 HR cropped to a multiple
  of the scale, its uint8 LR).  Built from a folder (:func:`load_folder`, layout detected), from
  in-memory arrays (:func:`from_arrays`) or via the one entry point :func:`build_dataset`.
* :class:`PatchDataset` -- random aligned patches from an image set, with flips/rotations, drawn a
  whole batch at a time by :meth:`PatchDataset.sample_batch` from a generator the loop seeds per step.

Images are decoded once and kept as uint8 tensors, 4x less memory than float32 (DIV2K-train, 800
images of ~2040x1400, is ~6.6 GB of uint8 HR plus 1.7 GB of x2 LR; ~33 GB as float32).  Patches are
converted to float32 in [0, 1] only when drawn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from hdnas.core.data.imresize import bicubic_degrade
from hdnas.core.data.io import IMAGE_SUFFIXES, list_images, read_image
from hdnas.core.data.sample import sample_name, sample_named
from hdnas.core.errors import DataError

__all__ = [
    "SRImage",
    "SRImageSet",
    "PatchDataset",
    "Split",
    "modcrop",
    "find_pairs",
    "load_folder",
    "from_arrays",
    "build_dataset",
    "split_train_val",
]

T = TypeVar("T")


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop an ``(H, W, ...)`` array at the bottom/right to sides that are multiples of ``scale``."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


@dataclass(frozen=True)
class SRImage:
    """One evaluation/training image: uint8 ``(3, H, W)`` HR and ``(3, H/s, W/s)`` LR tensors."""

    name: str
    hr: torch.Tensor
    lr: torch.Tensor
    source: str  # file (or sample name) for error messages
    original_hw: tuple[int, int] | None = None  # HR size before modcrop, for messages


class SRImageSet(Dataset):
    """Whole LR/HR image pairs in memory, for evaluation and as the source of training patches.

    Indexing gives an :class:`SRImage`; evaluation iterates it directly (no DataLoader: the images
    differ in size and are already decoded).
    """

    def __init__(self, images: Sequence[SRImage], scale: int, name: str) -> None:
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.images = list(images)
        self.scale = int(scale)
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> SRImage:
        return self.images[index]

    def __iter__(self):  # plain iteration without relying on IndexError
        return iter(self.images)

    @property
    def names(self) -> list[str]:
        return [im.name for im in self.images]

    def subset(self, indices: Iterable[int], name: str | None = None) -> "SRImageSet":
        """The images at ``indices`` (e.g. one part of :func:`split_train_val`), sharing memory."""
        return SRImageSet([self.images[i] for i in indices], self.scale, name or self.name)

    @staticmethod
    def concat(sets: Sequence["SRImageSet"], name: str | None = None) -> "SRImageSet":
        """Several sets as one; image names get the set name as a prefix to stay unique."""
        if not sets:
            raise ValueError("concat: no image sets given")
        scales = {s.scale for s in sets}
        if len(scales) != 1:
            raise ValueError(f"concat: image sets have different scales {sorted(scales)}")
        if len(sets) == 1:
            return sets[0]
        images = [
            SRImage(f"{s.name}/{im.name}", im.hr, im.lr, im.source, im.original_hw) for s in sets for im in s.images
        ]
        return SRImageSet(images, sets[0].scale, name or "+".join(s.name for s in sets))



# --------------------------------------------------------------------------- loading


def _to_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def _make_pair(
    name: str, hr: np.ndarray, scale: int, source: str, lr: np.ndarray | None = None, lr_source: str | None = None
) -> SRImage:
    """HR (uint8 HWC) -> modcropped HR tensor and its LR (given, size-checked, or made by bicubic)."""
    h, w = hr.shape[:2]
    if h < scale or w < scale:
        raise DataError(f"{source}: image is {w}x{h}, smaller than the scale x{scale}")
    if lr is None:
        hr_t = _to_chw(modcrop(hr, scale))
        lr_t = bicubic_degrade(hr_t, scale)
        assert isinstance(lr_t, torch.Tensor)
        return SRImage(name, hr_t, lr_t, source, (h, w))
    lh, lw = lr.shape[:2]
    if (lh, lw) != (h // scale, w // scale):
        raise DataError(
            f"{lr_source}: LR image is {lw}x{lh} but HR {Path(source).name} is {w}x{h}; at x{scale} "
            f"the LR must be {w // scale}x{h // scale}"
        )
    return SRImage(name, _to_chw(modcrop(hr, scale)), _to_chw(lr), source, (h, w))


_DIV2K_HR = re.compile(r"DIV2K_(train|valid)_HR")
_SPLIT_TAG = {"train": "train", "val": "valid", "valid": "valid", "test": "valid"}


def _lr_index(lr_dir: Path | None) -> dict[str, Path]:
    """Image files of ``lr_dir`` by lower-case stem (one directory listing, not one per HR file)."""
    if lr_dir is None or not lr_dir.is_dir():
        return {}
    index: dict[str, Path] = {}
    for p in sorted(lr_dir.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            index.setdefault(p.stem.lower(), p)
    return index


def _find_lr(index: dict[str, Path], stem: str, scale: int) -> Path | None:
    """``{stem}x{s}.{ext}`` (DIV2K naming) or ``{stem}.{ext}``, any suffix case."""
    return index.get(f"{stem}x{scale}".lower()) or index.get(stem.lower())


def find_pairs(folder: str | Path, scale: int, split: str = "train") -> tuple[str, list[tuple[Path, Path | None]]]:
    """Detect the layout of ``folder`` and list ``(hr_file, lr_file_or_None)`` pairs, sorted by name.

    Layouts, tried in order:

    1. DIV2K root: ``folder/DIV2K_{train,valid}_HR/0001.png`` with optional
       ``folder/DIV2K_{train,valid}_LR_bicubic/X{s}/0001x{s}.png``; ``split`` picks train or valid
       (``val``/``valid``/``test`` -> valid).
    2. a ``DIV2K_{train,valid}_HR`` folder itself; LR looked up in its sibling ``..._LR_bicubic/X{s}``.
    3. paired folder: ``folder/HR/*`` with optional ``folder/LR_bicubic/X{s}/`` (``name.png`` or
       ``namex{s}.png``).
    4. a plain folder of HR images (``split`` is ignored).

    Missing LR files are made from HR by bicubic degradation when loading.  Returns the set's name too.
    """
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: data folder does not exist")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    tag = _SPLIT_TAG.get(split)
    if tag is None:
        raise DataError(f"{folder}: unknown split {split!r} (expected train or val)")
    m = _DIV2K_HR.fullmatch(folder.name)
    if any(folder.glob("DIV2K_*_HR")):
        hr_dir = folder / f"DIV2K_{tag}_HR"
        if not hr_dir.is_dir():
            raise DataError(f"{folder}: DIV2K layout without DIV2K_{tag}_HR/ (needed for split {split!r})")
        lr_dir: Path | None = folder / f"DIV2K_{tag}_LR_bicubic" / f"X{scale}"
        name = f"DIV2K-{tag}"
    elif m:
        hr_dir = folder
        lr_dir = folder.parent / f"DIV2K_{m.group(1)}_LR_bicubic" / f"X{scale}"
        name = f"DIV2K-{m.group(1)}"
    elif (folder / "HR").is_dir():
        hr_dir = folder / "HR"
        lr_dir = folder / "LR_bicubic" / f"X{scale}"
        name = folder.name
    else:
        hr_dir, lr_dir, name = folder, None, folder.name
    index = _lr_index(lr_dir)
    pairs = [(p, _find_lr(index, p.stem, scale)) for p in list_images(hr_dir)]
    return name, pairs


def load_folder(folder: str | Path, scale: int, split: str = "train") -> SRImageSet:
    """Decode every image of ``folder`` (layout as in :func:`find_pairs`) into an :class:`SRImageSet`."""
    name, pairs = find_pairs(folder, scale, split)
    images = []
    for hr_path, lr_path in pairs:
        hr = read_image(hr_path)
        lr = read_image(lr_path) if lr_path is not None else None
        images.append(_make_pair(hr_path.stem, hr, scale, str(hr_path), lr, str(lr_path)))
    return SRImageSet(images, scale, name)


def from_arrays(named: Sequence[tuple[str, np.ndarray]], scale: int, name: str) -> SRImageSet:
    """An :class:`SRImageSet` from in-memory uint8 ``(H, W, 3)`` HR arrays (LR made by bicubic)."""
    if not named:
        raise DataError(f"{name}: no images given")
    images = []
    for img_name, arr in named:
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise DataError(f"{name}/{img_name}: expected a uint8 HxWx3 array, got {arr.dtype} {arr.shape}")
        images.append(_make_pair(img_name, arr, scale, f"{name}/{img_name}"))
    return SRImageSet(images, scale, name)


def sample_dataset(scale: int, split: str = "train") -> SRImageSet:
    """The built-in sample split as an :class:`SRImageSet` named ``sample-train`` / ``sample-val``."""
    return from_arrays(sample_named(split), scale, sample_name(split))


def build_dataset(data: Sequence[str | Path] | str | Path | None, scale: int, split: str = "train") -> SRImageSet:
    """The one entry point for tools: folders (any layout of :func:`find_pairs`) or the built-in sample set.

    ``data`` None/empty -> :func:`sample_dataset` (``split`` train or val); several
    folders are concatenated.  Wrap the result in :class:`PatchDataset` for training.
    """
    if data is None or (not isinstance(data, (str, Path)) and len(data) == 0):
        return sample_dataset(scale, split)
    folders = [data] if isinstance(data, (str, Path)) else list(data)
    return SRImageSet.concat([load_folder(f, scale, split) for f in folders])


# --------------------------------------------------------------------------- splitting


class Split(NamedTuple):
    """Three disjoint parts of a training list: weight updates, architecture updates, validation."""

    weights: list
    arch: list
    val: list


def split_train_val(items: Sequence[T], n_val: int = 0, seed: int = 0) -> Split:
    """Split ``items`` (paths, ids, indices) deterministically into two training halves and a validation part.

    A bilevel search fits weights on one half and architecture parameters on the other, so the two
    must not share images.  The permutation depends only on ``seed`` and ``len(items)``; each part
    keeps the input order.  With an odd count the weights half gets the extra item.
    """
    n = len(items)
    if n_val < 0:
        raise DataError(f"split: n_val must be >= 0, got {n_val}")
    if n - n_val < 2:
        raise DataError(
            f"split: {n} images leave {n - n_val} for training after {n_val} validation images; "
            f"need at least 2 to form two disjoint training halves"
        )
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = sorted(perm[:n_val].tolist())
    rest = perm[n_val:]
    half = (len(rest) + 1) // 2
    w_idx, a_idx = sorted(rest[:half].tolist()), sorted(rest[half:].tolist())
    return Split([items[i] for i in w_idx], [items[i] for i in a_idx], [items[i] for i in val_idx])


# --------------------------------------------------------------------------- patches


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/90-degree rotations of ``(C, H, W)``: bit 0 h-flip, bit 1 v-flip, bit 2 transpose."""
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    if k & 4:
        x = x.transpose(-1, -2)
    return x


class PatchDataset:
    """Random aligned LR/HR patches with flips and rotations, a batch at a time (:meth:`sample_batch`).

    The LR patch is ``p x p`` at ``(y, x)`` of the LR image, the HR patch ``p*s x p*s`` at
    ``(y*s, x*s)`` of the HR image: exactly the pixels the LR patch was made from.

    No ``torch.utils.data.Dataset`` half: the search and retraining loops draw whole batches from a
    per-step generator. Measured on a 2-core machine (x4, LR patch 48, batch 16, 1 torch thread):
    :meth:`sample_batch` 6-7.5 ms/batch; a DataLoader 11-12 ms/batch with ``num_workers=0`` and
    13-24 ms with workers (plus their start-up, and they take cores from training). Workers pay off
    only with many cores and slow decoding, which the in-memory cache removes anyway.
    """

    def __init__(self, images: SRImageSet, patch_size: int, *, augment: bool = True, skip_small: bool = False) -> None:
        if patch_size < 1:
            raise DataError(f"patch size must be >= 1, got {patch_size}")
        s = images.scale
        hr_p = patch_size * s
        kept, sources = [], []
        for i, im in enumerate(images):
            lh, lw = im.lr.shape[-2:]
            if lh >= patch_size and lw >= patch_size:
                kept.append(im)
                sources.append(i)
            elif not skip_small:
                hh, hw = im.original_hw or tuple(im.hr.shape[-2:])
                raise DataError(
                    f"{im.source}: image is {hw}x{hh}, smaller than the HR patch {hr_p}x{hr_p} "
                    f"(LR patch {patch_size} at x{s}); use a smaller patch size or remove the image"
                )
        if not kept:
            raise DataError(f"{images.name}: no image is at least {hr_p}x{hr_p} for HR patches of that size")
        self.images = SRImageSet(kept, s, images.name)
        self.sources = sources  # index of each kept image in the set given (for aligned extras)
        self.scale = s
        self.patch_size = int(patch_size)
        self.augment = augment

    def _crop(
        self, img_index: int, g: torch.Generator, aligned: Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Draw one aligned uint8 patch pair from image ``img_index`` with generator ``g`` (and the
        same HR window of ``aligned[source]``, flipped alike, third)."""
        im = self.images.images[img_index]
        p, s = self.patch_size, self.scale
        lh, lw = im.lr.shape[-2:]
        y = int(torch.randint(0, lh - p + 1, (1,), generator=g))
        x = int(torch.randint(0, lw - p + 1, (1,), generator=g))
        hr_window = (slice(None), slice(y * s, (y + p) * s), slice(x * s, (x + p) * s))
        out = [im.lr[:, y : y + p, x : x + p], im.hr[hr_window]]
        if aligned is not None:
            out.append(aligned[self.sources[img_index]][hr_window])
        if self.augment:
            k = int(torch.randint(0, 8, (1,), generator=g))
            out = [_dihedral(t, k) for t in out]
        return tuple(out)

    def sample_batch(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch ``(B, 3, p, p)``, ``(B, 3, p*s, p*s)`` drawn directly, no DataLoader.

        Images are drawn uniformly at random (not ``i % n``); the result depends only on the
        generator's state, so seed it once per run and keep its state in checkpoints.
        """
        lr, hr = self._sample(batch, generator, None)
        return lr, hr

    def sample_batch_with(
        self, batch: int, generator: torch.Generator, aligned: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`sample_batch` plus the same HR windows of ``aligned``: one uint8 HR-sized
        ``(C, sH, sW)`` tensor per image of the set this sampler was built from (a teacher's
        outputs, say), cropped and flipped as the HR patch. The LR/HR patches are those
        :meth:`sample_batch` draws from the same generator state."""
        lr, hr, extra = self._sample(batch, generator, aligned)
        return lr, hr, extra

    def _sample(self, batch: int, generator: torch.Generator, aligned: Sequence[torch.Tensor] | None):
        idx = torch.randint(0, len(self.images), (batch,), generator=generator).tolist()
        crops = [self._crop(i, generator, aligned) for i in idx]
        return tuple(torch.stack([c[j] for c in crops]).float().div_(255.0) for j in range(len(crops[0])))
