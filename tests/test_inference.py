"""Tiled inference: the receptive field is exact for ESA-free nets and tiling then equals the whole image."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from hdnas.zoo.sampler import random_genotype
from hdnas.core.inference import _splits, receptive_field, tiled_forward, upscale
from hdnas.core.network import DerivedNet
from hdnas.core.space import SearchSpace

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_net(scale: int = 2, esa: bool = False, seed: int = 0) -> DerivedNet:
    space = SearchSpace(scale=scale, channels=8, cells=2, steps=2, cell_inputs=2, fusion_cells=2, esa=esa)
    torch.manual_seed(seed)
    return DerivedNet(random_genotype(space, rng=seed)).eval()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_receptive_field_is_tight_without_esa(seed):
    """The gradient of one output pixel reaches exactly ``radius`` LR pixels away, no further."""
    net = tiny_net(esa=False, seed=seed)
    rf = receptive_field(net.genotype)
    assert rf.exact
    n = 2 * rf.radius + 21
    x = torch.rand(1, 3, n, n, requires_grad=True)
    c = n // 2
    net(x)[0, :, 2 * c, 2 * c].sum().backward()
    hit = (x.grad[0].abs().sum(0) > 0).nonzero()
    assert int((hit - c).abs().max()) == rf.radius


def test_receptive_field_with_esa_is_a_bound_not_exact():
    net = tiny_net(esa=True)
    rf = receptive_field(net.genotype)
    assert not rf.exact
    assert rf.radius > receptive_field(tiny_net(esa=False).genotype).radius


@pytest.mark.parametrize("scale,size,tile", [(2, (70, 53), 24), (3, (41, 60), 16), (4, (33, 33), 10)])
def test_tiled_equals_whole_without_esa(scale, size, tile):
    net = tiny_net(scale, esa=False, seed=scale)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(scale))
    with torch.no_grad():
        whole = net(x)
    tiled = upscale(net, x, tile=tile)  # overlap defaults to the receptive field
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def test_too_small_an_overlap_breaks_identity():
    """The check above can fail: with overlap below the receptive field, tile seams differ."""
    net = tiny_net(2, esa=False, seed=1)
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = net(x)
        half = tiled_forward(net, x, 2, 16, overlap=receptive_field(net.genotype).radius // 2)
        none = tiled_forward(net, x, 2, 16, overlap=0)
    assert (half - whole).abs().max() > 1e-5 and (none - whole).abs().max() > 1e-3


def test_esa_tiling_warns_and_stays_close():
    net = tiny_net(2, esa=True)
    x = torch.rand(1, 3, 60, 44, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = net(x)
    with pytest.warns(UserWarning, match="approximate"):
        tiled = upscale(net, x, tile=20)
    assert tiled.shape == whole.shape and (tiled - whole).abs().max() < 0.05


def test_whole_image_by_default_and_tiles_when_out_of_memory():
    net = tiny_net(2, esa=False)
    x = torch.rand(1, 3, 300, 40)
    calls = []

    class SmallMemory(nn.Module):
        scale = 2
        genotype = net.genotype

        def forward(self, lr):
            calls.append(tuple(lr.shape[-2:]))
            if lr.shape[-2] * lr.shape[-1] > 200 * 40:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return net(lr)

    with torch.no_grad():
        whole = net(x)
    out = upscale(SmallMemory(), x)
    assert calls[0] == (300, 40) and len(calls) > 1  # tried whole first, then tiles
    torch.testing.assert_close(out, whole, rtol=0, atol=1e-5)

    class Broken(nn.Module):
        scale = 2

        def forward(self, lr):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not swallowed
        upscale(Broken(), x)


def test_splits_cover_evenly_without_slivers():
    parts = _splits(70, 24)
    assert parts[0][0] == 0 and parts[-1][1] == 70 and len(parts) == 3
    assert all(b == c for (_, b), (c, _) in zip(parts, parts[1:]))
    assert min(b - a for a, b in parts) >= 23
    assert _splits(10, 24) == [(0, 10)]


def test_overlap_needed_for_a_model_without_genotype():
    class Plain(nn.Module):
        scale = 2

        def forward(self, lr):
            return nn.functional.interpolate(lr, scale_factor=2)

    x = torch.rand(1, 3, 40, 40)
    with pytest.raises(ValueError, match="overlap="):
        upscale(Plain(), x, tile=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert upscale(Plain(), x, tile=16, overlap=0).shape == (1, 3, 80, 80)
