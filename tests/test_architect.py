"""The architecture step: penalty direction and the second-order hypergradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from hdnas.core import cost
from hdnas.search.architect import Architect, budget_penalty
from hdnas.core.space import SearchSpace
from hdnas.search.supernet import SuperNet

HR = (720, 1280)


def tiny_space(**kw) -> SearchSpace:
    base = dict(scale=2, channels=4, cells=2, steps=1, ops=["conv_1x1", "conv_3x3", "sep_conv_3x3"], esa=False,
                fusion_cells=1)
    base.update(kw)
    s = SearchSpace(**base)
    s.validate()
    return s


def test_budget_penalty_is_symmetric_in_log_ratio():
    b = 10e9
    lo = budget_penalty(torch.tensor(5e9, dtype=torch.float64), b)
    hi = budget_penalty(torch.tensor(20e9, dtype=torch.float64), b)
    assert torch.isclose(lo, hi)
    assert budget_penalty(torch.tensor(b), b) == 0


@pytest.mark.parametrize("direction", [0.5, 2.0])
def test_penalty_gradient_moves_expected_cost_toward_budget(direction):
    torch.manual_seed(0)
    space = tiny_space(channels=8, cells=3, steps=2, ops=["conv_1x1", "conv_3x3", "conv_7x7", "dil_conv_3x3"],
                       fusion_cells=2, esa=True)
    net = SuperNet(space)
    fn = lambda: cost.expected_macs(space, net.arch_probs(), HR)  # noqa: E731
    start = float(fn().detach())
    budget = start * direction
    arch = Architect(net, fn, budget, lr=0.05, penalty_weight=1.0)
    pen, *_ = arch.penalty()
    grads = torch.autograd.grad(pen, arch.arch_params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "penalty gradient must reach α or β"
    # hold L1 fixed: step on the penalty alone
    for _ in range(30):
        pen, *_ = arch.penalty()
        arch.optimizer.zero_grad()
        pen.backward()
        arch.optimizer.step()
    end = float(fn().detach())
    assert abs(math.log(end / budget)) < abs(math.log(start / budget)) * 0.8
    assert (end < start) if direction < 1 else (end > start)


def _unrolled_objective(net, arch_values, w, names_w, xi, train, val):
    """f(a) = L_val(w − ξ ∇w L_train(w, a), a), computed exactly with double backprop."""
    names = {id(p): n for n, p in net.named_parameters()}
    anames = [names[id(p)] for p in net.arch_parameters()]
    params = dict(zip(anames, arch_values))
    wt = [t.detach().clone().requires_grad_(True) for t in w]
    params_t = {**params, **dict(zip(names_w, wt))}
    lt = F.l1_loss(functional_call(net, params_t, (train[0],)), train[1])
    g = torch.autograd.grad(lt, wt, create_graph=True)
    w_new = [a - xi * b for a, b in zip(wt, g)]
    lv = F.l1_loss(functional_call(net, {**params, **dict(zip(names_w, w_new))}, (val[0],)), val[1])
    return lv


def test_second_order_hypergradient_matches_finite_differences():
    torch.manual_seed(1)
    space = tiny_space()
    net = SuperNet(space).double()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(0.5 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    train = (torch.rand(2, 3, 6, 7, generator=g, dtype=torch.float64), torch.rand(2, 3, 12, 14, generator=g, dtype=torch.float64))
    val = (torch.rand(2, 3, 6, 7, generator=g, dtype=torch.float64), torch.rand(2, 3, 12, 14, generator=g, dtype=torch.float64))
    xi = 0.1
    # a small finite-difference radius: L1 and the LeakyReLUs have kinks that a radius of 0.01
    # (DARTS' default, fine for search) would straddle on a net this small
    arch = Architect(net, None, None, order=2, unrolled_lr=xi, hvp_eps=1e-6)
    grads, *_ = arch.hypergradient(train, val)

    w = [p.detach().clone() for p in arch.weight_params]
    base = [p.detach().clone() for p in arch.arch_params]
    # exact hypergradient by double backprop
    avals = [b.clone().requires_grad_(True) for b in base]
    exact = torch.autograd.grad(_unrolled_objective(net, avals, w, arch.weight_names, xi, train, val), avals)
    for a, b in zip(grads, exact):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    # and a plain central-difference check of the same derivative on a few entries
    h = 1e-5
    for pi in range(len(base)):
        for idx in list(range(base[pi].numel()))[:3]:
            plus = [b.clone() for b in base]
            minus = [b.clone() for b in base]
            plus[pi].view(-1)[idx] += h
            minus[pi].view(-1)[idx] -= h
            fd = (_unrolled_objective(net, plus, w, arch.weight_names, xi, train, val)
                  - _unrolled_objective(net, minus, w, arch.weight_names, xi, train, val)) / (2 * h)
            assert abs(float(fd) - float(grads[pi].view(-1)[idx])) < 1e-4 + 1e-3 * abs(float(fd)), (pi, idx)
