"""The one operation registry.

Every searchable operation is one :class:`OpSpec`: how to build it, its exact Multi-Adds and
parameter count, and how to draw it. The supernet, the derived network, the cost model and the
renderer, tiled inference (receptive field) and AdaDSR (halos) all read this table, so adding an
operation is one ``register`` call.

Conventions: an op maps ``c_in`` to ``c_out`` channels at stride 1 with "same" padding, so its
output has the input's H×W. Multi-Adds count one multiply-accumulate as one, like fvcore's conv
counter (``c_out · c_in/groups · k² · H·W``); biases, ReLUs and additions are not multiply-adds.
Candidate ops carry no batch norm: SR networks avoid it.

Internal width: an op made of several convs may have a width of its own between them that neither
its input nor its output ties down. Of the registered ops only the separable conv has one: the
output of its first pointwise 1×1 (default ``c_in``), which only its second depthwise conv and last
pointwise 1×1 read. The dilated conv's depthwise conv keeps its input's channels (groups = c_in),
and a plain conv is one layer, so neither has one. An op with one sets ``inner`` and its
``factory``, ``macs`` and ``params`` take it as the keyword ``mid``; compression prunes it and the
genotype records it (:mod:`hdnas.core.genotype`, "Widths").

Biases: an op's convs that DARTS gives a bias (the plain conv, the pointwise 1×1s) have one by
default; ``bias=False`` builds them without (the reference DLSR code's candidates have none; depthwise
convs never have one). ``factory`` and ``params`` take it as the keyword ``bias``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn


def conv_macs(c_in: int, c_out: int, k: int, h_out: int, w_out: int, groups: int = 1) -> int:
    """Multi-Adds of a k×k convolution producing an h_out×w_out map (bias excluded)."""
    return c_out * (c_in // groups) * k * k * h_out * w_out


def conv_params(c_in: int, c_out: int, k: int, groups: int = 1, bias: bool = True) -> int:
    return c_out * (c_in // groups) * k * k + (c_out if bias else 0)


@dataclass(frozen=True)
class DepthwiseConv:
    """One depthwise k×k conv inside an op: its index in the op's ``nn.Sequential``, kernel and dilation."""

    index: int
    kernel: int
    dilation: int = 1


@dataclass(frozen=True)
class BranchLayout:
    """Layer layout of an op built as ``nn.Sequential(ReLU, *body, pointwise 1×1)``, for the fused supernet.

    The supernet computes the leading ReLU (index 0) once for all such ops, runs each op's ``body``
    (indices, in order) on it, and merges the ops' last ``pointwise`` convs into one 1×1 conv over the
    concatenated features. ``depthwise`` names the body's depthwise convs: the supernet checks the
    built op against them (else it runs the op unfused) and gives dilated ones a faster CPU backward.
    """

    body: tuple[int, ...]
    pointwise: int
    depthwise: tuple[DepthwiseConv, ...]

    @property
    def radius(self) -> int:
        """Receptive-field radius: the depthwise convs in a row (the 1×1 convs add nothing)."""
        return sum(d.dilation * (d.kernel // 2) for d in self.depthwise)


@dataclass(frozen=True)
class InnerWidth:
    """Where an op's internal width sits in its ``nn.Sequential``: the conv that produces it (``out``),
    the depthwise convs that run on it (``depthwise``) and the conv that reads it (``into``). Channel
    surgery (:mod:`hdnas.core.surgery`) slices these layers when it prunes the width."""

    out: int
    depthwise: tuple[int, ...]
    into: int


@dataclass(frozen=True)
class OpSpec:
    """One searchable operation.

    ``family`` groups ops for drawing; ``conv`` ops are also linear in the same input, so the fast
    supernet path merges them (their α-weighted sum is one conv with summed, zero-padded kernels).
    ``radius``: how many pixels on each side an output pixel reads (its receptive-field radius), which
    tiled inference and AdaDSR's halos rely on; tests check it against the built op's gradient.
    ``layout``: where the fused supernet finds the layers of a ReLU → depthwise → pointwise op; None
    for any other structure (the supernet then runs the op as it is).
    ``inner``: where the op's free internal width sits (module docstring), None when it has none;
    call the op through :func:`build_op`, :func:`op_macs` and :func:`op_params`, which pass ``mid``
    only to such ops.
    """

    name: str
    factory: Callable[..., nn.Module]  # (c_in, c_out[, mid=][, bias=]) -> module
    macs: Callable[..., int]  # (c_in, c_out, h, w[, mid=]) -> Multi-Adds
    params: Callable[..., int]  # (c_in, c_out[, mid=][, bias=]) -> parameters
    label: str
    family: str
    kernel: int
    radius: int
    dilation: int = 1
    layout: BranchLayout | None = None
    inner: InnerWidth | None = None

    @property
    def mid_width(self) -> bool:
        """Whether the op has a free internal width (its builder, macs and params take ``mid=``)."""
        return self.inner is not None

    def _mid(self, mid: int | None) -> dict[str, int]:
        if mid is None:
            return {}
        if not self.mid_width:
            raise ValueError(f"operation '{self.name}' has no internal width (asked for {mid})")
        return {"mid": mid}


OPS: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in OPS:
        raise ValueError(f"operation '{spec.name}' is registered twice")
    OPS[spec.name] = spec
    return spec


def get_op(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown operation '{name}' (registered: {', '.join(OPS)})") from None


def _bias(bias: bool) -> dict[str, bool]:
    """Only ``bias=False`` is passed on, so an op registered without the keyword still builds by default."""
    return {} if bias else {"bias": False}


def build_op(name: str, c_in: int, c_out: int, mid: int | None = None, bias: bool = True) -> nn.Module:
    """Build op ``name``; ``mid``: its internal width (only for ops with ``mid_width``; None = default);
    ``bias``: whether its convs that may have a bias have one."""
    spec = get_op(name)
    return spec.factory(c_in, c_out, **spec._mid(mid), **_bias(bias))


def op_macs(name: str, c_in: int, c_out: int, h: int, w: int, mid: int | None = None) -> int:
    """Exact Multi-Adds of op ``name`` on an h×w map, at internal width ``mid`` (None = default)."""
    spec = get_op(name)
    return spec.macs(c_in, c_out, h, w, **spec._mid(mid))


def op_params(name: str, c_in: int, c_out: int, mid: int | None = None, bias: bool = True) -> int:
    spec = get_op(name)
    return spec.params(c_in, c_out, **spec._mid(mid), **_bias(bias))


class SepConv(nn.Sequential):
    """DARTS separable conv without batch norm: twice (ReLU -> depthwise k×k -> pointwise 1×1).

    ``mid`` (default ``c_in``): the first pointwise conv's output width, its internal width.
    """

    def __init__(self, c_in: int, c_out: int, k: int, mid: int | None = None, bias: bool = True):
        pad = k // 2
        m = c_in if mid is None else mid
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, k, padding=pad, groups=c_in, bias=False),
            nn.Conv2d(c_in, m, 1, bias=bias),
            nn.ReLU(inplace=False),
            nn.Conv2d(m, m, k, padding=pad, groups=m, bias=False),
            nn.Conv2d(m, c_out, 1, bias=bias),
        )
        self.kernel_size = k


class DilConv(nn.Sequential):
    """DARTS dilated conv without batch norm: ReLU -> depthwise k×k, dilation 2 -> pointwise 1×1."""

    def __init__(self, c_in: int, c_out: int, k: int, dilation: int = 2, bias: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, k, padding=dilation * (k // 2), dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=bias),
        )
        self.kernel_size = k
        self.dilation = dilation


def _plain_conv(k: int) -> OpSpec:
    return OpSpec(
        name=f"conv_{k}x{k}",
        factory=lambda c_in, c_out, bias=True: nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias),
        macs=lambda c_in, c_out, h, w: conv_macs(c_in, c_out, k, h, w),
        params=lambda c_in, c_out, bias=True: conv_params(c_in, c_out, k, bias=bias),
        label=f"conv {k}×{k}",
        family="conv",
        kernel=k,
        radius=k // 2,
    )


def _sep_conv(k: int) -> OpSpec:
    layout = BranchLayout(body=(1, 2, 3, 4), pointwise=5, depthwise=(DepthwiseConv(1, k), DepthwiseConv(4, k)))
    return OpSpec(
        name=f"sep_conv_{k}x{k}",
        factory=lambda c_in, c_out, mid=None, bias=True: SepConv(c_in, c_out, k, mid, bias),
        macs=lambda c_in, c_out, h, w, mid=None: _sep_macs(c_in, c_out, k, h, w, c_in if mid is None else mid),
        params=lambda c_in, c_out, mid=None, bias=True: _sep_params(c_in, c_out, k, c_in if mid is None else mid, bias),
        label=f"sep {k}×{k}",
        family="sep",
        kernel=k,
        radius=layout.radius,
        layout=layout,
        inner=InnerWidth(out=2, depthwise=(4,), into=5),
    )


def _sep_macs(c_in: int, c_out: int, k: int, h: int, w: int, m: int) -> int:
    return (conv_macs(c_in, c_in, k, h, w, groups=c_in) + conv_macs(c_in, m, 1, h, w)
            + conv_macs(m, m, k, h, w, groups=m) + conv_macs(m, c_out, 1, h, w))


def _sep_params(c_in: int, c_out: int, k: int, m: int, bias: bool = True) -> int:
    return (conv_params(c_in, c_in, k, groups=c_in, bias=False) + conv_params(c_in, m, 1, bias=bias)
            + conv_params(m, m, k, groups=m, bias=False) + conv_params(m, c_out, 1, bias=bias))


def _dil_conv(k: int, dilation: int = 2) -> OpSpec:
    layout = BranchLayout(body=(1,), pointwise=2, depthwise=(DepthwiseConv(1, k, dilation),))
    return OpSpec(
        name=f"dil_conv_{k}x{k}",
        factory=lambda c_in, c_out, bias=True: DilConv(c_in, c_out, k, dilation, bias),
        macs=lambda c_in, c_out, h, w: conv_macs(c_in, c_in, k, h, w, groups=c_in) + conv_macs(c_in, c_out, 1, h, w),
        params=lambda c_in, c_out, bias=True: (conv_params(c_in, c_in, k, groups=c_in, bias=False)
                                               + conv_params(c_in, c_out, 1, bias=bias)),
        label=f"dil {k}×{k} (d={dilation})",
        family="dil",
        kernel=k,
        radius=layout.radius,
        dilation=dilation,
        layout=layout,
    )


for _k in (1, 3, 5, 7):
    register(_plain_conv(_k))
for _k in (3, 5, 7):
    register(_sep_conv(_k))
for _k in (3, 5):
    register(_dil_conv(_k))

#: The candidate set of the reference search space (Huang et al., 2021), in registry order.
DEFAULT_OPS: tuple[str, ...] = tuple(OPS)
