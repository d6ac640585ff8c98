"""MATLAB bicubic upscaling as a module: the baseline every SR table starts from.

No parameters; 0 Multi-Adds by convention (SR papers list bicubic without a cost: it is the
degradation model's inverse, not a learned network — a separable 4-tap filter, about 4 multiplies
per pass per output value).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from hdnas.core.cost import HR_SIZE, lr_size_for
from hdnas.core.data import imresize
from hdnas.zoo.common import ModelCost

__all__ = ["Bicubic", "bicubic_cost"]


class Bicubic(nn.Module):
    """``imresize(lr, scale)`` in float (MATLAB's antialiased cubic, a = −0.5), not clamped."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return imresize(lr, scale=self.scale)


def bicubic_cost(scale: int, hr_size: tuple[int, int] = HR_SIZE) -> ModelCost:
    return ModelCost(macs=0, params=0, lr_size=lr_size_for(scale, hr_size), note="0 Multi-Adds by convention")
