"""Exact Multi-Adds and parameters of derived nets, and the expected (differentiable) cost of a supernet.

What one Multi-Add is here
--------------------------
One multiply-accumulate, counted at batch 1 for an HR output of 1280×720 (LR = 720//s × 1280//s:
360×640 at ×2, 240×426 at ×3, 180×320 at ×4). Counted:

* every convolution: ``c_out · c_in/groups · k² · H_out·W_out`` (``hdnas.core.ops.conv_macs``; biases
  are not counted) — searched ops by the registry's formulas, every fixed conv (stem, distillation
  1×1s and 3×3, cell fusion 1×1, ESA's convs at their real reduced sizes, input-combination 1×1s,
  fusion, body conv, upsampler conv, and the fixed 5×5 grouped conv of the bicubic image skip when
  the upsampler has one: ``3·s²·25·H·W``) by the same formula;
* ESA's bilinear upsampling: 4 per output value (each is a 4-tap weighted sum) — fvcore's rule too;
* ESA's gate ``x · sigmoid(mask)``: 1 per element (C·H·W per live cell). This is the one genuine
  feature-map multiplication outside the convs; fvcore skips it (``aten::mul``).

Not counted: additions (residuals, mean shift, biases, mixing), activations (LeakyReLU, ReLU,
sigmoid), max pooling and pixel shuffle (comparisons / data movement, no multiplications).

Relation to fvcore: fvcore counts exactly the convolutions and the bilinear upsampling above, so
``count(g).macs == fvcore_macs(DerivedNet(g)) + count(g).extras`` with
``extras = (live cells with ESA) · C · H · W`` — the ESA gates. This identity is tested.

Pruned genotypes (per-layer widths, :mod:`hdnas.core.genotype`) are counted at their widths: the
distillation convs, the last 3×3, ESA's inner convs, the ops' internal widths and the network fusion,
by the same formulas; the identity with fvcore holds for them too.

The search penalty :func:`expected_macs` uses the same numbers, weighted by α-probabilities and by
a β-dependent probability that each cell is live; at indicator probabilities it equals
:func:`count` of the derived net exactly.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from hdnas.core.blocks import esa_sizes
from hdnas.core.config import format_count
from hdnas.core.genotype import CellWidths, Genotype
from hdnas.core.ops import conv_macs, conv_params, get_op, op_macs, op_params
from hdnas.core.space import ArchProbs, SearchSpace

HR_SIZE: tuple[int, int] = (720, 1280)  # (height, width) of the reference HR output


def lr_size_for(scale: int, hr_size: tuple[int, int] = HR_SIZE) -> tuple[int, int]:
    return hr_size[0] // scale, hr_size[1] // scale


@dataclass
class PartCost:
    macs: int = 0
    params: int = 0

    def add(self, macs: int, params: int = 0) -> None:
        self.macs += macs
        self.params += params


@dataclass
class CostReport:
    """Exact cost of a derived net. ``parts``: stem, cell<i> (live cells), fusion, body, upsampler."""

    macs: int
    params: int
    lr_size: tuple[int, int]
    parts: dict[str, PartCost] = field(default_factory=dict)
    extras: int = 0  # Multi-Adds counted here that fvcore skips (the ESA gates)

    def summary(self) -> str:
        return f"{format_count(self.macs)} Multi-Adds, {format_count(self.params)} params at LR {self.lr_size[1]}×{self.lr_size[0]}"


# -- fixed parts ----------------------------------------------------------------------------------
def esa_cost(c: int, h: int, w: int, f: int | None = None) -> tuple[int, int, int]:
    """(Multi-Adds as fvcore counts them, params, extra Multi-Adds of the gate) of one ESA of inner width
    ``f`` (default C/4)."""
    f = c // 4 if f is None else f
    (h1, w1), _, (hp, wp) = esa_sizes(h, w)
    macs = (
        conv_macs(c, f, 1, h, w)  # reduce
        + conv_macs(f, f, 3, h1, w1)  # strided conv, no padding
        + 3 * conv_macs(f, f, 3, hp, wp)  # conv_max, conv3, conv3_ on the pooled map
        + 4 * f * h * w  # bilinear upsampling back to h×w
        + conv_macs(f, f, 1, h, w)  # conv_f
        + conv_macs(f, c, 1, h, w)  # expand
    )
    params = conv_params(c, f, 1) + 4 * conv_params(f, f, 3) + conv_params(f, f, 1) + conv_params(f, c, 1)
    return macs, params, c * h * w


def cell_shell_cost(c: int, steps: int, esa: bool, h: int, w: int, widths: CellWidths | None = None
                    ) -> tuple[int, int, int]:
    """(Multi-Adds, params, extras) of one cell without its searched ops and input combination;
    ``widths``: a pruned cell's (its ``ops`` entries are not read here), default C/2, C/2, C/4."""
    distill = [c // 2] * steps if widths is None else widths.distill
    last = c // 2 if widths is None else widths.last
    cat = sum(distill) + last
    macs = sum(conv_macs(c, d, 1, h, w) for d in distill) + conv_macs(c, last, 3, h, w) + conv_macs(cat, c, 1, h, w)
    params = sum(conv_params(c, d, 1) for d in distill) + conv_params(c, last, 3) + conv_params(cat, c, 1)
    extras = 0
    if esa:
        e_macs, e_params, extras = esa_cost(c, h, w, None if widths is None else widths.esa)
        macs += e_macs + extras
        params += e_params
    return macs, params, extras


def combine_cost(n_inputs: int, c: int, h: int, w: int) -> tuple[int, int]:
    """The 1×1 conv over a cell's concatenated inputs (only when it has more than one)."""
    if n_inputs <= 1:
        return 0, 0
    return conv_macs(n_inputs * c, c, 1, h, w), conv_params(n_inputs * c, c, 1)


def backbone_costs(c: int, scale: int, fused: int, h: int, w: int, upsampler: str = "pixelshuffle",
                   fusion_width: int | None = None) -> dict[str, PartCost]:
    """Stem, fusion (``fused`` cells -> ``fusion_width``, default C), body conv and upsampler conv (+ the
    fixed bicubic-skip conv)."""
    s2 = 3 * scale * scale
    skip = conv_macs(3, s2, 5, h, w, groups=3) if upsampler == "pixelshuffle_bicubic" else 0
    f = c if fusion_width is None else fusion_width
    return {
        "stem": PartCost(conv_macs(3, c, 3, h, w), conv_params(3, c, 3)),
        "fusion": PartCost(conv_macs(fused * c, f, 1, h, w), conv_params(fused * c, f, 1)),
        "body": PartCost(conv_macs(f, c, 3, h, w), conv_params(f, c, 3)),
        "upsampler": PartCost(conv_macs(c, s2, 3, h, w) + skip, conv_params(c, s2, 3)),
    }


# -- derived nets ---------------------------------------------------------------------------------
def count(genotype: Genotype, hr_size: tuple[int, int] = HR_SIZE) -> CostReport:
    """Exact Multi-Adds (at LR = hr_size // scale) and parameters of ``DerivedNet(genotype)``."""
    h, w = lr_size_for(genotype.scale, hr_size)
    c = genotype.channels
    parts = backbone_costs(c, genotype.scale, len(genotype.fusion), h, w, genotype.upsampler, genotype.fusion_width)
    extras = 0
    for i in genotype.live_cells():
        cell = genotype.cells[i - 1]
        widths = genotype.cell_widths(i)
        shell_macs, shell_params, gate = cell_shell_cost(c, len(cell.ops), genotype.esa, h, w, widths)
        part = PartCost(shell_macs, shell_params)
        extras += gate
        part.add(*combine_cost(len(cell.inputs), c, h, w))
        for name, mid in zip(cell.ops, widths.ops):
            part.add(op_macs(name, c, c, h, w, mid), op_params(name, c, c, mid, genotype.op_bias))
        parts[f"cell{i}"] = part
    order = ["stem"] + [k for k in parts if k.startswith("cell")] + ["fusion", "body", "upsampler"]
    parts = {k: parts[k] for k in order}
    return CostReport(
        macs=sum(p.macs for p in parts.values()),
        params=sum(p.params for p in parts.values()),
        lr_size=(h, w),
        parts=parts,
        extras=extras,
    )


#: Feature maps (C×H×W each) a batch-1 forward holds at its peak, beyond one per cell and step: the
#: stem, the cell's input and distilled parts, ESA and fusion buffers. Measured: a no-grad forward of
#: a 4-cell, 3-step net peaked at about 14 maps over the process's baseline.
_EXTRA_MAPS = 8
#: fvcore traces the net; its peak was up to twice a plain forward's in the same measurement.
TRACE_FACTOR = 2


def forward_memory(genotype: Genotype, hr_size: tuple[int, int] = HR_SIZE) -> int:
    """Upper estimate of the bytes a batch-1 float32 forward of ``DerivedNet(genotype)`` needs at its peak.

    Weights plus the live feature maps at LR size, so a tool can refuse (or skip) building a net that
    will not fit before anything is allocated.
    """
    h, w = lr_size_for(genotype.scale, hr_size)
    maps = len(genotype.cells) + genotype.steps + _EXTRA_MAPS
    tail = 2 * 3 * genotype.scale**2  # upsampler output and the bicubic skip, in channels
    return 4 * (count(genotype, hr_size).params + (maps * genotype.channels + tail) * h * w)


def fvcore_macs(module: nn.Module, lr_size: tuple[int, int], in_channels: int = 3) -> int:
    """fvcore's count (one flop = one multiply-add) of ``module`` on one ``in_channels``×H×W input.

    fvcore's warnings about the ops it skips (add, mul, pixel shuffle, max pool, activations) and
    the tracer's are silenced: what it skips is documented above and accounted for by ``extras``.
    """
    from fvcore.nn import FlopCountAnalysis

    p = next(module.parameters())
    x = torch.zeros(1, in_channels, *lr_size, dtype=p.dtype, device=p.device)
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(module, x)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            return int(analysis.total())
    finally:
        module.train(was_training)


# -- the search penalty ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CostTable:
    """Per-space constants of a penalty, computed once (the penalty then costs a few tiny ops).

    The same shape serves every additive cost: Multi-Adds (:func:`cost_table`) and measured
    latency (:meth:`hdnas.core.latency.LatencyModel.table`, in ms). ``unit`` names what the numbers are.
    """

    op_costs: torch.Tensor  # (|ops|,) float64, in the space's op order
    op_costs_list: tuple[float, ...]
    cell_fixed: float  # shell (distill, 3×3, 1×1 fuse, ESA incl. gate) of one cell
    combine: tuple[float, ...]  # input-combination conv per cell 1..N (0 where the cell keeps one input)
    backbone: float  # stem + fusion (m cells) + body + upsampler
    unit: str = "Multi-Adds"

    @classmethod
    def of(cls, space: SearchSpace, op_costs, cell_fixed, combine_by_inputs, backbone, unit: str) -> "CostTable":
        """From per-op costs (space order), the shell, a function n_inputs -> combine cost, and the backbone."""
        op_costs = tuple(op_costs)
        return cls(
            op_costs=torch.tensor(op_costs, dtype=torch.float64),
            op_costs_list=op_costs,
            cell_fixed=cell_fixed,
            combine=tuple(combine_by_inputs(space.inputs_kept(i)) for i in range(1, space.cells + 1)),
            backbone=backbone,
            unit=unit,
        )

    def total(self, genotype: Genotype, ops: list[str]) -> float:
        """The table's sum for a derived genotype whose ops are among ``ops`` (the space's op order)."""
        by_name = dict(zip(ops, self.op_costs_list))
        total = self.backbone
        for i in genotype.live_cells():
            cell = genotype.cells[i - 1]
            total += self.cell_fixed + self.combine[i - 1] + sum(by_name[o] for o in cell.ops)
        return total


def _space_key(space: SearchSpace) -> tuple:
    return (
        space.scale,
        space.channels,
        space.cells,
        space.steps,
        tuple(space.ops),
        space.esa,
        space.cell_inputs,
        space.fusion_cells,
        space.upsampler,
        space.stem_input,
    )


@functools.lru_cache(maxsize=64)
def _cost_table(key: tuple, hr_size: tuple[int, int]) -> CostTable:
    scale, c, n, steps, ops, esa, k, m, up, stem_input = key
    h, w = lr_size_for(scale, hr_size)
    space = SearchSpace(scale=scale, channels=c, cells=n, steps=steps, ops=list(ops), esa=esa, cell_inputs=k, fusion_cells=m,
                        stem_input=stem_input)
    return CostTable.of(
        space,
        (get_op(o).macs(c, c, h, w) for o in ops),
        cell_shell_cost(c, steps, esa, h, w)[0],
        lambda n_in: combine_cost(n_in, c, h, w)[0],
        sum(p.macs for p in backbone_costs(c, scale, m, h, w, up).values()),
        "Multi-Adds",
    )


def cost_table(space: SearchSpace, hr_size: tuple[int, int] = HR_SIZE) -> CostTable:
    return _cost_table(_space_key(space), tuple(hr_size))


def _as_tensor(x, device: torch.device | None = None) -> torch.Tensor:
    """float64 view of probabilities (tensor, numpy or nested lists), keeping the autograd graph."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float64)
    return torch.as_tensor(x, dtype=torch.float64, device=device)


def expected_cost(space: SearchSpace, probs: ArchProbs, table: CostTable) -> torch.Tensor:
    """E[cost] of the derived net under α/β probabilities for any additive table (float64 scalar, differentiable).

    Per cell: live_i · (Σ_k Σ_o α_{i,k,o}·cost_o + shell + input combination). Liveness:
    p_in(c←j) = min(1, k_c·β_c[j]), p_fus(j) = min(1, m·β_f[j]),
    live_j = 1 − (1 − p_fus(j)) · Π_{c>j} (1 − p_in(c←j)·live_c), from the last cell back.
    At indicator probabilities (1 = chosen, 0 = not) this is ``table.total(genotype)`` exactly.
    """
    alpha = _as_tensor(probs.alpha)
    device = alpha.device
    op_costs = table.op_costs.to(device)
    step_cost = (alpha * op_costs).sum(dim=(-1, -2))  # (N or 1,)
    n, m = space.cells, space.fusion_cells
    fusion = _as_tensor(probs.fusion, device)
    p_fus = torch.clamp(m * fusion, max=1.0)
    inputs = [_as_tensor(p, device) for p in probs.inputs]
    live: list[torch.Tensor | None] = [None] * (n + 1)
    for j in range(n, 0, -1):
        dead = 1.0 - p_fus[j - 1]
        for c in range(j + 1, n + 1):
            p_in = torch.clamp(space.inputs_kept(c) * inputs[c - 1][j], max=1.0)
            dead = dead * (1.0 - p_in * live[c])
        live[j] = 1.0 - dead
    total = torch.tensor(float(table.backbone), dtype=torch.float64, device=device)
    for i in range(1, n + 1):
        ops = step_cost[0 if len(step_cost) == 1 else i - 1]
        total = total + live[i] * (ops + float(table.cell_fixed + table.combine[i - 1]))
    return total


def expected_macs(space: SearchSpace, probs: ArchProbs, hr_size: tuple[int, int] = HR_SIZE) -> torch.Tensor:
    """E[Multi-Adds] of the derived net under α/β probabilities (:func:`expected_cost` of the Multi-Adds
    table); at indicator probabilities it is ``count(genotype).macs`` exactly."""
    return expected_cost(space, probs, cost_table(space, hr_size))


def indicator_probs(genotype: Genotype, space: SearchSpace) -> ArchProbs:
    """The probabilities of a genotype's own choices: one-hot α, 1/k on each of a cell's k chosen
    inputs and 1/m on each of the m fusion cells (distributions, as softmax(β) is; the liveness terms
    k·p and m·p are then exactly 1 for the chosen and 0 for the others)."""
    n_rows = 1 if space.shared_alpha else space.cells
    alpha = torch.zeros(n_rows, space.steps, len(space.ops), dtype=torch.float64)
    for r in range(n_rows):
        for k, op in enumerate(genotype.cells[r].ops):
            alpha[r, k, space.ops.index(op)] = 1.0
    inputs = []
    for i, cell in enumerate(genotype.cells, start=1):
        p = torch.zeros(i, dtype=torch.float64)
        p[cell.inputs] = 1.0 / space.inputs_kept(i)
        inputs.append(p)
    fusion = torch.zeros(space.cells, dtype=torch.float64)
    fusion[[j - 1 for j in genotype.fusion]] = 1.0 / space.fusion_cells
    return ArchProbs(alpha=alpha, inputs=inputs, fusion=fusion)


def table_bounds(space: SearchSpace, t: CostTable) -> tuple[float, float]:
    """The cheapest and the dearest derivable nets under an additive table, to check a budget before a search.

    Cheapest: the cheapest op at every step and only cells 1..m live (a cell's per-cell cost never
    falls with its index, and each live cell needs k_i − 1 live cells below it besides the stem).
    Dearest: the dearest op everywhere and every cell live (a chain i−1 -> i keeps all alive).
    """
    lo, hi = min(t.op_costs_list), max(t.op_costs_list)
    m = space.fusion_cells
    per_cell = [t.cell_fixed + t.combine[i] for i in range(space.cells)]
    low = t.backbone + sum(per_cell[:m]) + m * space.steps * lo
    high = t.backbone + sum(per_cell) + space.cells * space.steps * hi
    return low, high


def cost_bounds(space: SearchSpace, hr_size: tuple[int, int] = HR_SIZE) -> tuple[int, int]:
    """Multi-Adds of the cheapest and the dearest derivable nets (:func:`table_bounds`)."""
    lo, hi = table_bounds(space, cost_table(space, hr_size))
    return int(lo), int(hi)
