"""What ``tools/summary.py`` reports about a genotype: its structure, exact cost and fvcore's cross-check.

A pruned genotype's widths are reported per cell (``widths``) and ``fusion_width``; its latency is not
predicted (the model refuses it, ``latency_skipped`` says why).

The cross-check builds and traces the net, so it is skipped, saying why, when the estimated memory
(:func:`hdnas.core.cost.forward_memory`) exceeds half of what the machine has available.
"""

from __future__ import annotations

from typing import Any

from hdnas.core import cost, latency
from hdnas.core.config import format_count
from hdnas.core.genotype import Genotype
from hdnas.core.machine import available_memory
from hdnas.core.network import DerivedNet


def fvcore_check(geno: Genotype, lr_size: tuple[int, int], memory_limit: int | None = None) -> dict[str, Any]:
    """``{"macs_fvcore": n}``, or ``{"fvcore_skipped": why}`` when building the net would not fit."""
    need = cost.TRACE_FACTOR * cost.forward_memory(geno, (lr_size[0] * geno.scale, lr_size[1] * geno.scale))
    if memory_limit is None:
        avail = available_memory()
        memory_limit = avail // 2 if avail is not None else None
    if memory_limit is not None and need > memory_limit:
        return {"fvcore_skipped": f"tracing the net at LR {lr_size[1]}×{lr_size[0]} needs about "
                                  f"{need / 2**30:.1f} GiB, over the {memory_limit / 2**30:.1f} GiB allowed"}
    try:
        return {"macs_fvcore": cost.fvcore_macs(DerivedNet(geno), lr_size)}
    except ImportError as exc:  # fvcore is an optional cross-check, not a reason to fail
        return {"fvcore_unavailable": f"{exc} (pip install fvcore)"}


def latency_info(geno: Genotype, progress: bool = True) -> dict[str, Any]:
    """The predicted latency (ms) on the default target (this CPU), with and without the correction;
    ``{"latency_skipped": why}`` for a pruned genotype, which the model refuses."""
    try:
        latency.check_unpruned(geno)
    except latency.LatencyError as exc:
        return {"latency_skipped": str(exc)}
    model = latency.latency_model(latency.space_of(geno), progress=progress)
    return {
        "latency_ms": round(model.predict(geno), 3),
        "latency_ms_sum_of_parts": round(model.predict(geno, corrected=False), 3),
        "latency_target": latency.Target().describe() + ", batch 1, 1280x720 output",
        "latency_table": str(model.path) if model.path else None,
    }


def summarise(geno: Genotype, path: str, fvcore: bool = True, memory_limit: int | None = None,
              latency_ms: bool = True) -> dict[str, Any]:
    """Everything ``summary.py --json`` prints: structure, liveness, exact cost per part, predicted latency,
    provenance. The latency model is measured on first use (under a minute) and cached."""
    live = geno.live_cells()
    report = cost.count(geno, hr_size=cost.HR_SIZE)
    info: dict[str, Any] = {
        "file": path,
        "scale": geno.scale,
        "channels": geno.channels,
        "steps": geno.steps,
        "esa": geno.esa,
        "upsampler": geno.upsampler,
        "cells": [
            {"cell": i, "ops": list(c.ops), "inputs": list(c.inputs), "live": i in live,
             **({"widths": c.widths.to_dict()} if c.widths is not None else {})}
            for i, c in enumerate(geno.cells, start=1)
        ],
        "fusion": list(geno.fusion),
        **({"fusion_width": geno.fusion_width} if geno.fusion_width is not None else {}),
        "live_cells": live,
        "dead_cells": [i for i in range(1, len(geno.cells) + 1) if i not in live],
        "depth": geno.depth(),
        "params": report.params,
        "macs": report.macs,
        "hr_size": list(cost.HR_SIZE),
        "lr_size": list(report.lr_size),
        "macs_not_in_fvcore": report.extras,
        "parts": {k: {"macs": v.macs, "params": v.params} for k, v in report.parts.items()},
        "memory_estimate_bytes": cost.forward_memory(geno, cost.HR_SIZE),
    }
    if fvcore:
        info.update(fvcore_check(geno, report.lr_size, memory_limit))
    if latency_ms:
        info.update(latency_info(geno))
    info["provenance"] = geno.provenance
    return info


def provenance_line(prov: dict[str, Any]) -> str:
    """One readable line of where a genotype came from; absent facts are left out, not printed as None."""
    parts = []
    if prov.get("tool"):
        parts.append(str(prov["tool"]) + (f" {prov['hdnas_version']}" if prov.get("hdnas_version") else ""))
    if prov.get("seed") is not None:
        parts.append(f"seed {prov['seed']}")
    budget = prov.get("budget")
    if budget:
        parts.append(f"budget {format_count(budget)}")
    elif "budget" in prov:
        parts.append("no budget")
    if prov.get("penalty_on"):
        parts.append(f"penalty on {prov['penalty_on']}")
    if prov.get("argmax_multi_adds") and prov.get("budget_swaps"):
        parts.append(f"argmax {format_count(prov['argmax_multi_adds'])}, {len(prov['budget_swaps'])} swap(s)")
    if prov.get("arch_from_step") is not None and prov.get("search_steps"):
        parts.append(f"α, β of step {prov['arch_from_step'] + 1}/{prov['search_steps']} (last in band)")
    if prov.get("val_psnr") is not None:
        bic = prov.get("val_psnr_bicubic")
        parts.append(f"val PSNR-Y {prov['val_psnr']:.2f} dB" + (f" (bicubic {bic:.2f})" if bic is not None else ""))
    if prov.get("date"):
        parts.append(str(prov["date"]))
    if prov.get("data"):
        parts.append("data " + " ".join(map(str, prov["data"])))
    return "   ".join(parts)


def widths_text(widths: dict[str, Any]) -> str:
    """One cell's widths (its JSON form) on one line: ``distill 8/16/12 · last 16 · ESA 8 · op widths –/24/–``."""
    def slash(values: list) -> str:
        return "/".join("–" if v is None else str(v) for v in values)

    parts = [f"distill {slash(widths['distill'])}", f"last {widths['last']}"]
    if widths.get("esa") is not None:
        parts.append(f"ESA {widths['esa']}")
    if any(v is not None for v in widths["ops"]):
        parts.append(f"op widths {slash(widths['ops'])}")
    return " · ".join(parts)
