"""Run named suites in order and merge each into one results file: what ``tools/benchmark.py`` calls.

Kept apart from :mod:`hdnas.bench.common` because it imports every suite, and the suites import
``common``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

from hdnas.bench.ablation import AblationBenchConfig, ablation_table, run_ablation_suite
from hdnas.bench.common import (SUITES, BenchmarkError, Log, load_results, merge_suite, print_line, run_info, save_suite,
                                store_suite)
from hdnas.bench.dlsr_reference import reference_table, run_reference_comparison
from hdnas.bench.compress import CompressBenchConfig, compress_table, run_compress_suite
from hdnas.bench.latency import LatencyBenchConfig, latency_table, run_latency_suite
from hdnas.bench.models import ModelsBenchConfig, models_table, run_models_suite
from hdnas.bench.quality import QualityBenchConfig, quality_report, quality_summary, run_quality_suite
from hdnas.bench.search import SearchBenchConfig, run_search_suite, search_table


def run_suites(
    suites: Iterable[str],
    json_path: str | os.PathLike,
    search_cfg: SearchBenchConfig | None = None,
    models_cfg: ModelsBenchConfig | None = None,
    quality_cfg: QualityBenchConfig | None = None,
    latency_cfg: LatencyBenchConfig | None = None,
    ablation_cfg: AblationBenchConfig | None = None,
    compress_cfg: CompressBenchConfig | None = None,
    quick: bool = False,
    log: Log = print_line,
) -> dict[str, Any]:
    """Run the named suites in order, merging each into ``json_path`` as soon as it finishes.

    The file is written atomically after each suite (the quality suite: after each model), re-read
    under a lock each time, so an interrupted run never loses or truncates what earlier suites
    measured, and processes side by side can share one file (the ablation's runs a, b beside c, d, e).
    """
    suites = list(suites)
    for s in suites:
        if s not in SUITES:
            raise BenchmarkError(f"unknown suite '{s}' (known: {', '.join(SUITES)})")
    json_path = Path(json_path)
    results = load_results(json_path)  # fail on a bad file before hours of work
    for suite in suites:
        t0 = time.perf_counter()
        saved = False  # True: the suite wrote its records into the file itself
        if suite == "search":
            cfg = search_cfg or (SearchBenchConfig.quick() if quick else SearchBenchConfig())
            records = run_search_suite(cfg, log)
            reference = run_reference_comparison(cfg, log)
            merge_suite(results, suite, {**run_info(cfg), "quick": quick}, records + reference)
            log("\n\n".join(t for t in (search_table(records) if records else "",
                                         reference_table(reference) if reference else "") if t))
        elif suite == "models":
            cfg = models_cfg or (ModelsBenchConfig.quick() if quick else ModelsBenchConfig())
            records, dense = run_models_suite(cfg, log)
            merge_suite(results, suite, {**run_info(cfg), "quick": quick, "dense_conv_gmacs": dense}, records)
            log(models_table(records))
        elif suite == "compress":
            cfg = compress_cfg or CompressBenchConfig()
            info = {**run_info(cfg), "quick": quick}

            def save(records, protocol, suite=suite, info=info):  # after each part: re-read, merge, write (locked)
                nonlocal results
                results = save_suite(json_path, suite, info, records, protocol)

            entry = results["suites"].get(suite, {})
            records, protocol = run_compress_suite(cfg, log, existing=entry.get("records", []),
                                                   existing_runs=entry.get("runs", []), save=save)
            save(records, protocol)
            saved = True
            log(compress_table(results["suites"][suite]["records"]))
        elif suite == "latency":
            cfg = latency_cfg or (LatencyBenchConfig.quick() if quick else LatencyBenchConfig())
            records, summary = run_latency_suite(cfg, log, plot_default=json_path.with_suffix(".png"))
            merge_suite(results, suite, {**run_info(cfg), "quick": quick}, records)
            merged = results["suites"][suite].setdefault("summary", {})
            merged.update(summary if cfg.accuracy else {k: v for k, v in summary.items() if k in ("target", "hr_size")})
            log(latency_table(results["suites"][suite]["records"], merged))
        elif suite == "ablation":
            cfg = ablation_cfg or AblationBenchConfig()
            records, protocol = run_ablation_suite(cfg, log)
            save_suite(json_path, suite, {**run_info(cfg), "quick": quick}, records, protocol)
            saved = True
            log(ablation_table(load_results(json_path)["suites"][suite]["records"]))
        else:
            cfg = quality_cfg or (QualityBenchConfig.quick() if quick else QualityBenchConfig())
            run = {**run_info(cfg), "quick": quick}
            run_quality_suite(cfg, log, save=lambda recs, protocol: save_suite(
                json_path, suite, run, recs, {**protocol, "quick": quick}, update=quality_summary))
            saved = True
            log(quality_report(load_results(json_path)["suites"][suite]))
        results = store_suite(json_path, suite, None if saved else results["suites"][suite],
                              round(time.perf_counter() - t0, 1))
        log(f"[{suite}] written to {json_path} ({time.perf_counter() - t0:.0f} s)")
    return results


__all__ = ["run_suites"]
