"""Loss terms of retraining: each changes the gradient as its formula says; importance learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from hdnas.core.config import ConfigError, from_dict
from hdnas.train.dual import DualModel
from hdnas.train.losses import (
    CompositeLoss,
    ImportanceConfig,
    ImportanceLearner,
    LossConfig,
    LossInputs,
    importance_weights,
    pixel_error,
    round_lambda,
    teacher_importance,
    weighted_l1,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def batch(scale: int = 2, seed: int = 0, size: int = 6):
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(2, 3, size, size, generator=g)
    hr = torch.rand(2, 3, size * scale, size * scale, generator=g)
    sr = torch.rand(2, 3, size * scale, size * scale, generator=g).requires_grad_(True)
    return lr, hr, sr


def grad_of(loss_fn, sr: torch.Tensor) -> torch.Tensor:
    sr.grad = None
    total, _ = loss_fn()
    total.backward()
    return sr.grad.clone()


# ----------------------------------------------------------------------------------------- terms


def test_l1_gradient_is_weighted_sign_over_count():
    lr, hr, sr = batch()
    w = torch.rand(2, 1, *hr.shape[-2:], generator=torch.Generator().manual_seed(3))
    loss = CompositeLoss([("l1", 2.0)])
    g = grad_of(lambda: loss(LossInputs(lr, hr, sr, importance=w)), sr)
    expected = 2.0 * w * torch.sign(sr.detach() - hr) / hr.numel()
    torch.testing.assert_close(g, expected, rtol=1e-6, atol=1e-9)
    # without a map it is plain L1
    assert torch.equal(weighted_l1(sr, hr), nn.functional.l1_loss(sr, hr))


def test_dual_term_is_zero_with_zero_gradient_when_dual_output_equals_lr():
    lr, hr, sr = batch()
    dual = DualModel(2)
    lr_exact = dual(sr).detach()
    with_dual = CompositeLoss([("l1", 1.0), ("dual", 0.1)])
    total, parts = with_dual(LossInputs(lr_exact, hr, sr, dual=dual))
    assert parts["dual"].item() == 0.0
    g_both = grad_of(lambda: with_dual(LossInputs(lr_exact, hr, sr, dual=dual)), sr)
    g_l1 = grad_of(lambda: CompositeLoss([("l1", 1.0)])(LossInputs(lr_exact, hr, sr)), sr)
    assert torch.equal(g_both, g_l1)


def test_dual_term_gradient_follows_its_formula_for_a_linear_dual():
    """With D = s×s average pooling, d/dSR of λ·mean|D(SR) − LR| is λ·sign(D(SR) − LR)/(s²·numel(LR))."""
    s, lam = 2, 0.1
    lr, hr, sr = batch(s)
    pool = nn.AvgPool2d(s)
    g_both = grad_of(lambda: CompositeLoss([("l1", 1.0), ("dual", lam)])(LossInputs(lr, hr, sr, dual=pool)), sr)
    g_l1 = grad_of(lambda: CompositeLoss([("l1", 1.0)])(LossInputs(lr, hr, sr)), sr)
    sign = torch.sign(pool(sr.detach()) - lr)
    expected = lam * sign.repeat_interleave(s, -2).repeat_interleave(s, -1) / (s * s * lr.numel())
    torch.testing.assert_close(g_both - g_l1, expected, rtol=1e-5, atol=1e-9)


def test_distill_term_pulls_towards_the_teacher():
    lr, hr, sr = batch()
    t = torch.rand_like(hr)
    g = grad_of(lambda: CompositeLoss([("distill", 0.5)])(LossInputs(lr, hr, sr, teacher_sr=t)), sr)
    torch.testing.assert_close(g, 0.5 * torch.sign(sr.detach() - t) / t.numel())
    with pytest.raises(ValueError, match="teacher"):
        CompositeLoss([("distill", 1.0)])(LossInputs(lr, hr, sr))


def test_composite_total_is_weighted_sum_and_config_switches_terms():
    lr, hr, sr = batch()
    dual = DualModel(2)
    cfg = from_dict(LossConfig, {"dual": {"enabled": True, "weight": 0.3}, "distill": {"enabled": True, "weight": 0.7}})
    loss = CompositeLoss.from_config(cfg)
    assert loss.names == ["l1", "dual", "distill"]
    t = torch.rand_like(hr)
    total, parts = loss(LossInputs(lr, hr, sr, teacher_sr=t, dual=dual))
    expected = parts["l1"].item() + 0.3 * parts["dual"].item() + 0.7 * parts["distill"].item()
    assert total.item() == pytest.approx(expected)
    off = CompositeLoss.from_config(from_dict(LossConfig, {}))  # dual is off by default
    assert off.names == ["l1"]
    off = CompositeLoss.from_config(from_dict(LossConfig, {"dual": {"enabled": False}}))
    assert off.names == ["l1"]
    with pytest.raises(ConfigError, match="every term is disabled"):
        from_dict(LossConfig, {"l1": {"enabled": False}, "dual": {"enabled": False}})
    with pytest.raises(ConfigError, match="loss.dual.weight|dual.weight"):
        from_dict(LossConfig, {"dual": {"weight": -1.0}})
    with pytest.raises(ConfigError, match="unknown loss term"):
        CompositeLoss([("l2", 1.0)])


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_dual_model_shapes_and_layers(scale):
    d = DualModel(scale)
    assert d(torch.rand(1, 3, 12 * scale, 6 * scale)).shape == (1, 3, 12, 6)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 3 and convs[0].out_channels == 16 and convs[0].bias is None
    assert convs[0].stride == ((3, 3) if scale == 3 else (2, 2))
    assert len(convs) == {2: 2, 3: 2, 4: 3}[scale]
    assert convs[-1].out_channels == 3 and convs[-1].stride == (1, 1)
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))


# ------------------------------------------------------------------------------------ importance


def test_teacher_importance_is_normalised_sigmoid():
    e = torch.tensor([0.0, 0.01, 0.02, 0.05, 0.5])
    w0 = teacher_importance(e, alpha=100, b=0.01)
    s = lambda x: 1 / (1 + math.exp(100 * (x - 0.01)))  # noqa: E731
    expected = torch.tensor([s(float(x)) / s(0.0) for x in e])
    torch.testing.assert_close(w0, expected)
    assert w0[0] == pytest.approx(1.0) and (w0 > 0).all() and (w0 <= 1).all()
    assert (w0[1:] < w0[:-1]).all()  # more teacher error, less importance


def test_importance_weights_on_a_hand_made_error_map():
    e = torch.tensor([[[[0.0, 0.05], [0.2, 1.0]]]])
    w0 = torch.tensor([[[[0.9, 0.3], [0.0, 0.5]]]])
    w = importance_weights(w0, e, lam=0.15, sigma=10.0)
    expected = [min(1.0, 0.9 + 0.15), 0.3 + 0.15 * math.exp(-0.5), 0.15 * math.exp(-2.0), 0.5 + 0.15 * math.exp(-10.0)]
    torch.testing.assert_close(w.flatten(), torch.tensor(expected))
    big = importance_weights(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), lam=5.0)
    assert (big >= 0).all() and (big <= 1).all()


@pytest.mark.parametrize("w0,e,lam", [(0.2, 0.03, 0.15), (0.7, 0.0, 0.45), (0.0, 0.3, 0.3), (0.95, 0.01, 0.15)])
def test_closed_form_minimises_the_documented_penalised_objective(w0, e, lam):
    """w = clamp(w0 + λ·exp(−σe), 0, 1) = argmin over [0, 1] of w·e + (1/σ)[u ln(u/λ) − u + λ], u = w − w0."""
    sigma = 10.0
    grid = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    u = grid - w0
    f = torch.where(u > 0, (u * torch.log(u.clamp_min(1e-300) / lam) - u + lam) / sigma, torch.tensor(lam / sigma))
    f = torch.where(u < 0, torch.tensor(math.inf, dtype=torch.float64), f)
    best = grid[torch.argmin(grid * e + f)].item()
    closed = importance_weights(torch.tensor(w0), torch.tensor(e), lam, sigma).item()
    assert best == pytest.approx(closed, abs=2e-5)


def test_round_schedule_advances_lambda_and_freezes_the_student():
    assert [round_lambda(r) for r in range(4)] == pytest.approx([0.0, 0.15, 0.30, 0.45])
    student = nn.Conv2d(3, 3, 3, padding=1)
    learner = ImportanceLearner(ImportanceConfig(enabled=True, round_steps=3))
    assert not learner.begin_step(0, student) and learner.round == 0 and learner.frozen is None
    assert learner.begin_step(3, student) and learner.round == 1 and learner.lam() == pytest.approx(0.15)
    frozen_w = learner.frozen.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)  # training moves the student ...
    assert not learner.begin_step(5, student)
    assert torch.equal(learner.frozen.weight, frozen_w)  # ... the frozen copy stays for the round
    assert not learner.frozen.weight.requires_grad
    assert learner.begin_step(6, student) and learner.round == 2 and learner.lam() == pytest.approx(0.30)
    assert torch.equal(learner.frozen.weight, student.weight)


def test_importance_maps_per_round_from_teacher_and_frozen_student():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(3, 3, 3, padding=1))
    cfg = ImportanceConfig(enabled=True, round_steps=2)
    learner = ImportanceLearner(cfg)
    lr, hr, _ = batch(2)
    teacher_sr = hr + 0.02 * torch.randn_like(hr)
    assert learner.weights(lr, hr, None) is None  # no teacher: w0 = 1, every weight 1
    learner.begin_step(0, student)
    w0 = teacher_importance(pixel_error(teacher_sr, hr))
    torch.testing.assert_close(learner.weights(lr, hr, teacher_sr), w0)
    learner.begin_step(2, student)
    e = pixel_error(student(lr).detach(), hr)
    expected = (w0 + 0.15 * torch.exp(-10 * e)).clamp(0, 1)
    w = learner.weights(lr, hr, teacher_sr)
    assert w.shape == (2, 1, *hr.shape[-2:])
    torch.testing.assert_close(w, expected)
    # state round-trips into a fresh learner
    other = ImportanceLearner(cfg)
    other.load_state_dict(learner.state_dict(), student)
    assert other.round == 1
    torch.testing.assert_close(other.weights(lr, hr, teacher_sr), expected)


def test_importance_config_is_validated():
    with pytest.raises(ConfigError, match="round_steps"):
        from_dict(LossConfig, {"importance": {"round_steps": 0}})
