"""Fixed building blocks shared by the supernet and the derived network.

The information-distillation cell shell (IMDN/RFDN style) is written once and takes its K
refinement ops as modules: the supernet passes :class:`~hdnas.supernet.MixedOp` instances (which
need their α-probabilities at call time), the derived net passes plain registry ops. Keeping one
shell means a derived net is, by construction, the supernet with every mixture collapsed.

Input normalisation: LR images are in [0, 1]; the networks subtract a fixed RGB mean (DIV2K's)
before the stem and add it back after the pixel shuffle (EDSR-style mean shift, as plain
element-wise ops so that it costs no Multi-Adds and no parameters).
"""

from __future__ import annotations

from typing import Sequence

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

    f = C/4 channels inside; the mask is computed at ~1/6 resolution and bilinearly upsampled.
    """

    def __init__(self, c: int):
        super().__init__()
        f = c // 4
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
    """

    def __init__(self, ops: Sequence[nn.Module], c: int, esa: bool = True):
        super().__init__()
        if c % 4:
            raise ValueError(f"cell width must be a multiple of 4, got {c}")
        k = len(ops)
        self.channels = c
        self.ops = nn.ModuleList(ops)
        self.distill = nn.ModuleList(conv1x1(c, c // 2) for _ in range(k))
        self.last = conv3x3(c, c // 2)
        self.fuse = conv1x1((k + 1) * (c // 2), c)
        self.esa = ESA(c) if esa else None

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        for k, op in enumerate(self.ops):
            parts.append(lrelu(self.distill[k](x)))
            y = op(x) if weights is None else op(x, weights[k])
            x = lrelu(y + x)
        parts.append(lrelu(self.last(x)))
        out = self.fuse(torch.cat(parts, dim=1))
        return self.esa(out) if self.esa is not None else out


class Upsampler(nn.Sequential):
    """Conv 3×3 C -> 3·s² then PixelShuffle(s): the lightweight-SR standard tail."""

    def __init__(self, c: int, scale: int):
        super().__init__(conv3x3(c, 3 * scale * scale), nn.PixelShuffle(scale))
        self.scale = scale


class MeanShift(nn.Module):
    """Subtract (``sign=-1``) or add (``sign=+1``) the fixed RGB mean; a buffer, not a parameter."""

    def __init__(self, sign: int):
        super().__init__()
        self.sign = float(sign)
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sign * self.mean.to(x.dtype)
