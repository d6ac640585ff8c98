"""Image reading, folder layouts, bad inputs, training patches, splits and the built-in sample set."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hdnas.core.data import (
    PatchDataset,
    bicubic_degrade,
    build_dataset,
    find_pairs,
    from_arrays,
    list_images,
    load_folder,
    read_image,
    sample_dataset,
    sample_images,
    sample_named,
    split_train_val,
)
from hdnas.core.data.sample import SAMPLE_FILES, sample_dir
from hdnas.core.errors import DataError

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest: 2 threads thrash when a core is busy


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(path)
    return path


def write_png16(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    colour = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


# --------------------------------------------------------------------------- reading


def test_read_rgb_grey_rgba_palette_la(tmp_path):
    a = rgb(10, 12)
    np.testing.assert_array_equal(read_image(save(tmp_path / "a.png", a)), a)
    np.testing.assert_array_equal(read_image(save(tmp_path / "a.bmp", a)), a)
    g = a[:, :, 0]
    out = read_image(save(tmp_path / "g.png", g))
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[:, :, c], g) for c in range(3))
    rgba = np.concatenate([a, np.full((10, 12, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(read_image(save(tmp_path / "rgba.png", rgba)), a)  # alpha dropped, not blended
    la = read_image(save(tmp_path / "la.png", np.stack([g, g], axis=2)))
    np.testing.assert_array_equal(la[:, :, 1], g)
    p = read_image(save(tmp_path / "p.png", a, mode="P"))
    assert p.shape == (10, 12, 3)
    jpg = read_image(save(tmp_path / "a.JPG", a))
    assert jpg.shape == (10, 12, 3) and jpg.flags.writeable


def test_read_16bit_keeps_high_byte(tmp_path):
    a16 = (np.arange(6 * 5 * 3).reshape(6, 5, 3) * 1000 + 77).astype(np.uint16)
    np.testing.assert_array_equal(read_image(write_png16(tmp_path / "c16.png", a16)), (a16 >> 8).astype(np.uint8))
    g16 = a16[:, :, 0]
    out = read_image(write_png16(tmp_path / "g16.png", g16))
    np.testing.assert_array_equal(out[:, :, 2], (g16 >> 8).astype(np.uint8))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_is_an_error_naming_the_file(tmp_path, suffix):
    good = save(tmp_path / f"good{suffix}", rgb(64, 64))
    bad = tmp_path / f"bad{suffix}"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"bad\.(png|jpg).*(truncated|corrupt)"):
        read_image(bad)


def test_not_an_image_and_missing_file(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.png: not a readable image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(DataError, match=r"nope\.png: file does not exist"):
        read_image(tmp_path / "nope.png")


def test_list_images_sorted_case_insensitive_and_errors(tmp_path):
    for n in ["b.PNG", "a.jpeg", "c.Bmp", "d.txt", ".hidden.png"]:
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpeg", "b.PNG", "c.Bmp"]
    with pytest.raises(DataError, match="missing.*does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no images found"):
        list_images(tmp_path / "empty")


# --------------------------------------------------------------------------- folders and layouts


def test_plain_folder_modcrop_and_bicubic_lr(tmp_path):
    a = rgb(37, 42, seed=1)
    save(tmp_path / "set" / "img2.png", a)
    save(tmp_path / "set" / "img1.png", rgb(30, 30, seed=2))
    ds = load_folder(tmp_path / "set", scale=4)
    assert ds.name == "set" and ds.names == ["img1", "img2"] and ds.scale == 4
    im = ds[1]
    assert im.hr.dtype == torch.uint8 and tuple(im.hr.shape) == (3, 36, 40)
    np.testing.assert_array_equal(im.hr.permute(1, 2, 0).numpy(), a[:36, :40])  # top-left crop
    assert torch.equal(im.lr, bicubic_degrade(im.hr, 4))
    assert tuple(im.lr.shape) == (3, 9, 10)


def test_grey_and_rgba_images_in_a_folder_are_converted(tmp_path):
    save(tmp_path / "g.png", rgb(16, 16)[:, :, 0])
    save(tmp_path / "r.png", np.concatenate([rgb(16, 16), np.zeros((16, 16, 1), np.uint8)], axis=2))
    ds = load_folder(tmp_path, scale=2)
    assert all(im.hr.shape == (3, 16, 16) and im.lr.shape == (3, 8, 8) for im in ds)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="nothing.*does not exist"):
        load_folder(tmp_path / "nothing", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_folder(tmp_path / "empty", 2)
    bad = tmp_path / "bad"
    save(bad / "ok.png", rgb(8, 8))
    data = save(bad / "cut.png", rgb(64, 64)).read_bytes()
    (bad / "cut.png").write_bytes(data[:200])
    with pytest.raises(DataError, match=r"cut\.png"):
        load_folder(bad, 2)


def make_div2k(root: Path, split: str, scale: int, lr_for: tuple[str, ...]) -> dict[str, np.ndarray]:
    hrs = {}
    for i, stem in enumerate(["0001", "0002"]):
        hr = rgb(24, 32, seed=10 + i)
        save(root / f"DIV2K_{split}_HR" / f"{stem}.png", hr)
        hrs[stem] = hr
        if stem in lr_for:  # a recognisable LR (not the bicubic one) to prove it is used
            save(root / f"DIV2K_{split}_LR_bicubic" / f"X{scale}" / f"{stem}x{scale}.png",
                 np.full((24 // scale, 32 // scale, 3), 9, np.uint8))
    return hrs


def test_div2k_layout_uses_given_lr_and_makes_missing_ones(tmp_path):
    make_div2k(tmp_path, "train", 2, lr_for=("0001",))
    make_div2k(tmp_path, "valid", 2, lr_for=())
    ds = load_folder(tmp_path, 2, split="train")
    assert ds.name == "DIV2K-train" and ds.names == ["0001", "0002"]
    assert torch.all(ds[0].lr == 9)  # given LR used
    assert torch.equal(ds[1].lr, bicubic_degrade(ds[1].hr, 2))  # missing LR made
    val = load_folder(tmp_path, 2, split="val")
    assert val.name == "DIV2K-valid" and len(val) == 2
    # The HR folder itself finds the sibling LR folder.
    name, pairs = find_pairs(tmp_path / "DIV2K_train_HR", 2)
    assert name == "DIV2K-train" and pairs[0][1] is not None and pairs[1][1] is None


def test_div2k_wrong_lr_size_names_the_file(tmp_path):
    make_div2k(tmp_path, "train", 4, lr_for=())
    save(tmp_path / "DIV2K_train_LR_bicubic" / "X4" / "0002x4.png", rgb(5, 8))
    with pytest.raises(DataError, match=r"0002x4\.png: LR image is 8x5 .* must be 8x6"):
        load_folder(tmp_path, 4)


def test_div2k_missing_split_folder(tmp_path):
    make_div2k(tmp_path, "train", 2, lr_for=())
    with pytest.raises(DataError, match="DIV2K_valid_HR"):
        load_folder(tmp_path, 2, split="val")


def test_paired_hr_lr_layout(tmp_path):
    hr = rgb(12, 12)
    save(tmp_path / "pairs" / "HR" / "x.png", hr)
    save(tmp_path / "pairs" / "LR_bicubic" / "X3" / "x.png", np.full((4, 4, 3), 5, np.uint8))
    ds = load_folder(tmp_path / "pairs", 3)
    assert ds.name == "pairs" and torch.all(ds[0].lr == 5) and ds[0].hr.shape == (3, 12, 12)


def test_build_dataset_concatenates_folders(tmp_path):
    save(tmp_path / "A" / "p.png", rgb(8, 8))
    save(tmp_path / "B" / "p.png", rgb(8, 8, seed=3))
    ds = build_dataset([tmp_path / "A", str(tmp_path / "B")], 2)
    assert ds.name == "A+B" and ds.names == ["A/p", "B/p"] and len(ds) == 2


# --------------------------------------------------------------------------- patches


def coded_set(scale: int, h: int = 40, w: int = 48, n: int = 2):
    """Random images: any 8x8 LR window is unique, so a patch's position can be found by search."""
    return from_arrays([(f"im{i}", rgb(h, w, seed=20 + i)) for i in range(n)], scale, "coded")


def locate(patch: torch.Tensor, image: torch.Tensor) -> list[tuple[int, int]]:
    """All (y, x) where ``patch`` occurs in ``image`` (exhaustive, vectorised)."""
    p = patch.shape[-1]
    windows = image.unfold(1, p, 1).unfold(2, p, 1)  # (C, H-p+1, W-p+1, p, p)
    hit = (windows == patch[:, None, None]).flatten(3).all(dim=3).all(dim=0)
    return [tuple(v) for v in hit.nonzero().tolist()]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    if k & 4:
        x = x.transpose(-1, -2)
    return x


@pytest.mark.parametrize("scale", [2, 3])
def test_patches_are_aligned_crops_of_the_full_lr_and_hr(scale):
    images = coded_set(scale, h=8 * 3 * scale, w=10 * 2 * scale)
    ds = PatchDataset(images, patch_size=8, augment=False)
    for lr, hr in zip(*ds.sample_batch(6, torch.Generator().manual_seed(1))):
        assert lr.dtype == torch.float32 and lr.shape == (3, 8, 8) and hr.shape == (3, 8 * scale, 8 * scale)
        assert 0.0 <= float(lr.min()) and float(lr.max()) <= 1.0
        lr8, hr8 = (lr * 255).round().to(torch.uint8), (hr * 255).round().to(torch.uint8)
        (im, (y, x)), = [(im, yx) for im in images for yx in locate(lr8, im.lr)]  # from one image, one place
        assert torch.equal(hr8, im.hr[:, y * scale : (y + 8) * scale, x * scale : (x + 8) * scale])


def test_augmented_patches_share_one_transform(seeded):
    images = coded_set(2, h=48, w=48, n=1)
    ds = PatchDataset(images, patch_size=8, augment=True)
    im = images[0]
    seen = set()
    for i, (lr, hr) in enumerate(zip(*ds.sample_batch(24, torch.Generator().manual_seed(3)))):
        lr8, hr8 = (lr * 255).round().to(torch.uint8), (hr * 255).round().to(torch.uint8)
        matches = []
        for k in range(8):
            # undo transform k on the LR patch, find it, and check HR went through the same k
            found = [(y, x) for (y, x) in locate(dihedral_inverse(lr8, k), im.lr)]
            for y, x in found:
                if torch.equal(hr8, dihedral(im.hr[:, 2 * y : 2 * y + 16, 2 * x : 2 * x + 16], k)):
                    matches.append(k)
        assert matches, f"patch {i} is not an aligned, identically transformed pair"
        seen.update(matches)
    assert len(seen) >= 6  # the augmentations are actually used


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 2:
        x = x.flip(-2)
    if k & 1:
        x = x.flip(-1)
    return x


def test_sample_batch_shapes_and_generator_determinism():
    ds = PatchDataset(coded_set(3, h=48, w=48, n=3), 8)
    lr, hr = ds.sample_batch(5, torch.Generator().manual_seed(4))
    assert lr.shape == (5, 3, 8, 8) and hr.shape == (5, 3, 24, 24) and hr.dtype == torch.float32
    lr2, hr2 = ds.sample_batch(5, torch.Generator().manual_seed(4))
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    lr3, _ = ds.sample_batch(5, torch.Generator().manual_seed(5))
    assert not torch.equal(lr, lr3)


def test_image_smaller_than_patch_names_file_and_sizes():
    images = from_arrays([("big", rgb(64, 64)), ("tiny", rgb(40, 28))], 2, "mixed")
    with pytest.raises(DataError, match=r"mixed/tiny: image is 28x40, smaller than the HR patch 32x32"):
        PatchDataset(images, patch_size=16)
    ds = PatchDataset(images, patch_size=16, skip_small=True)
    assert len(ds.images) == 1
    with pytest.raises(DataError, match="no image is at least"):
        PatchDataset(images, patch_size=40, skip_small=True)


def test_image_smaller_than_patch_from_folder_names_path(tmp_path):
    save(tmp_path / "small.png", rgb(20, 30))
    with pytest.raises(DataError, match=r"small\.png: image is 30x20.*HR patch 48x48"):
        PatchDataset(load_folder(tmp_path, 4), patch_size=12)


# --------------------------------------------------------------------------- splits


def test_split_train_val_disjoint_deterministic():
    items = [f"img{i:02d}" for i in range(11)]
    s = split_train_val(items, n_val=3, seed=0)
    assert len(s.val) == 3 and len(s.weights) == 4 and len(s.arch) == 4
    assert sorted(s.weights + s.arch + s.val) == items
    assert not set(s.weights) & set(s.arch)
    assert s == split_train_val(items, n_val=3, seed=0)
    assert s != split_train_val(items, n_val=3, seed=1)
    assert s.weights == sorted(s.weights)  # input order kept within a part
    with pytest.raises(DataError, match="need at least 2"):
        split_train_val(items[:3], n_val=2)


# --------------------------------------------------------------------------- built-in sample set


def test_sample_set_is_local_and_deterministic():
    folder = sample_dir()
    present = [f for f in SAMPLE_FILES["train"] if (folder / f).is_file()]
    assert len(present) >= 4, f"expected scikit-image's bundled photos in {folder}"
    named = sample_named("train")
    assert [n for n, _ in named] == [Path(f).stem for f in present]
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for _, a in named)
    assert dict(named)["astronaut"].shape == (512, 512, 3)
    val = sample_images("val")
    assert 1 <= len(val) <= 2
    assert {n for n, _ in named}.isdisjoint(n for n, _ in sample_named("val"))
    with pytest.raises(DataError, match="unknown split"):
        sample_named("nope")


def test_build_dataset_without_data_uses_sample_set():
    ds = build_dataset(None, 4, "val")
    ref = sample_dataset(4, "val")
    assert ds.name == "sample-val" and ds.names == ref.names
    assert all(im.hr.shape[-1] % 4 == 0 and im.lr.shape[-1] * 4 == im.hr.shape[-1] for im in ds)
