"""Suite ``search``: how fast the search runs, through the searcher's own code.

ms per weight step and per first- / second-order architecture step, and peak RSS, through
:class:`hdnas.search.engine.Searcher` (its weight step and its real
:class:`hdnas.search.architect.Architect`), one fresh subprocess per configuration so that peak RSS
(``ru_maxrss`` at its end) belongs to that configuration alone. :func:`compare_supernet_variants`
is the profiling aid behind ``tools/profile_supernet.py``: the supernet alone, its fused / plain
mixed ops and NCHW / channels_last layouts interleaved in one process. With ``reference`` (a local
checkout of the reference DLSR code) the suite also times it beside ``dlsr.yaml``, like for like
(:mod:`hdnas.bench.dlsr_reference`); without one that comparison is skipped.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

from hdnas.bench.common import REPO_ROOT, BenchmarkError, Log, format_table, print_line, run_worker
from hdnas.core import cost
from hdnas.core.cost import HR_SIZE
from hdnas.core.space import load_space
from hdnas.core.timing import Timing, current_rss_mib, dense_conv_gmacs, peak_rss_mib, time_fn
from hdnas.search.engine import Searcher, load_search_config
from hdnas.search.supernet import SuperNet


@dataclass
class SearchBenchConfig:
    """Defaults: the figures to publish (both spaces, ×2 and ×4, batch 8, LR patch 32, both orders,
    fused and plain mixed ops)."""

    spaces: list[str] = field(default_factory=lambda: ["default", "dlsr"])
    scales: list[int] = field(default_factory=lambda: [2, 4])
    batch: int = 8
    patch: int = 32
    orders: list[int] = field(default_factory=lambda: [1, 2])
    mixed: list[str] = field(default_factory=lambda: ["fused", "plain"])
    warmup: int = 1
    repeats: int = 5
    threads: int = 0  # 0: torch's default in the worker
    timeout_s: float = 570.0  # per configuration: one worker never outlives a 10-minute command
    matrix: bool = True  # the configurations above; False: only the reference comparison
    reference: str | None = None  # a checkout of DawnHH/DLSR-PyTorch: time it beside dlsr.yaml at ×2
    reference_rounds: int = 3  # workers per side, alternating

    @classmethod
    def quick(cls) -> "SearchBenchConfig":
        # one thread: on a shared 2-core machine two OpenMP threads on tiny tensors mostly spin
        return cls(spaces=["default"], scales=[4], batch=2, patch=16, warmup=1, repeats=2, threads=1, timeout_s=300.0)


def resolve_space_path(name: str) -> Path:
    """``default`` / ``dlsr`` -> ``search_spaces/<name>.yaml``; a path is taken as given."""
    for cand in (Path(name), REPO_ROOT / name, REPO_ROOT / "search_spaces" / f"{name}.yaml"):
        if cand.is_file():
            return cand.resolve()
    raise BenchmarkError(f"search space '{name}' not found (a YAML path, or a name under {REPO_ROOT / 'search_spaces'})")


def search_case(
    space: str, scale: int, batch: int, patch: int, order: int, mixed: str, warmup: int, repeats: int,
    threads: int = 0, seed: int = 0, arch_loss: str = "val", budget: bool = True, raw: bool = False,
) -> dict[str, Any]:
    """Time one search configuration in this process: the searcher's weight step and architect step.

    Batches are drawn once beforehand (data sampling is timed apart, ``data_ms``), then each
    iteration runs as the search loop does: architecture step, then weight step. A budget at the
    geometric middle of the space's reachable Multi-Adds keeps the penalty term in the arch step
    (``budget=False``: none). ``arch_loss``: ``search.arch_loss``. ``raw``: also every timed step's
    seconds (``weight_s``, ``arch_s``). Meant for a fresh process (:func:`run_worker`): peak RSS is the
    process's.
    """
    if mixed not in ("fused", "plain"):
        raise BenchmarkError(f"mixed: expected 'fused' or 'plain', got {mixed!r}")
    path = resolve_space_path(space)
    cfg = load_search_config(space=path, overrides={
        "runs_dir": os.path.join(tempfile.gettempdir(), "hdnas-bench-runs"), "seed": seed, "threads": threads, "device": "cpu",
        "space": {"scale": scale}, "data": {"batch": batch, "patch": patch},
        "search": {"order": order, "fused": mixed == "fused", "epochs": 2, "warmup_epochs": 0, "arch_loss": arch_loss},
    })
    if budget:
        lo, hi = cost.cost_bounds(cfg.space, HR_SIZE)
        cfg.search.budget = str(int(math.sqrt(lo * hi)))
    searcher = Searcher(cfg, progress=False, log=False)  # writes nothing until run(), which is not called
    steps = warmup + repeats
    draw = searcher._batch
    t_data = []
    cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for step in range(steps):
        for half in ("w", "a"):
            t0 = time.perf_counter()
            cache[(step, half)] = draw(step, half)
            t_data.append(time.perf_counter() - t0)
    searcher._batch = lambda step, half: cache[(step, half)]  # the timed steps see pre-drawn batches
    setup_rss = current_rss_mib()
    searcher.model.train()
    w_times, a_times = [], []
    for step in range(steps):
        t0 = time.perf_counter()
        res = searcher.architect.step(cache[(step, "w")], cache[(step, "a")])
        t1 = time.perf_counter()
        w_loss = searcher._weight_step(step)
        t2 = time.perf_counter()
        if not (math.isfinite(res.loss) and math.isfinite(w_loss)):
            raise BenchmarkError(f"non-finite loss at step {step}")
        if step >= warmup:
            a_times.append(t1 - t0)
            w_times.append(t2 - t1)
    weight, arch = Timing(w_times), Timing(a_times)
    return ({"weight_s": w_times, "arch_s": a_times} if raw else {}) | {
        "space": cfg.space.name,
        "space_file": str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path),
        "scale": scale,
        "channels": cfg.space.channels,
        "cells": cfg.space.cells,
        "steps": cfg.space.steps,
        "ops": len(cfg.space.ops),
        "batch": batch,
        "patch": patch,
        "order": order,
        "mixed": mixed,
        "threads": torch.get_num_threads(),
        "weight_ms": weight.as_ms(),
        "arch_ms": arch.as_ms(),
        "iteration_ms": round((weight.median + arch.median) * 1e3, 3),
        "data_ms": round(statistics.median(t_data) * 1e3, 3),
        "setup_rss_mib": None if setup_rss is None else round(setup_rss, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "weight_params": sum(p.numel() for p in searcher.model.weight_parameters()),
        "arch_params": sum(p.numel() for p in searcher.model.arch_parameters()),
        "budget_macs": None if searcher.budget is None else int(searcher.budget),
        "arch_loss": arch_loss,
    }


def run_search_suite(cfg: SearchBenchConfig, log: Log = print_line) -> list[dict[str, Any]]:
    """One worker per (space, scale, mixed op, order); a failed configuration is a record with ``error``.
    (The reference comparison, :func:`hdnas.bench.dlsr_reference.run_reference_comparison`, follows.)"""
    records = []
    for space in (cfg.spaces if cfg.matrix else []):
        path = resolve_space_path(space)
        for scale in cfg.scales:
            for mixed in cfg.mixed:
                for order in cfg.orders:
                    spec = dict(space=str(path), scale=scale, batch=cfg.batch, patch=cfg.patch, order=order, mixed=mixed,
                                warmup=cfg.warmup, repeats=cfg.repeats, threads=cfg.threads)
                    key = f"{path.stem}|x{scale}|b{cfg.batch}|p{cfg.patch}|{mixed}|order{order}"
                    log(f"[search] {key} ...")
                    out = run_worker("hdnas.bench.search:search_case", spec, cfg.timeout_s)
                    rec = {"key": key, "space": path.stem, "scale": scale, "batch": cfg.batch, "patch": cfg.patch,
                           "mixed": mixed, "order": order, **out}
                    records.append(rec)
                    log("[search]   " + _search_line(rec))
    return records


def _search_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    return (f"weight {r['weight_ms']['median']:.0f} ms, arch (order {r['order']}) {r['arch_ms']['median']:.0f} ms, "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB, {r['threads']} threads")


def search_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        if r["key"].startswith(REFERENCE_KEY):  # hdnas.bench.dlsr_reference.reference_table
            continue
        if "error" in r:
            rows.append([r["space"], f"x{r['scale']}", f"{r['batch']}/{r['patch']}", r["mixed"], str(r["order"]),
                         "error", "", "", r["error"][:40]])
            continue
        rows.append([r["space"], f"x{r['scale']}", f"{r['batch']}/{r['patch']}", r["mixed"], str(r["order"]),
                     f"{r['weight_ms']['median']:.0f}", f"{r['arch_ms']['median']:.0f}", f"{r['peak_rss_mib']:.0f}",
                     str(r["threads"])])
    return format_table(["space", "scale", "batch/patch", "mixed", "order", "weight ms", "arch ms", "peak MiB",
                         "threads"], rows)


#: Keys of the reference comparison's records (:mod:`hdnas.bench.dlsr_reference`) start so.
REFERENCE_KEY = "dlsr_reference|"

#: name -> (fused, channels_last): the supernet's execution variants (same parameters, same maths)
SUPERNET_VARIANTS: dict[str, tuple[bool, bool]] = {
    "fused channels_last": (True, True),
    "fused NCHW": (True, False),
    "plain channels_last": (False, True),
    "plain NCHW": (False, False),
}


@dataclass
class VariantReport:
    """Best-of-``iters`` seconds per variant (weight step, first-order arch step), and what to read
    them beside: dense-conv GMAC/s before and after, the process's peak RSS (the process's, not a
    variant's: time variants singly for it), and optionally a profiler table of one weight step."""

    space: Any  # SearchSpace
    times: dict[str, tuple[float, float]]
    dense_gmacs: tuple[float, float]
    peak_rss_mib: float
    threads: int
    profile_table: str | None = None


def compare_supernet_variants(
    space: str, scale: int, variants: list[str], batch: int = 8, patch: int = 32, iters: int = 3, warmup: int = 1,
    overrides: list[str] | None = None, profile: bool = False,
) -> VariantReport:
    """Time the supernet's weight step (forward, L1, backward) and first-order arch step (gradients
    w.r.t. α and β only) per variant, switching variants iteration by iteration on one net so that a
    change in load hits all alike. Pure tensors: no data set, no architect (that is :func:`search_case`).
    """
    unknown = [v for v in variants if v not in SUPERNET_VARIANTS]
    if unknown:
        raise BenchmarkError(f"unknown supernet variant {unknown[0]!r} (known: {', '.join(SUPERNET_VARIANTS)})")
    torch.manual_seed(0)
    spc = load_space(resolve_space_path(space), scale=scale, overrides=overrides or [])
    net = SuperNet(spc)
    arch = net.arch_parameters()
    s = spc.scale
    batches = [(torch.rand(batch, 3, patch, patch), torch.rand(batch, 3, patch * s, patch * s)) for _ in range(2)]

    def weight_step() -> None:
        lr, hr = batches[0]
        net.zero_grad(set_to_none=True)
        F.l1_loss(net(lr), hr).backward()

    def arch_step() -> None:
        lr, hr = batches[1]
        torch.autograd.grad(F.l1_loss(net(lr), hr), arch)

    probe = dict(channels=48, warmup=1, repeats=3)  # DESIGN.md's table: 48-channel 3×3 at 320×180, NHWC
    before = dense_conv_gmacs(**probe)
    best: dict[str, tuple[float, float]] = {}
    for it in range(warmup + iters):
        for name in variants:
            net.fused, net.channels_last = SUPERNET_VARIANTS[name]
            w, a = time_fn(weight_step, 0, 1).median, time_fn(arch_step, 0, 1).median
            if it >= warmup:
                bw, ba = best.get(name, (math.inf, math.inf))
                best[name] = (min(bw, w), min(ba, a))
    after = dense_conv_gmacs(**probe)
    table = None
    if profile:
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            weight_step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return VariantReport(spc, best, (before, after), peak_rss_mib(), torch.get_num_threads(), table)


__all__ = [
    "SUPERNET_VARIANTS",
    "SearchBenchConfig",
    "VariantReport",
    "compare_supernet_variants",
    "resolve_space_path",
    "run_search_suite",
    "search_case",
    "search_table",
]
