"""Supernet parameters -> :class:`~hdnas.core.genotype.Genotype`, and a random-genotype sampler.

Derivation: argmax α per refinement step (with shared α every cell gets the same ops), the top-k
inputs of every cell by β among its candidates (k = ``space.cell_inputs``, at most their number),
the top-m fusion cells by β (m = ``space.fusion_cells``). Ties go to the lowest index, so a
freshly initialised or exactly symmetric supernet derives reproducibly. Chosen inputs and fusion
cells are listed in ascending order. Provenance is left empty: the search fills it in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from hdnas.core.cost import HR_SIZE, count
from hdnas.core.genotype import CellGenotype, Genotype, space_backbone
from hdnas.core.space import ArchProbs, SearchSpace


def _values(x) -> list[float]:
    if isinstance(x, torch.Tensor):
        return [float(v) for v in x.detach().cpu().reshape(-1).tolist()]
    return [float(v) for v in x]


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the lowest index among ties."""
    vals = _values(values)
    best = 0
    for i, v in enumerate(vals):
        if v > vals[best]:
            best = i
    return best


def top_k(values: Sequence[float], k: int) -> list[int]:
    """Indices of the k largest values (ties -> lower index), returned in ascending order."""
    vals = _values(values)
    order = sorted(range(len(vals)), key=lambda i: (-vals[i], i))
    return sorted(order[:k])


def _probs_of(source) -> ArchProbs:
    if isinstance(source, ArchProbs):
        return source
    arch_probs = getattr(source, "arch_probs", None)
    if callable(arch_probs):
        with torch.no_grad():
            return arch_probs()
    raise TypeError(f"derive: expected a SuperNet or ArchProbs, got {type(source).__name__}")


def derive(supernet_or_probs, space: SearchSpace) -> Genotype:
    """The discrete architecture that the supernet's α and β favour."""
    space.validate()
    probs = _probs_of(supernet_or_probs)
    alpha = probs.alpha
    n_alpha = len(alpha)
    if n_alpha not in (1, space.cells):
        raise ValueError(f"derive: α has {n_alpha} cell rows, expected 1 (shared) or {space.cells}")
    cells = []
    for i in range(1, space.cells + 1):
        rows = alpha[0 if n_alpha == 1 else i - 1]
        ops = [space.ops[argmax(rows[k])] for k in range(space.steps)]
        cands = space.input_candidates(i)
        p = _values(probs.inputs[i - 1])
        inputs = [cands[j] for j in top_k([p[c] for c in cands], space.inputs_kept(i))]
        cells.append(CellGenotype(ops=ops, inputs=inputs))
    fusion = [j + 1 for j in top_k(probs.fusion, space.fusion_cells)]
    geno = Genotype(cells=cells, fusion=fusion, **space_backbone(space))
    geno.validate()
    return geno




def in_band(cost: float, budget: float, tolerance: float) -> bool:
    """``cost`` within ±``tolerance`` (a fraction) of ``budget``: what "meets the budget" means here."""
    return (1 - tolerance) * budget <= cost <= (1 + tolerance) * budget


@dataclass
class BudgetDerivation:
    genotype: Genotype
    argmax_macs: int  # exact Multi-Adds of the plain argmax derivation
    macs: int  # exact Multi-Adds of the returned genotype
    swaps: list[str]  # op changes made to land in the budget band, in order


def derive_within_budget(
    supernet_or_probs,
    space: SearchSpace,
    budget: float,
    tolerance: float = 0.10,
    hr_size: tuple[int, int] = HR_SIZE,
    cost: Callable[[Genotype], float] | None = None,
) -> BudgetDerivation:
    """Argmax derivation, then the fewest, least regretted op swaps that bring the exact cost into the band.

    The penalty steers the *expected* cost to the budget, but argmax over soft α can land off it
    (the expected cost averages ops the argmax drops). This projection changes one op at a time —
    the swap with the smallest loss in log-probability per unit of log-cost brought back toward the
    budget — until the exact Multi-Adds are within ``tolerance`` of ``budget``, or no swap helps.
    Shared α changes a step in every cell at once. Network-level choices (β) are kept.
    ``cost``: what the budget is in (default: exact Multi-Adds at ``hr_size``; a latency model's
    ``predict`` for a latency budget); the result's ``argmax_macs``/``macs`` are then in its unit.
    """
    if cost is None:
        cost = lambda g: count(g, hr_size).macs  # noqa: E731
    probs = _probs_of(supernet_or_probs)
    geno = derive(probs, space)
    first = cost(geno)
    alpha = probs.alpha
    shared = len(alpha) == 1
    swaps: list[str] = []

    def logp(row_cell: int, step: int, op: str) -> float:
        row = alpha[0 if shared else row_cell - 1][step]
        return math.log(max(float(row[space.ops.index(op)]), 1e-12))

    macs = first
    for _ in range(space.cells * space.steps * len(space.ops)):
        if in_band(macs, budget, tolerance):
            break
        gap = math.log(macs / budget)
        best = None
        live = geno.live_cells()
        targets = [[1]] if shared else [[i] for i in live]
        for group in targets:
            cells = live if shared else group
            for k in range(space.steps):
                cur = geno.cells[cells[0] - 1].ops[k]
                for op in space.ops:
                    if op == cur:
                        continue
                    trial = Genotype(**{**geno.__dict__, "cells": [CellGenotype(list(c.ops), list(c.inputs)) for c in geno.cells]})
                    for i in (range(1, space.cells + 1) if shared else cells):
                        trial.cells[i - 1].ops[k] = op
                    new = cost(trial)
                    gain = abs(gap) - abs(math.log(new / budget))
                    if gain <= 1e-12:
                        continue
                    regret = logp(cells[0], k, cur) - logp(cells[0], k, op)
                    score = max(regret, 0.0) / gain
                    if best is None or score < best[0]:
                        best = (score, trial, new, f"cell{'s' if shared else ''} {cells if shared else cells[0]} step {k + 1}: {cur} -> {op}")
        if best is None:
            break
        _, geno, macs, note = best
        swaps.append(note)
    geno.validate()
    return BudgetDerivation(geno, first, macs, swaps)
