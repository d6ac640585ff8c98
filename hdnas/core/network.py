"""The derived network: a genotype turned into a plain ``nn.Module`` (no architecture parameters).

Backbone (same as the supernet's): mean shift -> conv 3×3 stem (output 0) -> live cells ->
1×1 fusion over the fused cells + LeakyReLU -> conv 3×3 + long skip from the stem -> conv 3×3 +
PixelShuffle -> mean shift back. A cell with several inputs reads a 1×1 conv over their concat
(+ LeakyReLU with ``combine_lrelu``); the genotype's backbone keys (:mod:`hdnas.core.genotype`) also
set the ops' biases and the pixel units. Dead cells (reaching neither the fusion nor a live cell) are not
built, so they cost no parameters, no time and no Multi-Adds. A pruned genotype's widths
(:mod:`hdnas.core.genotype`, "Widths") build the narrower layers.
"""

from __future__ import annotations

import copy
import functools
from typing import Callable

import torch
import torch.nn as nn

from hdnas.core.blocks import DistillCell, InputNorm, Upsampler, conv1x1, conv3x3, lrelu
from hdnas.core.genotype import Genotype
from hdnas.core.ops import build_op


class DerivedNet(nn.Module):
    def __init__(self, genotype: Genotype):
        super().__init__()
        genotype.validate()
        genotype = copy.deepcopy(genotype)  # the wiring must not change under the module's feet
        c = genotype.channels
        self.genotype = genotype
        self.scale = genotype.scale
        self.live: list[int] = genotype.build_order()  # live cells, each after its inputs
        self.sub_mean = InputNorm(genotype.rgb_range, genotype.mean_shift)
        self.stem = conv3x3(3, c)
        self.cells = nn.ModuleDict()
        self.combine = nn.ModuleDict()  # 1×1 conv over concatenated inputs, for cells with >1 input
        for i in self.live:
            cell = genotype.cells[i - 1]
            w = genotype.cell_widths(i)
            ops = [build_op(op, c, c, mid, genotype.op_bias) for op, mid in zip(cell.ops, w.ops)]
            self.cells[f"cell{i}"] = DistillCell(ops, c, genotype.esa, distill=w.distill, last=w.last, esa_width=w.esa)
            if len(cell.inputs) > 1:
                self.combine[f"cell{i}"] = conv1x1(len(cell.inputs) * c, c)
        self.fusion = conv1x1(len(genotype.fusion) * c, genotype.fusion_channels)
        self.body = conv3x3(genotype.fusion_channels, c)
        self.upsampler = Upsampler(c, genotype.scale, genotype.upsampler, genotype.mean_shift, genotype.rgb_range)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.tail(self.stem(self.sub_mean(lr)), lr)

    def tail(self, stem: torch.Tensor, lr: torch.Tensor,
             step: Callable[[int, int, nn.Module, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Everything after the stem; ``step(position, k, op, x)`` replaces the refinement step k of
        the live cell at ``position`` (0-based, in ``live`` order): the AdaDSR hook."""
        outs: dict[int, torch.Tensor] = {0: stem}
        for pos, i in enumerate(self.live):
            name = f"cell{i}"
            inputs = self.genotype.cells[i - 1].inputs
            if name in self.combine:
                x = self.combine[name](torch.cat([outs[j] for j in inputs], dim=1))
                if self.genotype.combine_lrelu:
                    x = lrelu(x)
            else:
                x = outs[inputs[0]]
            cell_step = None if step is None else functools.partial(step, pos)
            outs[i] = self.cells[name](x, step=cell_step)
        fused = lrelu(self.fusion(torch.cat([outs[j] for j in self.genotype.fusion], dim=1)))
        body = self.body(fused) + outs[0]
        return self.upsampler(body, lr)

