"""The bicubic image skip: exactly MATLAB's bicubic, so the network learns a residual over it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hdnas.core.blocks import BicubicUpsample, Upsampler, symmetric_pad
from hdnas.core.cost import count, fvcore_macs
from hdnas.core.data import imresize
from hdnas.core.genotype import CellGenotype, Genotype
from hdnas.core.network import DerivedNet

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_skip_equals_matlab_imresize(scale):
    x = torch.rand(2, 3, 11, 14, generator=torch.Generator().manual_seed(scale))
    y = F.pixel_shuffle(BicubicUpsample(scale)(x), scale)
    torch.testing.assert_close(y, imresize(x, scale=scale), rtol=0, atol=1e-5)


def test_symmetric_pad_repeats_the_edge():
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 3, 4)
    assert symmetric_pad(x, 2)[0, 0, 0].tolist() == [1, 0, 0, 1, 2, 3, 3, 2]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_derived_net_with_zero_residual_is_bicubic(scale):
    g = Genotype(scale=scale, channels=8, cells=[CellGenotype(["conv_3x3"], [0])], fusion=[1],
                 upsampler="pixelshuffle_bicubic")
    net = DerivedNet(g)
    with torch.no_grad():
        net.upsampler.conv.weight.zero_()
        net.upsampler.conv.bias.zero_()
    lr = torch.rand(1, 3, 9, 13)
    torch.testing.assert_close(net(lr), imresize(lr, scale=scale), rtol=0, atol=1e-5)


def test_skip_costs_are_counted_like_fvcore():
    g = Genotype(scale=4, channels=8, cells=[CellGenotype(["conv_3x3"], [0])], fusion=[1], esa=False,
                 upsampler="pixelshuffle_bicubic")
    plain = Genotype(**{**g.__dict__, "upsampler": "pixelshuffle"})
    rep = count(g, (64, 96))
    assert rep.macs - count(plain, (64, 96)).macs == 3 * 16 * 25 * 16 * 24
    assert rep.macs == fvcore_macs(DerivedNet(g), rep.lr_size) + rep.extras


def test_upsampler_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown upsampler"):
        Upsampler(8, 2, "nearest")
