"""Data: image reading, MATLAB-style bicubic resizing, in-memory image sets, training patches, sample set.

Typical use::

    from hdnas.core.data import build_dataset, PatchDataset, split_train_val
    images = build_dataset(["../shared/data/T91"], scale=4)          # or None: built-in sample set
    parts = split_train_val(list(range(len(images))), n_val=2, seed=0)
    train_w = PatchDataset(images.subset(parts.weights), patch_size=32)
    lr, hr = train_w.sample_batch(16, torch.Generator().manual_seed(0))
"""

from hdnas.core.data.datasets import (
    PatchDataset,
    Split,
    SRImage,
    SRImageSet,
    build_dataset,
    find_pairs,
    from_arrays,
    load_folder,
    modcrop,
    sample_dataset,
    split_train_val,
)
from hdnas.core.data.imresize import bicubic_degrade, contributions, imresize, imresize_uint8, to_uint8
from hdnas.core.data.io import IMAGE_SUFFIXES, list_images, read_image
from hdnas.core.data.sample import sample_images, sample_named

__all__ = [
    "IMAGE_SUFFIXES",
    "PatchDataset",
    "SRImage",
    "SRImageSet",
    "Split",
    "bicubic_degrade",
    "build_dataset",
    "contributions",
    "find_pairs",
    "from_arrays",
    "imresize",
    "imresize_uint8",
    "list_images",
    "load_folder",
    "modcrop",
    "read_image",
    "sample_dataset",
    "sample_images",
    "sample_named",
    "split_train_val",
    "to_uint8",
]
