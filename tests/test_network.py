"""DerivedNet: shapes at every scale and odd sizes, dead cells skipped, no architecture parameters."""

from __future__ import annotations

import pytest
import torch

from hdnas.core.cost import count
from hdnas.zoo.sampler import random_genotype
from hdnas.core.errors import ConfigError
from hdnas.core.genotype import CellGenotype, Genotype
from hdnas.core.network import DerivedNet
from hdnas.core.space import SearchSpace


# small tensors: one thread is faster, and robust while another process keeps a core busy
pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_space(scale: int, **kw) -> SearchSpace:
    base = dict(scale=scale, channels=8, cells=3, steps=2, cell_inputs=2, fusion_cells=2)
    base.update(kw)
    return SearchSpace(**base)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(13, 17), (9, 11)])
def test_forward_backward_shapes(scale, size):
    torch.manual_seed(0)
    net = DerivedNet(random_genotype(tiny_space(scale), rng=scale))
    lr = torch.rand(2, 3, *size)
    sr = net(lr)
    assert sr.shape == (2, 3, size[0] * scale, size[1] * scale)
    sr.abs().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.stem.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(8, 8), (3, 3), (5, 40)])
def test_small_patches_run(size):
    net = DerivedNet(random_genotype(tiny_space(2), rng=1))
    assert net(torch.rand(1, 3, *size)).shape == (1, 3, size[0] * 2, size[1] * 2)


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    net = DerivedNet(random_genotype(tiny_space(3), rng=5))
    lr = torch.rand(2, 3, 13, 17)
    ref = net(lr)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(lr.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_no_architecture_parameters():
    net = DerivedNet(random_genotype(tiny_space(2), rng=0))
    names = [n for n, _ in net.named_parameters()]
    assert not any("alpha" in n or "beta" in n for n in names)
    assert sum(p.numel() for p in net.parameters()) == count(net.genotype).params


def test_dead_cells_are_skipped():
    # cell 1 feeds nothing: cell 2 reads the stem, cell 3 reads cell 2, fusion takes 2 and 3
    geno = Genotype(
        scale=2,
        channels=8,
        cells=[
            CellGenotype(ops=["conv_3x3", "conv_3x3"], inputs=[0]),
            CellGenotype(ops=["sep_conv_3x3", "conv_1x1"], inputs=[0]),
            CellGenotype(ops=["dil_conv_3x3", "conv_5x5"], inputs=[2]),
        ],
        fusion=[2, 3],
    )
    net = DerivedNet(geno)
    assert net.live == [2, 3]
    assert sorted(net.cells.keys()) == ["cell2", "cell3"]
    assert "cell1" not in count(geno).parts
    assert sum(p.numel() for p in net.parameters()) == count(geno).params
    assert net(torch.rand(1, 3, 9, 11)).shape == (1, 3, 18, 22)


def test_multi_input_cells_get_a_combination_conv():
    geno = random_genotype(tiny_space(2, cell_inputs=2), rng=3)
    net = DerivedNet(geno)
    for i in net.live:
        has = len(geno.cells[i - 1].inputs) > 1
        assert (f"cell{i}" in net.combine) == has


def test_invalid_genotype_is_rejected():
    geno = random_genotype(tiny_space(2), rng=0)
    geno.cells[1].ops[0] = "nope"
    with pytest.raises(ConfigError, match=r"cells\[1\]\.ops\[0\]"):
        DerivedNet(geno)
