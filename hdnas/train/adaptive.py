"""AdaDSR training terms: the desired depth drawn per image, the depth penalty, and (softmax
allocation) the pull of the allocation toward the blocks where depth reduces the error most.

The network itself (:class:`hdnas.core.adaptive.AdaptiveNet`) lives in the core, since loading,
evaluation and export build it too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hdnas.core.adaptive import AdaptiveNet, block_areas


def sample_depths(batch: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    """One desired depth per image, uniform on [lo, hi] (seeded: resumable)."""
    return lo + (hi - lo) * torch.rand(batch, generator=generator)


def depth_loss(depth: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``mean_b max(0, mean(D_b) − d_b)``: deeper than asked costs, shallower is free."""
    return F.relu(depth.mean(dim=(1, 2, 3)) - d.to(depth.dtype)).mean()


@torch.no_grad()
def block_gain(net: AdaptiveNet, lr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """(B, nh, nw): per ``tile × tile`` LR block, how much the mean |SR − HR| over its HR area falls
    from depth 0 to full depth (clamped at 0): where the refinement steps earn their cost.
    Two forwards without gradients (the dense execution) per call."""
    b, _, h, w = lr.shape
    t, s = net.cfg.tile, net.scale
    ends = []
    for value in (0.0, float(net.units_per_group)):
        full = torch.full((b, net.n_groups, h, w), value, dtype=lr.dtype, device=lr.device)
        sr, _ = net.forward_depth(lr, depth_map=full, execution="dense")
        ends.append(F.avg_pool2d((sr - hr).abs().mean(dim=1, keepdim=True), t * s, ceil_mode=True)[:, 0])
    return (ends[0] - ends[1]).clamp_min(0)


def gain_loss(net: AdaptiveNet, lr: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``KL(p ‖ q)`` per image and depth map, averaged: p_k the block's share of the image's total gain
    (:func:`block_gain` × block area), q_k its share of the depth budget under the softmax allocation
    (area × exp(z̄_k), before clipping at the top). It pulls the allocation toward the blocks where
    depth pays, which reconstruction alone teaches only through the gates' local gradients. Images
    with no gain anywhere add nothing."""
    t = net.cfg.tile if net.cfg.pool else 1
    z = net.adapter.logits(net.stem(net.sub_mean(lr)))
    h, w = z.shape[-2:]
    zb = (F.avg_pool2d(z, t, ceil_mode=True) if t > 1 else z).flatten(2)  # B, G, N
    area = block_areas(h, w, t, z.device, z.dtype).reshape(1, 1, -1)
    log_q = torch.log_softmax(zb + area.log(), dim=-1)
    mass = (gain.flatten(1).to(z.dtype) * area[:, 0]).unsqueeze(1)  # B, 1, N
    total = mass.sum(-1, keepdim=True)
    p = mass / total.clamp_min(torch.finfo(z.dtype).tiny)
    kl = (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(-1)  # B, G
    has = (total[..., 0] > 0).to(z.dtype)
    return (kl * has).sum() / (has.sum() * kl.shape[1]).clamp_min(1.0)
