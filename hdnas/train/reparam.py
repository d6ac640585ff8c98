"""DIPNet-style re-parameterisation: train a k×k conv as several linear branches, deploy it as one.

During retraining (``reparam.enabled``) each plain ``conv_kxk`` op of the cells (and, with
``reparam.cell_last``, each cell's fixed 3×3) becomes a :class:`RepConv`, the sum of

* the k×k conv itself (zero padding, bias) — the original op, with its initial weights;
* 1×1 (c_in → mid·c_in, bias) → k×k (→ c_out, bias, no padding): the intermediate map is padded with
  the 1×1's *bias* rather than zeros, so it equals what the 1×1 would have produced over a
  zero-padded input; this is what makes the folded conv (whose zero padding sits before the 1×1)
  exact at the image borders too;
* a 1×1 conv (bias), a k×k kernel that is zero but at its centre;
* when c_in == c_out, the identity scaled per channel (a learnable γ): a centred delta kernel.

No batch norm: the branches are linear, so their sum is one k×k conv with one bias
(:meth:`RepConv.folded`, computed in float64). Training runs that one conv too, its kernel combined
from the branches' parameters at every forward (online re-parameterisation, Hu et al., OREPA 2022):
the function and every branch's gradient are those of the branch-wise sum (:meth:`RepConv.branches`),
at the cost of the plain conv plus a kernel-sized einsum, where running the branches cost 1.55× the
plain net's training step. :func:`fold` turns a trained net back into the plain
net of its genotype — the same module tree and state-dict keys as ``DerivedNet`` — so a deployed
net pays nothing for the branches.

Initialisation: the k×k branch keeps the plain op's own (PyTorch default) weights; the 1×1 branch,
the second conv of the 1×1 → k×k branch, all extra biases and γ start at zero, and the first 1×1 of
that branch keeps its default random init. At step 0 the net therefore computes exactly what the
plain net of the same seed computes (the genotype's learning rate and schedule were tuned for that
function), and every extra branch still gets a gradient from the first step: the zero factors are
the outer ones, so ∂L/∂(1×1), ∂L/∂γ and ∂L/∂(second conv) are non-zero, and the first 1×1 learns
once the second conv has moved. Zeroing both factors of the sequential branch would leave it stuck.

Not re-parameterised: the depthwise convs of ``sep_conv``/``dil_conv`` ops (a 1×1 on a depthwise conv
is a per-channel scale the following pointwise already has, and a dilated k×k cannot absorb a
dense 1×1 → k×k), the backbone convs (stem, body, upsampler) and the cells' 1×1 distillation convs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from hdnas.core.config import ConfigError
from hdnas.core.genotype import Genotype
from hdnas.core.ops import get_op

__all__ = ["ReparamConfig", "RepConv", "reparameterise", "fold", "rep_convs"]


@dataclass
class ReparamConfig:
    enabled: bool = False
    mid: int = 1  # the 1×1 → k×k branch's inner width, in multiples of c_in
    cell_last: bool = False  # also each cell's fixed 3×3 (C → C/2: no identity branch)

    def validate(self) -> None:
        if isinstance(self.mid, bool) or not isinstance(self.mid, int) or self.mid < 1:
            raise ConfigError(f"reparam.mid: expected an integer ≥ 1, got {self.mid!r}")


def _check_plain(conv: nn.Conv2d) -> int:
    """The kernel side of a conv RepConv can stand in for (square, odd, stride 1, 'same' zero padding)."""
    k = conv.kernel_size[0]
    ok = (conv.kernel_size == (k, k) and k % 2 == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1)
          and conv.groups == 1 and conv.padding == (k // 2, k // 2) and conv.padding_mode == "zeros"
          and conv.bias is not None)
    if not ok:
        raise ValueError(f"RepConv needs a dense, odd, square, stride-1 'same' conv with bias, got {conv}")
    return k


class RepConv(nn.Module):
    """A k×k conv trained as k×k + (1×1 → k×k) + 1×1 [+ γ·identity]; :meth:`fold` gives the one conv."""

    def __init__(self, conv: nn.Conv2d, mid: int = 1):
        super().__init__()
        k = _check_plain(conv)
        c_in, c_out = conv.in_channels, conv.out_channels
        self.kernel = k
        self.kxk = conv
        dev, dt = conv.weight.device, conv.weight.dtype
        self.expand = nn.Conv2d(c_in, mid * c_in, 1, bias=True, device=dev, dtype=dt)
        self.seq = nn.Conv2d(mid * c_in, c_out, k, padding=0, bias=True, device=dev, dtype=dt)
        self.point = nn.Conv2d(c_in, c_out, 1, bias=True, device=dev, dtype=dt)
        self.scale = nn.Parameter(torch.zeros(c_out, device=dev, dtype=dt)) if c_in == c_out else None
        with torch.no_grad():  # start as the plain conv (see the module docstring)
            for t in (self.expand.bias, self.seq.weight, self.seq.bias, self.point.weight, self.point.bias):
                t.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One k×k conv with the branches' combined kernel, built each call (online re-parameterisation,
        as OREPA): the same function and the same gradients for every branch as :meth:`branches`, since
        the branches are linear, at the plain conv's cost instead of four convs."""
        w, b = self._combined(self.kxk.weight.dtype)
        return F.conv2d(x, w, b, padding=self.kernel // 2)

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of the branches, each run as a conv: what :meth:`forward` and :meth:`fold` equal."""
        p = self.kernel // 2
        # the 1×1's output over a zero-padded input: zeros outside become the bias, as in the folded conv
        inner = F.pad(F.conv2d(x, self.expand.weight), (p, p, p, p)) + self.expand.bias.view(1, -1, 1, 1)
        y = self.kxk(x) + self.seq(inner) + self.point(x)
        if self.scale is not None:
            y = y + self.scale.view(1, -1, 1, 1) * x
        return y

    def _combined(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the one k×k conv equal to the sum of the branches, computed in ``dtype``
        (differentiable: no in-place writes into a parameter's view)."""
        p = self.kernel // 2
        w1 = self.expand.weight.to(dtype)[:, :, 0, 0]  # (mid, c_in)
        w2 = self.seq.weight.to(dtype)  # (c_out, mid, k, k)
        centre = self.point.weight.to(dtype)[:, :, 0, 0]  # (c_out, c_in)
        if self.scale is not None:
            centre = centre + torch.diag(self.scale.to(dtype))
        w = self.kxk.weight.to(dtype) + torch.einsum("omhw,mi->oihw", w2, w1) + F.pad(centre[:, :, None, None],
                                                                                       (p, p, p, p))
        b = (self.kxk.bias.to(dtype) + self.seq.bias.to(dtype) + self.point.bias.to(dtype)
             + torch.einsum("omhw,m->o", w2, self.expand.bias.to(dtype)))
        return w, b

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the one k×k conv equal to the sum of the branches (summed in float64)."""
        w, b = self._combined(torch.float64)
        dt = self.kxk.weight.dtype
        return w.to(dt), b.to(dt)

    def fold(self) -> nn.Conv2d:
        """A fresh plain conv (the k×k branch's shape and memory format) with the folded weights."""
        conv = copy.deepcopy(self.kxk)
        w, b = self.folded()
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        return conv


def rep_convs(genotype: Genotype, cell_last: bool = False) -> list[tuple[str, int | None]]:
    """(cell module name, op index) of the convs to re-parameterise; index None: the cell's fixed 3×3."""
    out: list[tuple[str, int | None]] = []
    for i in genotype.build_order():
        name = f"cell{i}"
        out += [(name, k) for k, op in enumerate(genotype.cells[i - 1].ops) if get_op(op).family == "conv"]
        if cell_last:
            out.append((name, None))
    return out


def reparameterise(net: nn.Module, cfg: ReparamConfig) -> nn.Module:
    """Replace, in place, the plain conv ops (and with ``cell_last`` the fixed 3×3) of a
    ``DerivedNet`` (or ``AdaptiveNet``) by :class:`RepConv` blocks; returns ``net``.

    The branches' random init draws from a fork of the global RNG, so whatever is built after this
    (the dual model, the data order) is what it is in the plain run of the same seed."""
    with torch.random.fork_rng(devices=[]):
        for name, k in rep_convs(net.genotype, cfg.cell_last):
            cell = net.cells[name]
            if k is None:
                cell.last = RepConv(cell.last, cfg.mid)
            else:
                cell.ops[k] = RepConv(cell.ops[k], cfg.mid)
    return net


def fold(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every :class:`RepConv` folded into its one conv: the plain net of the
    genotype, with its state-dict keys. ``net`` itself is left as it is."""
    out = copy.deepcopy(net)
    for name, module in list(out.named_modules()):
        if isinstance(module, RepConv):
            parent, _, attr = name.rpartition(".")
            out.get_submodule(parent).register_module(attr, module.fold())
    return out
