"""derive(): argmax α, top-k β with lowest-index ties; random_genotype(): valid and reproducible."""

from __future__ import annotations

import random

import pytest
import torch

from hdnas.search.derive import argmax, derive, top_k
from hdnas.zoo.sampler import random_genotype
from hdnas.core.network import DerivedNet
from hdnas.core.space import ArchProbs, SearchSpace
from hdnas.search.supernet import SuperNet

pytestmark = pytest.mark.usefixtures("single_thread")


def space(**kw) -> SearchSpace:
    base = dict(scale=2, channels=8, cells=4, steps=2, cell_inputs=2, fusion_cells=2)
    base.update(kw)
    return SearchSpace(**base)


def test_tie_breaking_lowest_index():
    assert argmax([1.0, 3.0, 3.0, 2.0]) == 1
    assert top_k([0.5, 0.5, 0.5], 2) == [0, 1]
    assert top_k([0.1, 0.9, 0.5, 0.9], 2) == [1, 3]
    assert top_k(torch.tensor([0.3, 0.2, 0.5]), 2) == [0, 2]


@pytest.mark.parametrize("shared", [False, True])
def test_derive_from_supernet_is_valid(shared):
    torch.manual_seed(0)
    sp = space(shared_alpha=shared)
    net = SuperNet(sp)
    geno = derive(net, sp)
    geno.validate()
    assert geno.provenance == {}
    assert len(geno.cells) == sp.cells and geno.steps == sp.steps
    assert len(geno.fusion) == sp.fusion_cells
    for i, cell in enumerate(geno.cells, start=1):
        assert len(cell.inputs) == sp.inputs_kept(i)
    if shared:
        assert all(c.ops == geno.cells[0].ops for c in geno.cells)
    assert net.genotype().to_dict() == geno.to_dict()
    DerivedNet(geno)  # builds


def test_derive_follows_the_largest_weights():
    sp = space(cells=3, cell_inputs=1, fusion_cells=2)
    n_ops = len(sp.ops)
    alpha = torch.zeros(3, 2, n_ops)
    alpha[0, 0, 4] = alpha[0, 1, 2] = 1
    alpha[1, 0, 8] = alpha[1, 1, 0] = 1
    alpha[2, 0, 1] = alpha[2, 1, 7] = 1
    probs = ArchProbs(
        alpha=alpha,
        inputs=[torch.tensor([1.0]), torch.tensor([0.2, 0.8]), torch.tensor([0.5, 0.1, 0.4])],
        fusion=torch.tensor([0.1, 0.6, 0.3]),
    )
    geno = derive(probs, sp)
    assert [c.ops for c in geno.cells] == [
        [sp.ops[4], sp.ops[2]],
        [sp.ops[8], sp.ops[0]],
        [sp.ops[1], sp.ops[7]],
    ]
    assert [c.inputs for c in geno.cells] == [[0], [1], [0]]
    assert geno.fusion == [2, 3]


def test_uniform_weights_derive_lowest_indices():
    sp = space(cells=3, cell_inputs=2, fusion_cells=2)
    probs = ArchProbs(
        alpha=[[[0.0] * len(sp.ops)] * 2] * 3,
        inputs=[[1.0], [0.5, 0.5], [1 / 3] * 3],
        fusion=[1 / 3] * 3,
    )
    geno = derive(probs, sp)
    assert all(c.ops == [sp.ops[0]] * 2 for c in geno.cells)
    assert [c.inputs for c in geno.cells] == [[0], [0, 1], [0, 1]]
    assert geno.fusion == [1, 2]


@pytest.mark.parametrize("shared", [False, True])
def test_random_genotype(shared):
    sp = space(cells=5, steps=3, cell_inputs=3, fusion_cells=3, shared_alpha=shared)
    a = random_genotype(sp, random.Random(7))
    b = random_genotype(sp, 7)
    assert a.to_dict() == b.to_dict()
    for seed in range(30):
        g = random_genotype(sp, seed)
        g.validate()
        assert len(g.fusion) == 3 and g.fusion == sorted(g.fusion)
        for i, cell in enumerate(g.cells, start=1):
            assert len(cell.inputs) == min(3, i) and cell.inputs == sorted(cell.inputs)
        if shared:
            assert all(c.ops == g.cells[0].ops for c in g.cells)
    assert len({random_genotype(sp, s).to_json() for s in range(10)}) > 1


def test_derive_within_budget_lands_in_band_with_few_swaps():
    import torch

    from hdnas.core.cost import cost_bounds, count
    from hdnas.search.derive import derive, derive_within_budget
    from hdnas.search.supernet import SuperNet

    torch.manual_seed(0)
    for shared in (False, True):
        # all cells fused, so every cell is live and op swaps alone span the whole cost range
        sp = SearchSpace(scale=4, channels=16, cells=3, steps=2, fusion_cells=3, shared_alpha=shared)
        net = SuperNet(sp)
        with torch.no_grad():
            net.alpha.normal_(0, 1)
        lo, hi = cost_bounds(sp)
        plain = count(derive(net, sp)).macs
        for budget in (lo * 1.5, (lo + hi) / 2, hi * 0.8):
            res = derive_within_budget(net, sp, budget, tolerance=0.1)
            assert res.argmax_macs == plain
            assert res.macs == count(res.genotype).macs
            assert 0.9 * budget <= res.macs <= 1.1 * budget, (shared, budget, res.macs, res.swaps)
            if 0.9 * budget <= plain <= 1.1 * budget:
                assert res.swaps == []
