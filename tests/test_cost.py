"""Cost model: exact against fvcore (+ documented extras), params == numel, expected cost == exact
at indicator probabilities, gradients reach α and β, bounds enclose every derivable net."""

from __future__ import annotations

import random

import pytest
import torch

from hdnas.core.blocks import ESA
from hdnas.core.cost import (
    cost_bounds,
    cost_table,
    count,
    esa_cost,
    expected_macs,
    fvcore_macs,
    indicator_probs,
)
from hdnas.search.derive import derive
from hdnas.zoo.sampler import random_genotype
from hdnas.core.genotype import CellGenotype, Genotype
from hdnas.core.network import DerivedNet
from hdnas.core.ops import OPS, build_op, get_op
from hdnas.core.space import SearchSpace
from hdnas.search.supernet import SuperNet

SCALES = (2, 3, 4)


# small tensors: one thread is faster, and robust while another process keeps a core busy
pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_space(scale: int, **kw) -> SearchSpace:
    base = dict(scale=scale, channels=8, cells=3, steps=2, cell_inputs=2, fusion_cells=2)
    base.update(kw)
    return SearchSpace(**base)


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(OPS))
def test_every_op_matches_fvcore(name):
    spec = get_op(name)
    for c_in, c_out, (h, w) in [(8, 8, (9, 11)), (12, 4, (16, 5)), (4, 8, (3, 3))]:
        op = build_op(name, c_in, c_out)
        assert fvcore_macs(op, (h, w), in_channels=c_in) == spec.macs(c_in, c_out, h, w)
        assert numel(op) == spec.params(c_in, c_out)


@pytest.mark.parametrize("size", [(3, 3), (8, 8), (7, 5), (20, 33), (60, 64)])
def test_esa_matches_fvcore_plus_gate(size):
    esa = ESA(16)
    macs, params, gate = esa_cost(16, *size)
    assert gate == 16 * size[0] * size[1]
    assert fvcore_macs(esa, size, in_channels=16) == macs  # the gate is the extra fvcore skips
    assert numel(esa) == params


@pytest.mark.parametrize("scale", SCALES)
def test_random_genotypes_match_fvcore(scale):
    """The identity is size-generic; a small LR (13×19) keeps fvcore's tracing fast."""
    rng = random.Random(100 + scale)
    hr = (13 * scale, 19 * scale)
    for t in range(20):
        sp = tiny_space(scale, cells=rng.randint(1, 4), steps=rng.randint(1, 3), esa=rng.random() < 0.8)
        sp.cell_inputs = rng.randint(1, sp.cells)
        sp.fusion_cells = rng.randint(1, sp.cells)
        geno = random_genotype(sp, rng)
        net = DerivedNet(geno)
        report = count(geno, hr)
        assert report.lr_size == (13, 19)
        assert report.macs == fvcore_macs(net, report.lr_size) + report.extras, geno
        assert report.params == numel(net)
        assert report.macs == sum(p.macs for p in report.parts.values())
        live = len(geno.live_cells())
        assert report.extras == (live * 8 * 13 * 19 if geno.esa else 0)


@pytest.mark.parametrize("scale", SCALES)
def test_reference_size_matches_fvcore(scale):
    """At the reporting size (1280×720 HR) the formulas must be exact too (ESA's odd reduced sizes)."""
    geno = random_genotype(tiny_space(scale, cells=2, steps=1, cell_inputs=2), rng=scale)
    report = count(geno)
    assert report.lr_size == {2: (360, 640), 3: (240, 426), 4: (180, 320)}[scale]
    assert report.macs == fvcore_macs(DerivedNet(geno), report.lr_size) + report.extras


def test_paper_scale_net_at_x4():
    sp = SearchSpace(scale=4, channels=48, cells=6, steps=3, fusion_cells=4)
    geno = random_genotype(sp, 0)
    net = DerivedNet(geno)
    report = count(geno)
    assert report.macs == fvcore_macs(net, report.lr_size) + report.extras
    assert report.params == numel(net)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shared", [False, True])
def test_expected_cost_at_indicator_probs_is_exact(scale, shared):
    rng = random.Random(scale * 10 + shared)
    for t in range(25):
        sp = SearchSpace(
            scale=scale,
            channels=rng.choice([8, 16, 48]),
            cells=rng.randint(1, 6),
            steps=rng.randint(1, 4),
            esa=rng.random() < 0.8,
            shared_alpha=shared,
        )
        sp.cell_inputs = rng.randint(1, sp.cells + 1)
        sp.fusion_cells = rng.randint(1, sp.cells)
        geno = random_genotype(sp, rng)
        exact = count(geno).macs
        e = expected_macs(sp, indicator_probs(geno, sp))
        assert e.dtype == torch.float64 and e.item() == float(exact), geno
        assert derive(indicator_probs(geno, sp), sp).to_dict() == geno.to_dict()


def test_expected_cost_gradients_reach_alpha_and_beta():
    torch.manual_seed(0)
    sp = SearchSpace(scale=2, channels=8, cells=4, steps=2, cell_inputs=1, fusion_cells=2)
    net = SuperNet(sp)
    e = expected_macs(sp, net.arch_probs())
    e.backward()
    for p in net.arch_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
        assert torch.isfinite(p.grad).all()
    lo, hi = cost_bounds(sp)
    assert lo < e.item() < hi


def test_expected_cost_prefers_cheap_ops():
    sp = SearchSpace(scale=4, channels=16, cells=2, steps=1, ops=["conv_1x1", "conv_7x7"], fusion_cells=2)
    net = SuperNet(sp)
    expected_macs(sp, net.arch_probs()).backward()
    assert (net.alpha.grad[..., 0] < 0).all() and (net.alpha.grad[..., 1] > 0).all()


@pytest.mark.parametrize("shared", [False, True])
def test_cost_bounds(shared):
    sp = SearchSpace(scale=3, channels=16, cells=5, steps=2, cell_inputs=2, fusion_cells=3, shared_alpha=shared)
    lo, hi = cost_bounds(sp)
    for seed in range(40):
        assert lo <= count(random_genotype(sp, seed)).macs <= hi
    by_cost = sorted(sp.ops, key=lambda o: get_op(o).macs(16, 16, 10, 10))
    cheap, dear = by_cost[0], by_cost[-1]
    n, m = sp.cells, sp.fusion_cells
    cheapest = Genotype(
        scale=3,
        channels=16,
        cells=[CellGenotype([cheap] * 2, list(range(sp.inputs_kept(i)))) for i in range(1, n + 1)],
        fusion=list(range(1, m + 1)),
        upsampler=sp.upsampler,
    )
    dearest = Genotype(
        scale=3,
        channels=16,
        cells=[CellGenotype([dear] * 2, list(range(i - sp.inputs_kept(i), i))) for i in range(1, n + 1)],
        fusion=list(range(n - m + 1, n + 1)),
        upsampler=sp.upsampler,
    )
    assert count(cheapest).macs == lo
    assert count(dearest).macs == hi


def test_cost_table_is_cached():
    sp = tiny_space(2)
    assert cost_table(sp) is cost_table(tiny_space(2))
    assert cost_table(sp) is not cost_table(tiny_space(3))
