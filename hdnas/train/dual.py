"""The dual (downsampling) model of dual-regression training (DRN, Guo et al., 2020).

The SR network maps LR -> HR; the dual model D maps the SR output back to LR, and training adds
``λ·L1(D(SR), LR)``. Because many HR images downsample to the same LR, the primal task alone is
ill-posed; the dual term restricts the solution space to SR outputs consistent with their input.
D is deliberately tiny (a few thousand parameters) so that it cannot "explain away" errors on its
own; it is trained with its own optimiser, saved in checkpoints and never exported.
"""

from __future__ import annotations

import torch
import torch.nn as nn

DUAL_FEATURES = 16
DUAL_SLOPE = 0.2


class DualModel(nn.Module):
    """HR (B, 3, H, W) -> LR (B, 3, H/s, W/s).

    ×2 and ×4: one conv 3×3 stride 2 (no bias) + LeakyReLU 0.2 per ×2 step (3 -> 16 channels, then
    16 -> 16), then a conv 3×3 16 -> 3. ×3: the same with one conv 3×3 stride 3 without padding,
    so each LR pixel sees exactly the 3×3 HR block it was made from.
    """

    def __init__(self, scale: int, features: int = DUAL_FEATURES):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"dual model: scale must be 2, 3 or 4, got {scale}")
        self.scale = scale
        layers: list[nn.Module] = []
        c_in = 3
        if scale == 3:
            layers += [nn.Conv2d(c_in, features, 3, stride=3, padding=0, bias=False), nn.LeakyReLU(DUAL_SLOPE)]
        else:
            for _ in range({2: 1, 4: 2}[scale]):
                layers += [nn.Conv2d(c_in, features, 3, stride=2, padding=1, bias=False), nn.LeakyReLU(DUAL_SLOPE)]
                c_in = features
        layers.append(nn.Conv2d(features, 3, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)

    def forward(self, sr: torch.Tensor) -> torch.Tensor:
        return self.body(sr)
