"""The op registry is the one source of op properties: radius and layer layout match the built ops,
and a newly registered op needs no change elsewhere for its receptive field or the supernet."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from hdnas.core.genotype import CellGenotype, Genotype
from hdnas.core.inference import receptive_field
from hdnas.core.network import DerivedNet
from hdnas.core.ops import OPS, OpSpec, build_op, conv_macs, conv_params, register
from hdnas.search.supernet import MixedOp

pytestmark = pytest.mark.usefixtures("single_thread")


def reach(grad: torch.Tensor, centre: int) -> int:
    """How far (pixels, Chebyshev) from ``centre`` the non-zero entries of a (C, H, W) gradient lie."""
    hit = (grad.abs().sum(0) > 0).nonzero()
    return int((hit - centre).abs().max())


def measured_radius(op: nn.Module, c: int) -> int:
    """Receptive-field radius of ``op``: how far the gradient of the centre output pixel reaches.

    Positive weights and inputs keep every ReLU open, so no path is cut by a zero activation.
    """
    with torch.no_grad():
        for p in op.parameters():
            p.copy_(p.abs() + 0.01)
    n = 31
    x = torch.rand(1, c, n, n, requires_grad=True)
    op(x)[0, :, n // 2, n // 2].sum().backward()
    return reach(x.grad[0], n // 2)


@pytest.mark.parametrize("name", list(OPS))
def test_registry_radius_is_the_built_ops_receptive_field(name):
    torch.manual_seed(0)
    assert OPS[name].radius == measured_radius(build_op(name, 4, 4), 4)


@pytest.fixture
def stacked_op():
    """A temporary op the rest of the code has never heard of: two 3×3 convs with a LeakyReLU between."""
    spec = register(OpSpec(
        name="test_stack_3x3",
        factory=lambda c_in, c_out: nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1), nn.LeakyReLU(0.1),
                                                  nn.Conv2d(c_in, c_out, 3, padding=1)),
        macs=lambda c_in, c_out, h, w: conv_macs(c_in, c_in, 3, h, w) + conv_macs(c_in, c_out, 3, h, w),
        params=lambda c_in, c_out: conv_params(c_in, c_in, 3) + conv_params(c_in, c_out, 3),
        label="stack 3×3",
        family="stack",
        kernel=3,
        radius=2,
    ))
    yield spec
    del OPS[spec.name]


def test_a_new_op_gets_a_correct_receptive_field_from_its_registration(stacked_op):
    assert measured_radius(build_op(stacked_op.name, 4, 4), 4) == stacked_op.radius
    geno = Genotype(scale=2, channels=8, esa=False, fusion=[2], cells=[
        CellGenotype([stacked_op.name, "conv_3x3"], [0]), CellGenotype(["dil_conv_3x3", stacked_op.name], [0, 1])])
    torch.manual_seed(0)
    net = DerivedNet(geno).eval()
    rf = receptive_field(geno)
    assert rf.exact
    n = 2 * rf.radius + 21
    x = torch.rand(1, 3, n, n, requires_grad=True)
    c = n // 2
    net(x)[0, :, 2 * c, 2 * c].sum().backward()
    assert reach(x.grad[0], c) == rf.radius


def test_a_new_op_runs_in_the_fused_supernet_unfused(stacked_op):
    torch.manual_seed(0)
    names = ["conv_3x3", "sep_conv_3x3", "dil_conv_5x5", stacked_op.name]
    mixed = MixedOp(names, 8, fused=True)
    assert mixed._other == [3] and sorted(mixed._branch) == [1, 2] and mixed._conv == [0]
    x, w = torch.rand(2, 8, 12, 12), torch.softmax(torch.randn(len(names)), 0)
    fused = mixed(x, w)
    mixed.fused = False
    torch.testing.assert_close(fused, mixed(x, w), rtol=1e-5, atol=1e-5)


def test_every_registered_layout_matches_its_built_op():
    """No registered op silently falls back to the slow path: the layouts name the real layers."""
    mixed = MixedOp(list(OPS), 4)
    fused = set(mixed._conv) | set(mixed._branch)
    assert [mixed.names[i] for i in mixed._other] == []
    assert {mixed.names[i] for i in mixed._branch} == {n for n, s in OPS.items() if s.layout is not None}
    assert len(fused) == len(OPS)


def test_an_op_built_unlike_its_layout_runs_unfused():
    spec = OPS["dil_conv_3x3"]
    odd = OpSpec(**{**spec.__dict__, "name": "test_dil_wrong_layout",
                    "factory": lambda c_in, c_out: build_op("sep_conv_3x3", c_in, c_out)})
    register(odd)
    try:
        mixed = MixedOp(["test_dil_wrong_layout"], 4)
        assert mixed._other == [0] and not mixed._branch
    finally:
        del OPS[odd.name]
