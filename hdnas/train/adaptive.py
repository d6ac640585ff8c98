"""AdaDSR training terms: the desired depth drawn per image and the depth penalty.

The network itself (:class:`hdnas.core.adaptive.AdaptiveNet`) lives in the core, since loading,
evaluation and export build it too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_depths(batch: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    """One desired depth per image, uniform on [lo, hi] (seeded: resumable)."""
    return lo + (hi - lo) * torch.rand(batch, generator=generator)


def depth_loss(depth: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``mean_b max(0, mean(D_b) − d_b)``: deeper than asked costs, shallower is free."""
    return F.relu(depth.mean(dim=(1, 2, 3)) - d.to(depth.dtype)).mean()
