"""Reference nets (shapes, exact cost == fvcore + extras, published figures) and random genotypes."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hdnas.core.cost import HR_SIZE, cost_bounds, count, fvcore_macs
from hdnas.core.errors import ConfigError
from hdnas.core.genotype import Genotype
from hdnas.core.metrics import rgb_to_y
from hdnas.core.network import DerivedNet
from hdnas.core.space import SearchSpace
from hdnas.zoo import (
    REFERENCES,
    SamplerError,
    YChannelSR,
    build_reference,
    genotype_macs_fast,
    imdn_space_genotype,
    list_references,
    num_params,
    random_genotypes,
    reference_cost,
    rfdn_for_macs,
    rfdn_genotype,
)
from hdnas.zoo.sampler import _key

pytestmark = pytest.mark.usefixtures("single_thread")
SCALES = (2, 3, 4)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", list(REFERENCES))
def test_reference_forward_shape(name, scale):
    net = build_reference(name, scale).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 12, 10))
    assert out.shape == (2, 3, 12 * scale, 10 * scale)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", [n for n in REFERENCES if n != "bicubic"])
def test_reference_cost_is_fvcore_plus_extras(name, scale):
    """The identity is size-generic; an LR of 13×11 keeps tracing fast."""
    hr = (13 * scale, 11 * scale)
    net = build_reference(name, scale)
    cost = reference_cost(name, scale, hr)
    assert cost.lr_size == (13, 11)
    assert cost.params == num_params(net)
    assert cost.macs == fvcore_macs(net, cost.lr_size) + cost.extras


def test_bicubic_is_free_and_matches_imresize():
    from hdnas.core.data import imresize

    cost = reference_cost("bicubic", 4)
    assert (cost.macs, cost.params) == (0, 0)
    x = torch.rand(1, 3, 9, 7)
    assert torch.equal(build_reference("bicubic", 4)(x), imresize(x, scale=4))


def test_imdn_matches_published_figures():
    """IMDN: 715,176 params and 40.9G Multi-Adds (convs, as the paper counts) at ×4; 694K at ×2."""
    c4 = reference_cost("imdn", 4)
    assert c4.params == 715_176
    assert round(c4.paper_macs / 1e9, 1) == 40.9
    assert c4.macs == c4.paper_macs + c4.extras and c4.extras == 6 * 2 * 64 * 180 * 320
    assert round(reference_cost("imdn", 2).params / 1e3) == 694


def test_fsrcnn_figures_and_deconv_count():
    """Paper convention (deconv as a 9×9 conv at HR): 6.0/5.0/4.6G; exact count is s² less for the deconv."""
    for scale, paper in zip(SCALES, (6.0, 5.0, 4.6)):
        c = reference_cost("fsrcnn", scale)
        assert round(c.paper_macs / 1e9, 1) == paper
        h, w = HR_SIZE[0] // scale, HR_SIZE[1] // scale
        assert c.paper_macs - c.macs == 56 * 81 * h * w * (scale * scale - 1)
    net = build_reference("fsrcnn", 3)
    weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    assert weights == 12_464


def test_fsrcnn_wrapper_keeps_luma():
    """Y of the RGB output is the Y network's output: the colour round trip is exact up to float error."""

    class NearestY(nn.Module):
        def forward(self, y):
            return F.interpolate(y, scale_factor=2, mode="nearest")

    wrapped = YChannelSR(NearestY(), 2)
    x = torch.rand(1, 3, 8, 6)
    y_in = (rgb_to_y(x) / 255.0)
    y_out = rgb_to_y(wrapped(x)) / 255.0
    assert torch.allclose(y_out, F.interpolate(y_in, scale_factor=2, mode="nearest"), atol=1e-5)


def test_reference_genotypes():
    genotypes = {"rfdn": rfdn_genotype(4), "imdn_space": imdn_space_genotype(4)}
    for name in list_references():
        g = genotypes.get(name)
        if name in ("rfdn", "imdn_space"):
            assert isinstance(g, Genotype)
            g.validate()
            assert [c.inputs for c in g.cells] == [[i] for i in range(len(g.cells))]  # chain
            assert g.fusion == list(range(1, len(g.cells) + 1))
            assert all(op == "conv_3x3" for c in g.cells for op in c.ops)
            assert isinstance(build_reference(name, 4), DerivedNet)
        else:
            assert g is None and not isinstance(build_reference(name, 4), DerivedNet)
    assert genotypes["rfdn"].esa and not genotypes["imdn_space"].esa
    with pytest.raises(ConfigError, match="unknown reference net 'edsr'"):
        build_reference("edsr", 4)


def test_rfdn_size():
    g = rfdn_genotype(4)
    assert (g.channels, len(g.cells), g.steps) == (48, 6, 3)
    assert 0.5e6 < count(g).params < 0.65e6  # RFDN: about 0.55M


@pytest.mark.parametrize("target", [3e9, 8.5e9, 20e9, 47e9])
def test_rfdn_for_macs_picks_nearest_width(target):
    g = rfdn_for_macs(4, target)
    err = abs(count(g).macs - target)
    for c in (g.channels - 4, g.channels + 4):
        if c >= 4:
            assert err <= abs(count(rfdn_genotype(4, c)).macs - target)
    assert g.channels % 4 == 0 and len(g.cells) == 6


def test_rfdn_for_macs_can_take_the_searched_tail():
    """Inside one space the reference gets the searched genotype's tail: only the cells differ."""
    g = rfdn_for_macs(4, 10e9, upsampler="pixelshuffle_bicubic")
    assert g.upsampler == "pixelshuffle_bicubic"
    plain = rfdn_genotype(4, g.channels)
    assert count(g).macs - count(plain).macs == 3 * 16 * 25 * 180 * 320  # the fixed 5×5 bicubic conv


def _space(**kw) -> SearchSpace:
    base = dict(scale=4, channels=16, cells=4, steps=2, cell_inputs=1, fusion_cells=2)
    base.update(kw)
    return SearchSpace(**base)


@pytest.mark.parametrize("kw", [{}, {"cell_inputs": 2}, {"shared_alpha": True}, {"esa": False, "fusion_cells": 4}])
def test_fast_cost_equals_count(kw):
    space = _space(**kw)
    rng = random.Random(0)
    for g in random_genotypes(space, 20, rng):
        assert genotype_macs_fast(g, space) == count(g).macs


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_random_genotypes_within_range(where):
    space = _space()
    lo_b, hi_b = cost_bounds(space)
    t = lo_b + where * (hi_b - lo_b)
    lo, hi = 0.9 * t, 1.1 * t
    gs = random_genotypes(space, 5, random.Random(1), (lo, hi))
    assert len(gs) == 5 and len({_key(g) for g in gs}) == 5
    for g in gs:
        g.validate()
        macs = count(g).macs
        assert lo <= macs <= hi
        assert g.provenance["multi_adds"] == macs and g.provenance["sampler"] in ("rejection", "guided")
        DerivedNet(g)  # buildable
    again = random_genotypes(space, 5, random.Random(1), (lo, hi))
    assert [g.to_dict() for g in gs] == [g.to_dict() for g in again]  # deterministic


@pytest.mark.parametrize("shared", [False, True])
def test_narrow_range_uses_guided_sampler(shared):
    """Only the cheapest net: rejection (chance ~1e-4 per draw unshared) gives way to the guided sampler."""
    space = _space(shared_alpha=shared)
    lo_b, _ = cost_bounds(space)
    gs = random_genotypes(space, 2, random.Random(0), (lo_b, lo_b), rejection_tries=0 if shared else 50)
    assert all(count(g).macs == lo_b for g in gs)
    assert all(g.provenance["sampler"] == "guided" for g in gs)
    if shared:
        assert all(c.ops == g.cells[0].ops for g in gs for c in g.cells)


def test_unreachable_range_is_a_clear_error():
    space = _space()
    lo_b, hi_b = cost_bounds(space)
    with pytest.raises(SamplerError, match="unreachable"):
        random_genotypes(space, 1, 0, (hi_b * 1.5, hi_b * 2))
    with pytest.raises(SamplerError, match="lo <= hi"):
        random_genotypes(space, 1, 0, (hi_b, lo_b))


def test_sampler_gives_up_after_bounded_tries():
    """Two possible costs only; a range strictly between them is within bounds yet empty."""
    space = SearchSpace(scale=2, channels=8, cells=1, steps=1, ops=["conv_1x1", "conv_7x7"], fusion_cells=1)
    lo_b, hi_b = cost_bounds(space)
    with pytest.raises(SamplerError, match="found only 0 of 1"):
        random_genotypes(space, 1, 0, (lo_b + 1, hi_b - 1), rejection_tries=20, max_tries=50)
    with pytest.raises(SamplerError, match="found only 2 of 3"):  # only two distinct nets exist
        random_genotypes(space, 3, 0, None, rejection_tries=20, max_tries=50)
