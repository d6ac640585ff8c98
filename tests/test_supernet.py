"""SuperNet and MixedOp: shapes, gradients to α/β/weights, parameter groups, arch_probs."""

from __future__ import annotations

import pytest
import torch

from hdnas.core.space import SearchSpace
from hdnas.search.supernet import MixedOp, SuperNet


# small tensors: one thread is faster, and robust while another process keeps a core busy
pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_space(scale: int = 2, **kw) -> SearchSpace:
    base = dict(scale=scale, channels=8, cells=3, steps=2, cell_inputs=1, fusion_cells=2)
    base.update(kw)
    return SearchSpace(**base)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(13, 17), (9, 11)])
def test_forward_backward(scale, size):
    torch.manual_seed(0)
    net = SuperNet(tiny_space(scale))
    lr = torch.rand(2, 3, *size)
    sr = net(lr)
    assert sr.shape == (2, 3, size[0] * scale, size[1] * scale)
    sr.abs().mean().backward()
    for p in net.arch_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    for p in net.weight_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_small_patch_runs():
    net = SuperNet(tiny_space(4))
    assert net(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("shared", [False, True])
def test_parameter_groups(shared):
    sp = tiny_space(shared_alpha=shared, cells=4)
    net = SuperNet(sp)
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert net.alpha.shape == (1 if shared else 4, 2, len(sp.ops))
    assert [b.shape[0] for b in net.beta_inputs] == [2, 3, 4]
    assert net.beta_fusion.shape == (4,)
    ids_a, ids_w = {id(p) for p in arch}, {id(p) for p in weights}
    assert not ids_a & ids_w
    assert ids_a | ids_w == {id(p) for p in net.parameters()}
    keys = net.state_dict().keys()
    assert "alpha" in keys and "beta_fusion" in keys and "beta_inputs.0" in keys
    assert all(p.abs().max() < 0.01 for p in arch)  # DARTS init: 1e-3·randn


def test_arch_probs_are_distributions():
    net = SuperNet(tiny_space(cells=4))
    probs = net.arch_probs()
    torch.testing.assert_close(probs.alpha.sum(-1), torch.ones(4, 2))
    assert [len(p) for p in probs.inputs] == [1, 2, 3, 4]
    for p in probs.inputs:
        torch.testing.assert_close(p.sum(), torch.tensor(1.0))
    torch.testing.assert_close(probs.fusion.sum(), torch.tensor(1.0))
    assert probs.alpha.requires_grad and probs.fusion.requires_grad


def test_mixed_op_is_weighted_sum():
    torch.manual_seed(0)
    ops = ["conv_1x1", "sep_conv_3x3", "dil_conv_5x5"]
    mixed = MixedOp(ops, 8)
    x = torch.randn(2, 8, 7, 9)
    w = torch.softmax(torch.randn(3), 0)
    want = sum(wi * op(x) for wi, op in zip(w, mixed.ops))
    torch.testing.assert_close(mixed(x, w), want)


# -- the fused (fast) path: same parameters, same maths ---------------------------------------------
def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    """|a − b| ≤ tol · max(1, max|a|): relative to the tensor's scale, as float32 sums reorder."""
    assert a.shape == b.shape
    scale = max(1.0, a.abs().max().item())
    assert (a - b).abs().max().item() <= tol * scale, (a - b).abs().max().item()


@pytest.mark.parametrize(
    "ops",
    [
        ["conv_1x1", "conv_3x3", "conv_5x5", "conv_7x7", "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5"],
        ["dil_conv_5x5", "conv_3x3", "sep_conv_7x7", "conv_1x1"],
        ["conv_5x5"],
        ["sep_conv_3x3"],
        ["dil_conv_3x3", "dil_conv_5x5"],
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_mixed_op_matches_plain(ops, channels_last):
    torch.manual_seed(0)
    mixed = MixedOp(ops, 8, fused=False)
    logits = torch.randn(len(ops), requires_grad=True)
    x = torch.randn(2, 8, 9, 13)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    params = [logits, x, *mixed.parameters()]
    results = []
    for fused in (False, True):
        mixed.fused = fused
        y = mixed(x, torch.softmax(logits, 0))
        results.append((y, torch.autograd.grad(y.square().sum(), params)))
    (y0, g0), (y1, g1) = results
    _close(y0, y1, 1e-5)
    for a, b in zip(g0, g1):
        _close(a, b, 1e-5)


def _run(net: SuperNet, lr: torch.Tensor):
    out = net(lr)
    params = list(net.parameters())
    return out, torch.autograd.grad((out - 0.5).abs().mean(), params)


@pytest.mark.parametrize("shared", [False, True])
def test_fused_supernet_matches_plain(shared):
    torch.manual_seed(0)
    sp = tiny_space(3, cells=3, steps=2, cell_inputs=2, shared_alpha=shared)
    plain = SuperNet(sp, fused=False, channels_last=False)
    with torch.no_grad():  # away from uniform so every mixing weight matters
        for p in plain.arch_parameters():
            p.normal_()
    fused = SuperNet(sp, fused=True, channels_last=True)
    fused.load_state_dict(plain.state_dict())
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in plain.named_parameters()]
    lr = torch.rand(2, 3, 13, 17)
    y0, g0 = _run(plain, lr)
    y1, g1 = _run(fused, lr)
    _close(y0, y1, 1e-5)
    for (name, _), a, b in zip(plain.named_parameters(), g0, g1):
        assert b.abs().sum() > 0 or a.abs().sum() == 0, name
        _close(a, b, 1e-5)


def test_fused_switch_propagates_and_keeps_parameters():
    net = SuperNet(tiny_space())
    before = [id(p) for p in net.parameters()]
    assert net.fused and all(m.fused for m in net.modules() if isinstance(m, MixedOp))
    net.fused = False
    assert not any(m.fused for m in net.modules() if isinstance(m, MixedOp))
    assert [id(p) for p in net.parameters()] == before


def test_dilated_depthwise_gradcheck():
    from hdnas.search.supernet import dilated_depthwise

    torch.manual_seed(0)
    for k in (3, 5):
        conv = torch.nn.Conv2d(3, 3, k, padding=2 * (k // 2), dilation=2, groups=3, bias=False).double()
        x = torch.randn(1, 3, 6, 5, dtype=torch.float64, requires_grad=True)
        torch.testing.assert_close(dilated_depthwise(x, conv.weight, 2), conv(x))
        assert torch.autograd.gradcheck(lambda inp, w: dilated_depthwise(inp, w, 2), (x, conv.weight))
        x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        assert torch.autograd.gradcheck(lambda inp, w: dilated_depthwise(inp, w, 2), (x_cl, conv.weight))
