"""AdaDSR depth adapters: one trained network whose inference cost is tuned per image region.

After Liu et al., "Deep Adaptive Inference Networks for Single Image Super-Resolution" (AdaDSR).
A light adapter reads the stem features and a desired average depth ``d`` and predicts a depth map
``D ≥ 0``; gated unit ``u`` computes ``x + clamp(D − u, 0, 1) · f(x)`` per pixel, so where
``D ≤ u`` the unit is the identity and need not run.

Granularity: the unit is a cell's *refinement step* ``x ← lrelu(op(x) + x)``, written
``x + g·(lrelu(op(x) + x) − x)``. Why not whole cells: an information-distillation cell has no
identity path of its own (its output is ``ESA(fuse(distilled parts))``), and ESA pools over the
whole image, so a cell run on a few tiles does not give the cell's output there. The refinement
ops are local convolutions (radius known from the registry) and carry most of a cell's cost (78 %
for a 32-channel cell of 3×3 convs), so they can be skipped tile by tile *exactly*. The cheap
per-step distillation 1×1s, the last 3×3, the cell fusion and ESA stay dense.

Groups (``groups``): ``network`` — one map, units numbered through the live cells in order
(``U = cells × steps``, d ∈ [0, U]; shallow means the late cells' steps go first, as in the paper's
single map over residual blocks); ``cell`` — one map per live cell gating its own steps
(d ∈ [0, steps]).

With ``pool`` (default) the depth map is averaged over each ``tile × tile`` block, in training and
at inference, so gates are constant per block and the skipping honours them fully.

Allocation (``allocation``): ``scale`` (default) — ``D = d · 2σ(z)``, the mean of D is held near d
only by the depth penalty; ``softmax`` — ``D = d · softmax(z)`` over the image's blocks, area-weighted
so the pixel mean of D is exactly ``min(d, U)`` and only *where* the depth goes is learned
(:func:`softmax_allocation`; blocks past U are clipped and their excess is given to the others).

Execution (:class:`AdaptiveNet`): ``dense`` computes every unit and multiplies by the gate (training,
export); ``tiles`` (inference) splits the LR map into ``tile × tile`` blocks and runs a unit only on
the blocks where its gate is non-zero somewhere, each with a halo of the op's radius, batched into
one convolution call; a unit whose active blocks would cost more Multi-Adds than the whole map runs
densely. Results equal the dense path (tested). This replaces AdaDSR's sparse convolution, which is
slower than dense convolution on CPUs; ``tools/evaluate.py --depth`` measures the latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from hdnas.core.blocks import lrelu
from hdnas.core.config import ConfigError
from hdnas.core.cost import count
from hdnas.core.genotype import Genotype
from hdnas.core.network import DerivedNet
from hdnas.core.ops import conv_macs, get_op, op_macs

__all__ = [
    "AdaptiveConfig", "DepthAdapter", "AdaptiveNet", "DepthCost", "cost_at_depth",
    "active_tiles", "softmax_allocation", "block_areas",
]

GROUPS = ("network", "cell")
ALLOCATIONS = ("scale", "softmax")


@dataclass
class AdaptiveConfig:
    enabled: bool = False
    groups: str = "network"  # network: one depth map over all refinement steps | cell: one map per live cell
    channels: int = 16  # adapter width
    layers: int = 3  # adapter 3×3 convs (PReLU between)
    depth_range: list = field(default_factory=lambda: [0.0, None])  # d ~ U[lo, hi] per image; None: all units
    weight: float = 0.02  # λ of λ·max(0, mean(D) − d)
    tile: int = 16  # LR block side of the skipping execution
    pool: bool = True  # average the depth map over each tile: gates are what the tiles execution can skip
    val_depth: Optional[float] = None  # depth that validation scores; None: the top of depth_range
    allocation: str = "scale"  # scale: D = d·2σ(z) | softmax: D = d·softmax(z) over blocks, mean exactly d
    init: Optional[str] = None  # a retrain checkpoint of the same genotype whose weights start the backbone
    freeze_backbone: bool = False  # with init: train the adapter alone (the paper's fine-tuning)
    gain_weight: float = 0.0  # softmax only: λ_g·KL(share of the full-depth gain ‖ share of the depth) per block

    def validate(self) -> None:
        if self.groups not in GROUPS:
            raise ConfigError(f"adaptive.groups: expected one of {', '.join(GROUPS)}, got '{self.groups}'")
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"adaptive.allocation: expected one of {', '.join(ALLOCATIONS)}, "
                              f"got '{self.allocation}'")
        if self.gain_weight < 0 or (self.gain_weight > 0 and self.allocation != "softmax"):
            raise ConfigError(f"adaptive.gain_weight: expected 0, or > 0 with adaptive.allocation=softmax, "
                              f"got {self.gain_weight} with {self.allocation}")
        if self.freeze_backbone and not self.init:
            raise ConfigError("adaptive.freeze_backbone: needs adaptive.init (a trained backbone to keep)")
        if self.channels < 1 or self.layers < 2:
            raise ConfigError("adaptive.channels: expected ≥ 1 and adaptive.layers ≥ 2 (3×3 convs)")
        if not (isinstance(self.depth_range, (list, tuple)) and len(self.depth_range) == 2):
            raise ConfigError(f"adaptive.depth_range: expected [lo, hi], got {self.depth_range}")
        lo, hi = self.depth_range
        if lo is None or lo < 0 or (hi is not None and hi < lo):
            raise ConfigError(f"adaptive.depth_range: expected 0 ≤ lo ≤ hi, got {self.depth_range}")
        if self.weight < 0:
            raise ConfigError(f"adaptive.weight: expected a non-negative number, got {self.weight}")
        if self.tile < 1:
            raise ConfigError(f"adaptive.tile: expected at least 1, got {self.tile}")


class DepthAdapter(nn.Module):
    """A few 3×3 convs with PReLU on the stem features; ``D = d · 2σ(z)``.

    ``d`` enters multiplicatively (the paper's design): one adapter serves every desired depth and
    ``d = 0`` turns every unit off. ``2σ(z)`` keeps D in [0, 2d] with gradients everywhere (a ReLU
    output can die); the last conv starts at zero, so training starts from ``D = d`` everywhere.
    """

    def __init__(self, c_in: int, channels: int = 16, layers: int = 3, maps: int = 1):
        super().__init__()
        mods: list[nn.Module] = []
        c = c_in
        for _ in range(layers - 1):
            mods += [nn.Conv2d(c, channels, 3, padding=1), nn.PReLU(channels)]
            c = channels
        self.body = nn.Sequential(*mods)
        self.head = nn.Conv2d(c, maps, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def logits(self, feat: torch.Tensor) -> torch.Tensor:
        """z, one map per group: what either allocation turns into depth."""
        return self.head(self.body(feat))

    def forward(self, feat: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        z = self.logits(feat)
        return d.reshape(-1, 1, 1, 1).to(z.dtype) * 2.0 * torch.sigmoid(z)

    def macs(self, h: int, w: int) -> int:
        return sum(conv_macs(m.in_channels, m.out_channels, m.kernel_size[0], h, w)
                   for m in self.modules() if isinstance(m, nn.Conv2d))


def _tile_grid(h: int, w: int, tile: int) -> tuple[int, int]:
    return math.ceil(h / tile), math.ceil(w / tile)


def block_areas(h: int, w: int, tile: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(nh, nw): pixels in each ``tile × tile`` block of an h×w map (border blocks are partial)."""
    nh, nw = _tile_grid(h, w, tile)
    rows = (h - tile * torch.arange(nh, device=device)).clamp(max=tile).to(dtype)
    cols = (w - tile * torch.arange(nw, device=device)).clamp(max=tile).to(dtype)
    return rows[:, None] * cols[None, :]


def _unpool(blocks: torch.Tensor, tile: int, h: int, w: int) -> torch.Tensor:
    """A (B, G, nh, nw) block map at pixel resolution (B, G, h, w)."""
    return blocks.repeat_interleave(tile, dim=2).repeat_interleave(tile, dim=3)[..., :h, :w]


def softmax_allocation(z: torch.Tensor, d: torch.Tensor, tile: int, top: float) -> torch.Tensor:
    """Depth per pixel (B, G, h, w), constant per ``tile × tile`` block, from logits ``z`` (B, G, h, w):
    ``D_k = c · exp(z̄_k)`` with z̄_k the block mean of z and c set so that the mean of D over each
    image's pixels is exactly ``min(d, top)``.

    Why a softmax: the budget is fixed, so the adapter can only move depth between blocks, never
    buy quality with more of it; the depth penalty has nothing left to do. Why over pixels, not
    blocks: border blocks are partial, and the pixel mean of D is what the budget is (a block
    weighs by its area). Blocks above ``top`` (every unit open) would waste depth, so they are
    clipped to ``top`` and the excess goes to the others in proportion to their weights
    (water-filling: sort by z̄, find the fewest clipped pixels for which the rest fit; pixels of one
    block tie, and the test is the same for every pixel of a tie, so whole blocks clip). Closed
    form on shapes read from the tensors: no loop, and ONNX export traces it for any image size."""
    zb = _unpool(F.avg_pool2d(z, tile, ceil_mode=True), tile, z.shape[-2], z.shape[-1]) if tile > 1 else z
    zf = zb.flatten(2)  # B, G, P
    ones = torch.ones_like(zf)
    d_eff = d.to(z.dtype).reshape(-1, 1, 1).clamp(max=top)
    budget = d_eff * ones.sum(-1, keepdim=True)  # Σ_pixels D
    zs, _ = zf.sort(dim=-1, descending=True)
    e = torch.exp(zs - zs[..., :1])  # ≤ 1: no overflow
    before = ones.cumsum(-1) - 1  # j: pixels ahead of pixel j in the order, all clipped if j is the first to fit
    rest = e.flip(-1).cumsum(-1).flip(-1)  # Σ_{i ≥ j} e_i (a suffix sum: no cancellation in the tail)
    fits = (budget - top * before) * e <= top * rest * (1 + 1e-6)  # pixel j stays ≤ top with 0..j-1 clipped
    k = fits.to(torch.uint8).argmax(-1, keepdim=True)  # the first that fits: fewest clipped (fits is monotone)
    rest_k = torch.cat([rest, rest[..., :1] * 0], -1).gather(-1, k)
    scale = (budget - top * k.to(z.dtype)) / rest_k.clamp_min(torch.finfo(z.dtype).tiny)
    depth = torch.minimum(scale * torch.exp(zf - zs[..., :1]), torch.full_like(zf, top))
    depth = torch.where((~fits).all(-1, keepdim=True), torch.full_like(zf, top), depth)
    return depth.reshape(zb.shape)


def active_tiles(gate: torch.Tensor, tile: int) -> torch.Tensor:
    """(B, nh, nw) bool: the ``tile × tile`` blocks of a (B, 1, H, W) gate that are non-zero somewhere."""
    h, w = gate.shape[-2:]
    nh, nw = _tile_grid(h, w, tile)
    g = F.pad(gate, (0, nw * tile - w, 0, nh * tile - h))
    return F.max_pool2d(g, tile)[:, 0] > 0


def _use_tiles(n_active: int, tile: int, radius: int, h: int, w: int, batch: int) -> bool:
    """Blocks with halos cost fewer Multi-Adds than the whole map (the rule cost and execution share)."""
    return n_active * (tile + 2 * radius) ** 2 < batch * h * w


def _run_op(op: nn.Module, x: torch.Tensor, inside: torch.Tensor | None) -> torch.Tensor:
    """``op(x)`` on halo'd blocks; ``inside`` zeroes the positions outside the image after every layer
    of a multi-layer op, as the dense op's zero padding does (a bias would otherwise leak in)."""
    if inside is None or not isinstance(op, nn.Sequential):
        return op(x)
    for layer in op:
        x = layer(x) * inside
    return x


class AdaptiveNet(DerivedNet):
    """A derived net with a depth adapter and per-pixel gated refinement steps.

    ``forward(lr, d)`` returns SR at desired depth ``d`` (default: the top of the trained range);
    ``forward_depth`` also returns the depth map (training) and accepts a given ``depth_map``
    (tests, cost checks). ``execution``: ``auto`` (tiles in eval mode without grad, else dense),
    ``dense`` or ``tiles``.
    """

    def __init__(self, genotype: Genotype, cfg: AdaptiveConfig | None = None):
        super().__init__(genotype)
        cfg = cfg or AdaptiveConfig(enabled=True)
        cfg.validate()
        self.cfg = cfg
        self.steps = genotype.steps
        self.n_groups = 1 if cfg.groups == "network" else len(self.live)
        self.units_per_group = self.steps * (len(self.live) if cfg.groups == "network" else 1)
        self.adapter = DepthAdapter(genotype.channels, cfg.channels, cfg.layers, self.n_groups)
        self.radii = {pos: [get_op(op).radius for op in genotype.cells[i - 1].ops] for pos, i in enumerate(self.live)}
        self.depth: float | None = None  # the default desired depth of forward(); None: depth_range's top
        self.execution = "auto"

    # -- depth ----------------------------------------------------------------------------------
    def depth_bounds(self) -> tuple[float, float]:
        lo, hi = self.cfg.depth_range
        return float(lo), float(self.units_per_group if hi is None else hi)

    def unit(self, pos: int, k: int) -> tuple[int, int]:
        """(depth-map index, unit index within its group) of step k of the live cell at ``pos``."""
        if self.cfg.groups == "network":
            return 0, pos * self.steps + k
        return pos, k

    def depth_map(self, stem: torch.Tensor, d) -> torch.Tensor:
        """The adapter's depth map for desired depth(s) ``d``; with ``pool``, constant over each tile.

        Why pool: with a per-pixel map one deep pixel makes its whole block run; averaging per
        block keeps mean(D) and makes the gates the ones that execution honours, in training as at
        inference. The softmax allocation shares the budget among the blocks (pixels without pool)."""
        t = self.cfg.tile if self.cfg.pool else 1
        if self.cfg.allocation == "softmax":
            return softmax_allocation(self.adapter.logits(stem), self._d(d, stem), t,
                                      float(self.depth_bounds()[1]))
        depth = self.adapter(stem, self._d(d, stem))
        if t == 1:
            return depth
        h, w = depth.shape[-2:]
        return _unpool(F.avg_pool2d(depth, t, ceil_mode=True), t, h, w)

    def _d(self, d, lr: torch.Tensor) -> torch.Tensor:
        if d is None:
            d = self.depth if self.depth is not None else self.depth_bounds()[1]
        d = torch.as_tensor(d, dtype=lr.dtype, device=lr.device)
        return d.expand(lr.shape[0]) if d.dim() == 0 else d

    # -- forward --------------------------------------------------------------------------------
    def forward(self, lr: torch.Tensor, d=None) -> torch.Tensor:
        return self.forward_depth(lr, d)[0]

    def forward_depth(self, lr: torch.Tensor, d=None, depth_map: torch.Tensor | None = None,
                      execution: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mode = execution or self.execution
        if mode == "auto":
            mode = "tiles" if not self.training and not torch.is_grad_enabled() else "dense"
        if mode not in ("dense", "tiles"):
            raise ValueError(f"execution: expected auto, dense or tiles, got '{mode}'")
        stem = self.stem(self.sub_mean(lr))
        depth = self.depth_map(stem, d) if depth_map is None else depth_map.to(stem.dtype)
        if depth.shape[1] != self.n_groups or depth.shape[-2:] != stem.shape[-2:]:
            raise ValueError(f"depth map of shape {tuple(depth.shape)}: expected (B, {self.n_groups}, "
                             f"{stem.shape[-2]}, {stem.shape[-1]})")

        def step(pos: int, k: int, op: nn.Module, x: torch.Tensor) -> torch.Tensor:
            g_idx, u = self.unit(pos, k)
            gate = (depth[:, g_idx:g_idx + 1] - u).clamp(0, 1)
            if mode == "dense":
                return _gated(x, op(x), gate)
            return self._tiled_step(op, x, gate, self.radii[pos][k])

        return self.tail(stem, lr, step), depth

    def _tiled_step(self, op: nn.Module, x: torch.Tensor, gate: torch.Tensor, r: int) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.cfg.tile
        act = active_tiles(gate, t)
        n = int(act.sum())
        if n == 0:
            return x
        if not _use_tiles(n, t, r, h, w, b):
            return _gated(x, op(x), gate)
        nh, nw = act.shape[1:]
        at = act.nonzero(as_tuple=True)  # (batch, row, col) of each active block
        blocks = _gather(x, t, r, nh, nw, at)
        inside = None
        if isinstance(op, nn.Sequential) and r > 0:
            ones = torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device)
            inside = _gather(ones, t, r, nh, nw, (torch.zeros_like(at[0]), at[1], at[2]))
        y = _run_op(op, blocks, inside)
        centre = (..., slice(r, r + t), slice(r, r + t))
        new = _gated(blocks[centre], y[centre], _gather(gate, t, 0, nh, nw, at))
        out = F.pad(x, (0, nw * t - w, 0, nh * t - h))  # the one full copy: x itself may be needed later
        _block_view(out, t, 0)[at] = new.permute(0, 2, 3, 1)
        return out if out.shape[-2:] == (h, w) else out[..., :h, :w]


def _gated(x: torch.Tensor, op_x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """A gated refinement step: ``x + g·(lrelu(op(x) + x) − x)``; g = 1 is the plain step, g = 0 the identity."""
    return x + gate * (lrelu(op_x + x) - x)


def _block_view(x: torch.Tensor, t: int, halo: int) -> torch.Tensor:
    """(B, nh, nw, t + 2·halo, t + 2·halo, C): a view of the blocks of an already padded map (no copy;
    channels last, so gathered blocks come out in the layout the convs want)."""
    return x.unfold(2, t + 2 * halo, t).unfold(3, t + 2 * halo, t).permute(0, 2, 3, 4, 5, 1)


def _gather(x: torch.Tensor, t: int, halo: int, nh: int, nw: int, at: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(n, C, t + 2·halo, t + 2·halo), channels last: the blocks ``at`` of x with halos, zero past the
    image. Only those blocks are copied (why: copying every block, then picking, was a third of a
    sparse forward)."""
    pad = (halo, halo + nw * t - x.shape[-1], halo, halo + nh * t - x.shape[-2])
    return _block_view(F.pad(x, pad), t, halo)[at].permute(0, 3, 1, 2)


@dataclass
class DepthCost:
    """Multi-Adds actually computed for one image at one depth map (see :func:`cost_at_depth`)."""

    macs: int  # everything: dense parts + adapter + executed units
    dense: int  # the plain net's cost without its refinement ops
    adapter: int
    units: list[int]  # per unit (live-cell order, steps within): executed op Multi-Adds + gate multiplies
    full_units: int  # the refinement ops at full depth, dense, without gates (the plain net's)
    plain: int  # the plain derived net on the same image

    @property
    def fraction(self) -> float:
        return self.macs / self.plain


def cost_at_depth(net: AdaptiveNet, depth_map: torch.Tensor) -> DepthCost:
    """Exact Multi-Adds of ``net``'s tiles execution for one image whose depth map is ``depth_map``
    (1, G, h, w) at LR size h×w: the plain net's count (:func:`hdnas.core.cost.count`, same conventions)
    with each refinement op replaced by what runs — ``n_active · op(t + 2r)²`` on halo'd blocks, or
    the whole map when that is cheaper, or nothing — plus one multiply per computed gated element
    and the adapter's convs."""
    if depth_map.dim() != 4 or depth_map.shape[0] != 1:
        raise ValueError("cost_at_depth: one image's depth map, shape (1, G, h, w)")
    g = net.genotype
    h, w = depth_map.shape[-2:]
    s, c, t = g.scale, g.channels, net.cfg.tile
    plain = count(g, hr_size=(h * s, w * s)).macs
    mids = {i: g.cell_widths(i).ops for i in net.live}  # a pruned genotype's internal op widths
    full_units = sum(op_macs(op, c, c, h, w, mid) for i in net.live for op, mid in zip(g.cells[i - 1].ops, mids[i]))
    units = []
    for pos, i in enumerate(net.live):
        for k, op in enumerate(g.cells[i - 1].ops):
            mid = mids[i][k]
            gi, u = net.unit(pos, k)
            gate = (depth_map[:, gi:gi + 1] - u).clamp(0, 1)
            n = int(active_tiles(gate, t).sum())
            r = net.radii[pos][k]
            if n == 0:
                units.append(0)
            elif _use_tiles(n, t, r, h, w, 1):
                units.append(n * op_macs(op, c, c, t + 2 * r, t + 2 * r, mid) + n * c * t * t)
            else:
                units.append(op_macs(op, c, c, h, w, mid) + c * h * w)
    adapter = net.adapter.macs(h, w)
    dense = plain - full_units
    return DepthCost(macs=dense + adapter + sum(units), dense=dense, adapter=adapter, units=units,
                     full_units=full_units, plain=plain)




