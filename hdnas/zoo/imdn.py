"""IMDN (Hui et al., 2019), two ways: faithfully as a plain module, and approximately in our space.

Our cell cannot express IMDN's block, for two reasons, so the faithful module is the reference:

* IMDN *splits* each 3×3 conv's output channels (C/4 kept as distilled features, 3C/4 refined
  further by a 3×3 from 3C/4 to C); our cell distils with separate 1×1 convs and refines at full
  width with a residual;
* IMDN gates with contrast-aware channel attention (CCA: per-channel standard deviation + mean,
  a 1×1 bottleneck of reduction 16, sigmoid); our cell has ESA or nothing.

``imdn_space_genotype`` is the closest expression in our space (conv_3x3, C=64, 6 cells, chain,
all fused, ``esa=False`` standing in for CCA); it has more parameters and Multi-Adds than IMDN.

IMDN (C=64, 6 blocks) has 715,176 parameters and 40.9G Multi-Adds at ×4 (1280×720), as published.
Multi-Adds here: every conv as fvcore counts it, plus ``extras`` that fvcore skips — per CCA the
squared deviations (1 per element) and the gate ``x · y`` (1 per element). Means, the square
root and additions are not multiplications of feature maps and are not counted.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hdnas.core.cost import HR_SIZE, lr_size_for
from hdnas.core.genotype import CellGenotype, Genotype
from hdnas.core.ops import conv_macs, conv_params
from hdnas.zoo.common import ModelCost

__all__ = ["IMDN", "IMDB", "CCA", "imdn_cost", "imdn_space_genotype"]

IMDN_CHANNELS = 64
IMDN_BLOCKS = 6
DISTILL_RATE = 0.25
CCA_REDUCTION = 16
SLOPE = 0.05


def _conv(c_in: int, c_out: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=True)


class CCA(nn.Module):
    """Contrast-aware channel attention: gate = sigmoid(MLP(std_c(x) + mean_c(x)))."""

    def __init__(self, c: int, reduction: int = CCA_REDUCTION):
        super().__init__()
        self.squeeze = nn.Conv2d(c, c // reduction, 1, bias=True)
        self.excite = nn.Conv2d(c // reduction, c, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        y = torch.sigmoid(self.excite(F.relu(self.squeeze(std + mean))))
        return x * y


class IMDB(nn.Module):
    """Information multi-distillation block: three 3×3 convs whose outputs are split into a kept
    quarter and a refined remainder, a last 3×3 on the remainder, CCA, 1×1 fusion, residual."""

    def __init__(self, c: int = IMDN_CHANNELS, rate: float = DISTILL_RATE):
        super().__init__()
        self.kept = int(c * rate)
        self.rest = c - self.kept
        self.c1 = _conv(c, c, 3)
        self.c2 = _conv(self.rest, c, 3)
        self.c3 = _conv(self.rest, c, 3)
        self.c4 = _conv(self.rest, self.kept, 3)
        self.cca = CCA(4 * self.kept)
        self.c5 = _conv(4 * self.kept, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        y = x
        for conv in (self.c1, self.c2, self.c3):
            d, y = torch.split(F.leaky_relu(conv(y), SLOPE), (self.kept, self.rest), dim=1)
            parts.append(d)
        parts.append(self.c4(y))
        return self.c5(self.cca(torch.cat(parts, dim=1))) + x


class IMDN(nn.Module):
    """Stem 3×3 -> 6 IMDBs -> 1×1 fusion of all blocks + LeakyReLU -> 3×3 + long skip -> conv 3×3 + PixelShuffle."""

    def __init__(self, scale: int, channels: int = IMDN_CHANNELS, blocks: int = IMDN_BLOCKS):
        super().__init__()
        if channels % 4:
            raise ValueError(f"IMDN width must be a multiple of 4, got {channels}")
        self.scale = scale
        self.stem = _conv(3, channels, 3)
        self.blocks = nn.ModuleList(IMDB(channels) for _ in range(blocks))
        self.fusion = _conv(blocks * channels, channels, 1)
        self.body = _conv(channels, channels, 3)
        self.upsampler = nn.Sequential(_conv(channels, 3 * scale * scale, 3), nn.PixelShuffle(scale))

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        fea = self.stem(lr)
        outs, x = [], fea
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        fused = F.leaky_relu(self.fusion(torch.cat(outs, dim=1)), SLOPE)
        return self.upsampler(self.body(fused) + fea)


def imdn_cost(
    scale: int, hr_size: tuple[int, int] = HR_SIZE, channels: int = IMDN_CHANNELS, blocks: int = IMDN_BLOCKS
) -> ModelCost:
    """Exact Multi-Adds (fvcore's convs + CCA's multiplications as extras) and parameters of :class:`IMDN`."""
    h, w = lr_size_for(scale, hr_size)
    c = channels
    kept = int(c * DISTILL_RATE)
    rest = c - kept
    cat = 4 * kept
    red = cat // CCA_REDUCTION
    block_convs = [(c, c, 3), (rest, c, 3), (rest, c, 3), (rest, kept, 3), (cat, c, 1)]
    block_macs = sum(conv_macs(i, o, k, h, w) for i, o, k in block_convs)
    block_macs += conv_macs(cat, red, 1, 1, 1) + conv_macs(red, cat, 1, 1, 1)  # CCA's MLP on 1×1 maps
    block_params = sum(conv_params(i, o, k) for i, o, k in block_convs) + conv_params(cat, red, 1) + conv_params(red, cat, 1)
    block_extras = 2 * cat * h * w  # squared deviations + gate
    s2 = 3 * scale * scale
    fixed = [(3, c, 3), (blocks * c, c, 1), (c, c, 3), (c, s2, 3)]
    macs = blocks * (block_macs + block_extras) + sum(conv_macs(i, o, k, h, w) for i, o, k in fixed)
    params = blocks * block_params + sum(conv_params(i, o, k) for i, o, k in fixed)
    return ModelCost(
        macs=macs,
        params=params,
        lr_size=(h, w),
        extras=blocks * block_extras,
        paper_macs=macs - blocks * block_extras,
        note="paper convention: convolutions only (40.9G at x4); extras are CCA's squared deviations and gate",
    )


def imdn_space_genotype(scale: int, channels: int = IMDN_CHANNELS, cells: int = IMDN_BLOCKS) -> Genotype:
    """IMDN's closest expression in our space: conv_3x3 refinement, chain, all fused, no ESA (for CCA)."""
    geno = Genotype(
        scale=scale,
        channels=channels,
        cells=[CellGenotype(ops=["conv_3x3"] * 3, inputs=[i - 1]) for i in range(1, cells + 1)],
        fusion=list(range(1, cells + 1)),
        esa=False,
        provenance={
            "tool": "hdnas.zoo",
            "reference": "imdn_space",
            "note": "IMDN approximated in our space: our cell has no channel split and no CCA (esa=false instead)",
        },
    )
    geno.validate()
    return geno
