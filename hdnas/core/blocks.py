"""Fixed building blocks shared by the supernet and the derived network.

The information-distillation cell shell (IMDN/RFDN style) is written once and takes its K
refinement ops as modules: the supernet passes :class:`~hdnas.search.supernet.MixedOp` instances (which
need their α-probabilities at call time), the derived net passes plain registry ops. Keeping one
shell means a derived net is, by construction, the supernet with every mixture collapsed.

Input normalisation: LR images are in [0, 1]; the networks subtract a fixed RGB mean (DIV2K's)
before the stem and add it back after the pixel shuffle (EDSR-style mean shift, as plain
element-wise ops so that it costs no Multi-Adds and no parameters). A space or genotype may instead
work in other pixel units (``rgb_range``: the reference DLSR code runs on [0, 255]) and without the
mean shift: :class:`InputNorm` scales the image in, :class:`Upsampler` scales the result back out, so
every network still takes and returns images in [0, 1].
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: DIV2K training-set RGB mean, subtracted before the stem and added after the upsampler.
RGB_MEAN: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)

LEAKY_SLOPE = 0.05

#: ESA's max-pool window and stride (RFDN); clamped to the map size on small inputs.
ESA_POOL_KERNEL = 7
ESA_POOL_STRIDE = 3


def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, bias=True)


def conv3x3(c_in: int, c_out: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=padding, bias=True)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE)


def esa_sizes(h: int, w: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """ESA's internal map sizes for an h×w input: (strided conv out, pool kernel, pooled map).

    The strided 3×3 conv has no padding; the 7×7/3 max pool is clamped to that map's size so
    that small training patches (8×8 LR) run. The cost model uses the same function, so what is
    computed is what is counted.
    """
    if h < 3 or w < 3:
        raise ValueError(f"ESA needs feature maps of at least 3×3, got {h}×{w}")
    h1, w1 = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    kh, kw = min(ESA_POOL_KERNEL, h1), min(ESA_POOL_KERNEL, w1)
    hp, wp = (h1 - kh) // ESA_POOL_STRIDE + 1, (w1 - kw) // ESA_POOL_STRIDE + 1
    return (h1, w1), (kh, kw), (hp, wp)


class ESA(nn.Module):
    """Enhanced spatial attention (RFDN): a cheap, strongly downsampled mask that gates x.

    f channels inside (default C/4; a pruned genotype records its own); the mask is computed at ~1/6
    resolution and bilinearly upsampled.
    """

    def __init__(self, c: int, f: int | None = None):
        super().__init__()
        f = c // 4 if f is None else f
        self.width = f
        self.reduce = conv1x1(c, f)
        self.down = conv3x3(f, f, stride=2, padding=0)
        self.conv_max = conv3x3(f, f)
        self.conv3 = conv3x3(f, f)
        self.conv3_ = conv3x3(f, f)
        self.conv_f = conv1x1(f, f)
        self.expand = conv1x1(f, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        _, pool, _ = esa_sizes(int(h), int(w))
        c1_ = self.reduce(x)
        c1 = self.down(c1_)
        v = F.max_pool2d(c1, kernel_size=pool, stride=ESA_POOL_STRIDE)
        v = F.relu(self.conv_max(v))
        c3 = F.relu(self.conv3(v))
        c3 = self.conv3_(c3)
        c3 = F.interpolate(c3, size=(int(h), int(w)), mode="bilinear", align_corners=False)
        cf = self.conv_f(c1_)
        m = torch.sigmoid(self.expand(c3 + cf))
        return x * m


class DistillCell(nn.Module):
    """Information-distillation cell with K refinement steps.

    Step k: d_k = lrelu(1×1(x_{k-1}): C -> C/2), x_k = lrelu(op_k(x_{k-1}) + x_{k-1});
    then d_{K+1} = lrelu(3×3(x_K): C -> C/2); output = ESA(1×1(concat d_1..d_{K+1}) -> C).
    ``forward(x, weights)`` passes ``weights[k]`` to op k when given (mixed ops), else calls op(x).

    Widths: ``distill`` (one per step, default C/2 each), ``last`` (default C/2) and ``esa_width``
    (default C/4) are the free widths of the shell, which a pruned genotype sets; the trunk (every
    x_k and the output) stays C, since the residuals add it to itself.
    """

    def __init__(self, ops: Sequence[nn.Module], c: int, esa: bool = True, distill: Sequence[int] | None = None,
                 last: int | None = None, esa_width: int | None = None):
        super().__init__()
        if c % 4:
            raise ValueError(f"cell width must be a multiple of 4, got {c}")
        k = len(ops)
        distill = [c // 2] * k if distill is None else list(distill)
        if len(distill) != k:
            raise ValueError(f"distill widths: expected {k} (one per step), got {len(distill)}")
        last = c // 2 if last is None else last
        self.channels = c
        self.ops = nn.ModuleList(ops)
        self.distill = nn.ModuleList(conv1x1(c, d) for d in distill)
        self.last = conv3x3(c, last)
        self.fuse = conv1x1(sum(distill) + last, c)
        self.esa = ESA(c, esa_width) if esa else None

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None,
                step: Callable[[int, nn.Module, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``step(k, op_k, x)`` replaces the refinement ``lrelu(op_k(x) + x)`` (AdaDSR gating)."""
        parts = []
        for k, op in enumerate(self.ops):
            parts.append(lrelu(self.distill[k](x)))
            if step is not None:
                x = step(k, op, x)
                continue
            y = op(x) if weights is None else op(x, weights[k])
            x = lrelu(y + x)
        parts.append(lrelu(self.last(x)))
        out = self.fuse(torch.cat(parts, dim=1))
        return self.esa(out) if self.esa is not None else out


class Upsampler(nn.Module):
    """Conv 3×3 C -> 3·s² then PixelShuffle(s): the lightweight-SR standard tail.

    ``mean_shift`` and ``rgb_range``: the net's pixel units (:class:`InputNorm`); the output is
    divided by ``rgb_range`` (after the mean is added back) so that it is in [0, 1] again.

    ``kind="pixelshuffle_bicubic"`` adds a global image skip before the shuffle: the MATLAB bicubic
    upscale of the LR input, as a fixed 5×5 conv (:class:`BicubicUpsample`). The network then learns
    the residual over bicubic, which it beats within a few hundred steps instead of thousands — what
    makes a CPU search of minutes meaningful. ``kind="pixelshuffle"`` is the plain RFDN/DLSR tail, whose
    output gets the RGB mean added back instead.
    """

    def __init__(self, c: int, scale: int, kind: str = "pixelshuffle", mean_shift: bool = True,
                 rgb_range: float = 1.0):
        super().__init__()
        if kind not in ("pixelshuffle", "pixelshuffle_bicubic"):
            raise ValueError(f"unknown upsampler '{kind}'")
        self.scale = scale
        self.kind = kind
        self.rgb_range = float(rgb_range)
        self.conv = conv3x3(c, 3 * scale * scale)
        self.skip = BicubicUpsample(scale) if kind == "pixelshuffle_bicubic" else None
        self.shuffle = nn.PixelShuffle(scale)
        self.add_mean = MeanShift(+1, rgb_range) if self.skip is None and mean_shift else None

    def forward(self, x: torch.Tensor, lr: torch.Tensor | None = None) -> torch.Tensor:
        """``lr``: the LR image in [0, 1] (the bicubic skip reads it)."""
        y = self.conv(x)
        r = self.rgb_range
        if self.skip is not None:
            if lr is None:
                raise ValueError("the bicubic-skip upsampler needs the LR image")
            skip = self.skip(lr)
            y = self.shuffle(y + (skip * r if r != 1 else skip))
        else:
            y = self.shuffle(y)
            if self.add_mean is not None:
                y = self.add_mean(y)
        return y / r if r != 1 else y


class BicubicUpsample(nn.Module):
    """MATLAB bicubic ×s upscaling as one fixed grouped conv + PixelShuffle.

    For an integer factor every output phase (p, q) reads the same 5×5 LR neighbourhood (offsets
    −2..2) with its own separable cubic weights (a = −0.5), so the whole upscale is a 5×5 conv with
    3·s² outputs and groups = 3, after symmetric (MATLAB-style) padding by 2. Counted, exported and
    fused like any conv; weights are a buffer, never trained. Used as the global image skip, so the
    network learns the residual over bicubic from its first step.
    """

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale
        taps = torch.zeros(scale, 5, dtype=torch.float64)
        for p in range(scale):
            u = (p + 0.5) / scale - 0.5
            left = math.floor(u) - 1
            for t in range(4):
                taps[p, left + t + 2] = _cubic(u - (left + t))
        taps = taps / taps.sum(dim=1, keepdim=True)
        k2 = torch.einsum("pi,qj->pqij", taps, taps).reshape(scale * scale, 1, 5, 5)
        self.register_buffer("weight", k2.repeat(3, 1, 1, 1).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(symmetric_pad(x, 2), self.weight.to(x.dtype), groups=3)  # (N, 3·s², H, W)


def symmetric_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """MATLAB's 'symmetric' border (edge pixel repeated: … b a | a b …), which ``F.pad`` lacks."""
    h, w = x.shape[-2:]
    if h < p or w < p:
        x = F.pad(x, (0, max(p - w, 0), 0, max(p - h, 0)), mode="replicate")
    top, bottom = x[..., :p, :].flip(-2), x[..., -p:, :].flip(-2)
    x = torch.cat([top, x, bottom], dim=-2)
    left, right = x[..., :p].flip(-1), x[..., -p:].flip(-1)
    return torch.cat([left, x, right], dim=-1)


def _cubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


class MeanShift(nn.Module):
    """Subtract (``sign=-1``) or add (``sign=+1``) the fixed RGB mean, in pixel units of ``rgb_range``;
    a buffer, not a parameter."""

    def __init__(self, sign: int, rgb_range: float = 1.0):
        super().__init__()
        self.sign = float(sign)
        mean = torch.tensor(RGB_MEAN) * float(rgb_range)
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sign * self.mean.to(x.dtype)


class InputNorm(nn.Module):
    """What a net does to its [0, 1] input before the stem: ×``rgb_range``, then minus the mean
    (``mean_shift``). With the defaults (1, on) it is exactly :class:`MeanShift` (−1)."""

    def __init__(self, rgb_range: float = 1.0, mean_shift: bool = True):
        super().__init__()
        self.rgb_range = float(rgb_range)
        self.shift = MeanShift(-1, rgb_range) if mean_shift else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rgb_range != 1:
            x = x * self.rgb_range
        return self.shift(x) if self.shift is not None else x
