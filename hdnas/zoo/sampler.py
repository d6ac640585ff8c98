"""Random genotypes of a given Multi-Adds range: the standard NAS sanity baseline.

A search is only worth its cost if it beats architectures drawn at random *at the same cost*.
:func:`random_genotypes` first tries plain rejection sampling (draw with
:func:`random_genotype`, keep those in range): its samples are exactly uniform over the
space's genotypes in range. When the range holds too small a share of the space for that to finish
within ``rejection_tries`` draws, the rest come from a guided sampler: draw the network level
(inputs, fusion) as before, then the ops slot by slot, each uniformly among those that still let
the total land in range. Guided samples are valid and in range but not uniform; each genotype's
provenance says which sampler produced it.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from typing import Sequence

from hdnas.core.config import format_count
from hdnas.core.cost import HR_SIZE, cost_bounds, cost_table
from hdnas.core.errors import ConfigError
from hdnas.core.genotype import CellGenotype, Genotype, random_genotype
from hdnas.core.space import SearchSpace

__all__ = ["random_genotype", "random_genotypes", "genotype_macs_fast", "SamplerError"]


class SamplerError(ConfigError):
    """The Multi-Adds range cannot be reached, or no sample was found within the allowed tries."""


@dataclass(frozen=True)
class _Table:
    op_macs: dict[str, int]
    cell_fixed: int
    combine: tuple[int, ...]
    backbone: int


def _table(space: SearchSpace, hr_size: tuple[int, int]) -> _Table:
    t = cost_table(space, tuple(hr_size))
    return _Table(dict(zip(space.ops, t.op_costs_list)), t.cell_fixed, t.combine, t.backbone)


def genotype_macs_fast(genotype: Genotype, space: SearchSpace, hr_size: tuple[int, int] = HR_SIZE) -> int:
    """Multi-Adds of a genotype of ``space`` from the space's cost table (≈30× faster than ``count``; equal)."""
    return _fast(genotype, _table(space, hr_size))


def _fast(genotype: Genotype, t: _Table) -> int:
    total = t.backbone
    for i in genotype.live_cells():
        cell = genotype.cells[i - 1]
        total += t.cell_fixed + t.combine[i - 1] + sum(t.op_macs[o] for o in cell.ops)
    return total


def _key(g: Genotype) -> str:
    """Identity of the *built* net: dead cells are not built, so their ops and inputs do not count."""
    live = g.live_cells()
    return json.dumps([[i, g.cells[i - 1].ops, g.cells[i - 1].inputs] for i in live] + [g.fusion])


def _guided(space: SearchSpace, rng: random.Random, t: _Table, lo: float, hi: float) -> Genotype | None:
    """One guided draw, or None at a dead end (the caller retries)."""
    skeleton = random_genotype(space, rng)
    live = skeleton.live_cells()
    base = t.backbone + sum(t.cell_fixed + t.combine[i - 1] for i in live)
    costs = {o: t.op_macs[o] for o in space.ops}
    c_min, c_max = min(costs.values()), max(costs.values())
    # slots: (cell index or None for shared α, step, weight = how many live cells it is paid for)
    if space.shared_alpha:
        slots = [(None, k, len(live)) for k in range(space.steps)]
    else:
        slots = [(i, k, 1) for i in live for k in range(space.steps)]
    rng.shuffle(slots)
    chosen: dict[tuple, str] = {}
    partial = base
    rest_w = sum(wt for _, _, wt in slots)
    for cell, step, wt in slots:
        rest_w -= wt
        allowed = [
            o for o in space.ops if partial + wt * costs[o] + rest_w * c_min <= hi and partial + wt * costs[o] + rest_w * c_max >= lo
        ]
        if not allowed:
            return None
        op = rng.choice(allowed)
        chosen[(cell, step)] = op
        partial += wt * costs[op]
    cells = []
    for i, cell in enumerate(skeleton.cells, start=1):
        ops = list(cell.ops)
        for k in range(space.steps):
            key = (None, k) if space.shared_alpha else (i, k)
            if key in chosen:
                ops[k] = chosen[key]
        cells.append(CellGenotype(ops=ops, inputs=list(cell.inputs)))
    if space.shared_alpha:  # dead cells share the live cells' ops too
        for c in cells:
            c.ops = [chosen[(None, k)] for k in range(space.steps)]
    return dataclasses.replace(skeleton, cells=cells, provenance={})


def random_genotypes(
    space: SearchSpace,
    n: int,
    rng: random.Random | int | None = None,
    macs_range: tuple[float, float] | None = None,
    hr_size: tuple[int, int] = HR_SIZE,
    *,
    rejection_tries: int = 5000,
    max_tries: int = 20000,
    distinct: bool = True,
    exclude: Sequence[Genotype] = (),
) -> list[Genotype]:
    """``n`` valid genotypes of ``space`` whose exact Multi-Adds at ``hr_size`` (H, W) lie in ``macs_range``.

    ``exclude``: nets none of the samples may equal (as built: dead cells aside), e.g. the searched
    net a random baseline is compared with.

    ``macs_range`` None: any cost (plain random genotypes). Raises :class:`SamplerError` when the
    range lies outside what the space can reach (:func:`hdnas.core.cost.cost_bounds`), or when fewer
    than ``n`` (distinct) genotypes were found after ``rejection_tries`` rejection draws plus
    ``max_tries`` guided draws. Deterministic for a given ``rng`` seed.
    """
    space.validate()
    if n < 1:
        raise SamplerError(f"random_genotypes: n must be at least 1, got {n}")
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    bmin, bmax = cost_bounds(space, tuple(hr_size))
    lo, hi = (bmin, bmax) if macs_range is None else (float(macs_range[0]), float(macs_range[1]))
    if not 0 <= lo <= hi:
        raise SamplerError(f"random_genotypes: macs_range must be (lo, hi) with 0 <= lo <= hi, got {macs_range}")
    where = f"space '{space.name}' at x{space.scale} (C={space.channels}, {space.cells} cells)"
    if hi < bmin or lo > bmax:
        raise SamplerError(
            f"random_genotypes: Multi-Adds range {format_count(lo)}..{format_count(hi)} is unreachable for {where}: "
            f"its genotypes cost {format_count(bmin)}..{format_count(bmax)} at {hr_size[1]}x{hr_size[0]} output"
        )
    t = _table(space, hr_size)
    found: list[Genotype] = []
    banned = {_key(g) for g in exclude}
    seen: set[str] = set()

    def keep(g: Genotype, sampler: str) -> None:
        macs = _fast(g, t)
        if not lo <= macs <= hi or (distinct and _key(g) in seen) or _key(g) in banned:
            return
        seen.add(_key(g))
        g.provenance = {
            "tool": "hdnas.zoo.random_genotypes",
            "sampler": sampler,
            "macs_range": [int(lo), int(hi)],
            "multi_adds": macs,
            "note": "random architecture (NAS baseline), not a search result",
        }
        found.append(g)

    for _ in range(rejection_tries):
        if len(found) == n:
            break
        keep(random_genotype(space, rng), "rejection")
    tries = 0
    while len(found) < n and tries < max_tries:
        tries += 1
        g = _guided(space, rng, t, lo, hi)
        if g is not None:
            keep(g, "guided")
    if len(found) < n:
        raise SamplerError(
            f"random_genotypes: found only {len(found)} of {n} {'distinct ' if distinct else ''}genotypes with "
            f"Multi-Adds in {format_count(lo)}..{format_count(hi)} for {where} after {rejection_tries} rejection "
            f"and {max_tries} guided draws; widen the range (reachable: {format_count(bmin)}..{format_count(bmax)})"
        )
    return found  # the table-based cost equals count(): tests/test_zoo.py checks it
