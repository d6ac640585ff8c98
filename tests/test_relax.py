"""What the budget penalty prices: straight-through argmax and Gumbel samples, exact in value, live in gradient."""

from __future__ import annotations

import pytest
import torch

from hdnas.core.cost import count, expected_macs
from hdnas.core.genotype import load_genotype
from hdnas.core.space import SearchSpace
from hdnas.search import relax
from hdnas.search.derive import derive
from hdnas.search.engine import Searcher, load_search_config
from hdnas.search.supernet import SuperNet
from tests.test_search import images, tiny_overrides  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("single_thread")


def _net(space: SearchSpace, seed: int = 0) -> SuperNet:
    torch.manual_seed(seed)
    net = SuperNet(space)
    with torch.no_grad():  # spread the logits so the argmax is not the all-ties derivation
        for p in net.arch_parameters():
            p.normal_(0, 1)
    return net


@pytest.mark.parametrize("cell_inputs,fusion_cells,shared", [(1, 3, False), (2, 2, False), (1, 4, True)])
def test_straight_through_prices_exactly_the_derived_genotype(cell_inputs, fusion_cells, shared):
    space = SearchSpace(scale=4, cells=4, cell_inputs=cell_inputs, fusion_cells=fusion_cells, shared_alpha=shared)
    net = _net(space)
    hard = relax.straight_through(net.arch_probs(), space)
    geno = derive(net, space)
    e = expected_macs(space, hard)
    assert float(e.detach()) == count(geno).macs  # the value is the derived net's exact cost
    assert derive(hard, space).to_dict() == geno.to_dict()
    grads = torch.autograd.grad(e, net.arch_parameters(), allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0  # α
    live_wiring = [g for g in grads[1:] if g is not None and g.abs().sum() > 0]
    assert live_wiring, "no gradient reached β"


def test_soft_expected_cost_differs_from_the_argmax_one():
    """Why the straight-through penalty exists: the soft mixture prices another architecture."""
    space = SearchSpace(scale=2)
    net = _net(space, seed=3)
    soft = float(expected_macs(space, net.arch_probs()).detach())
    exact = float(expected_macs(space, relax.straight_through(net.arch_probs(), space)).detach())
    assert abs(soft / exact - 1) > 0.05


def test_gumbel_samples_follow_the_distribution_and_are_seeded():
    space = SearchSpace(scale=4, cells=2, steps=1, ops=["conv_1x1", "conv_3x3", "conv_5x5"], fusion_cells=1)
    net = SuperNet(space)
    with torch.no_grad():
        net.alpha.copy_(torch.log(torch.tensor([0.6, 0.3, 0.1])).view(1, 1, 3).expand_as(net.alpha))
    counts = torch.zeros(3)
    for step in range(3000):
        g = torch.Generator().manual_seed(step)
        hard = relax.straight_through(relax.gumbel(net.arch_probs(), 1.0, g), space)
        counts += hard.alpha[0, 0].detach().float()
    freq = counts / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.03), freq
    a = relax.gumbel(net.arch_probs(), 0.5, torch.Generator().manual_seed(7))
    b = relax.gumbel(net.arch_probs(), 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a.alpha, b.alpha) and torch.equal(a.fusion, b.fusion)


def test_entropy_is_zero_at_one_hot_and_largest_when_uniform():
    space = SearchSpace(scale=4)
    net = SuperNet(space)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.zero_()
    uniform = float(relax.entropy(net.arch_probs()))
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_(0, 1)
    assert 0 < float(relax.entropy(net.arch_probs())) < uniform
    assert float(relax.entropy(relax.straight_through(net.arch_probs(), space))) == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("kind", ["argmax", "gumbel"])
def test_penalty_gradient_reaches_alpha_in_the_search(tmp_path, images, kind):  # noqa: F811
    cfg = load_search_config(None, None, tiny_overrides(tmp_path, images, **{
        "search.penalty_on": kind, "search.budget": "700M"}))
    s = Searcher(cfg, progress=False, log=False)
    s._arch_step = 5
    pen, e, _ = s.architect.penalty()
    assert float(e) == pytest.approx(float(expected_macs(cfg.space, s.penalty_probs())))
    grads = torch.autograd.grad(pen, s.model.arch_parameters(), allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    if kind == "argmax":
        assert float(e) == count(derive(s.model, cfg.space)).macs


def test_tiny_search_meets_its_budget_without_swaps(tmp_path, images):  # noqa: F811
    """The argmax itself lands in the ±10 % band: no repair swaps (they are off by default)."""
    over = tiny_overrides(tmp_path, images, **{"search.epochs": 6, "search.steps_per_epoch": 3,
                                               "search.a_lr": 0.05})
    base = load_search_config(None, None, over)
    from hdnas.core.cost import cost_bounds

    lo, hi = cost_bounds(base.space)
    budget = lo + 0.35 * (hi - lo)
    cfg = load_search_config(None, None, over + [f"search.budget={int(budget)}", "search.penalty_on=argmax"])
    assert cfg.search.budget_derivation is False
    from hdnas.search.engine import run_search

    outcome = run_search(cfg, tmp_path / "g.json", progress=False, command=["test"])
    prov = load_genotype(tmp_path / "g.json").provenance
    assert prov["budget_swaps"] == [] and prov["penalty_on"] == "argmax"
    assert abs(prov["argmax_multi_adds"] / budget - 1) <= 0.10, (prov["argmax_multi_adds"], budget)
    assert prov["depth"] == outcome.genotype.depth() >= 1


def test_straight_through_is_exact_in_the_faithful_dlsr_space():
    from hdnas.core.space import load_space
    from tests.test_search import REPO

    space = load_space(REPO / "search_spaces" / "dlsr.yaml", scale=2)
    net = _net(space, seed=1)
    hard = relax.straight_through(net.arch_probs(), space)
    e = expected_macs(space, hard)
    assert float(e.detach()) == count(derive(net, space)).macs
    assert torch.autograd.grad(e, [net.alpha])[0].abs().sum() > 0


def test_keep_in_band_ends_on_the_last_step_whose_argmax_met_the_budget(tmp_path, images):  # noqa: F811
    over = tiny_overrides(tmp_path, images)
    base = load_search_config(None, None, over)
    space = base.space
    from hdnas.core.cost import cost_bounds

    lo, hi = cost_bounds(space)
    cfg = load_search_config(None, None, over + [f"search.budget={int(lo * 1.02)}"])
    s = Searcher(cfg, progress=False, log=False)
    cheap = [o for o in space.ops if o == "conv_1x1"][0]
    with torch.no_grad():  # an in-band α (cheapest op everywhere, only the fusion cell live) ...
        s.model.alpha.fill_(0)
        s.model.alpha[..., space.ops.index(cheap)] = 5
        s.model.beta_fusion.copy_(torch.tensor([5.0, 0.0]))
    s._remember_if_in_band(7)
    assert s.in_band is not None and s.in_band["step"] == 7
    in_band = derive(s.model, space)
    with torch.no_grad():  # ... then the search moves off the band
        s.model.alpha.fill_(0)
        s.model.alpha[..., space.ops.index("conv_3x3")] = 5
    s._remember_if_in_band(8)
    assert s.in_band["step"] == 7
    probs, step = s.final_probs(derive(s.model, space))
    assert step == 7 and derive(probs, space).to_dict() == in_band.to_dict()
    assert derive(s.model, space).to_dict() != in_band.to_dict()  # the model's own α is left as it was
    s.save()
    s2 = Searcher(cfg, progress=False, log=False)
    assert s2.resume() and s2.in_band["step"] == 7  # the snapshot survives a kill
    off = load_search_config(None, None, over + [f"search.budget={int(lo * 1.02)}", "search.keep_in_band=false"])
    s3 = Searcher(off, progress=False, log=False)
    s3._remember_if_in_band(1)
    assert s3.in_band is None and s3.final_probs(derive(s3.model, space))[1] is None
