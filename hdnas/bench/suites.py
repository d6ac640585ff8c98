"""Run named suites in order and merge each into one results file: what ``tools/benchmark.py`` calls.

Kept apart from :mod:`hdnas.bench.common` because it imports every suite, and the suites import
``common``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

from hdnas.bench.common import SUITES, BenchmarkError, Log, load_results, merge_suite, print_line, run_info
from hdnas.bench.compress import CompressBenchConfig, compress_table, run_compress_suite
from hdnas.bench.latency import LatencyBenchConfig, latency_table, run_latency_suite
from hdnas.bench.models import ModelsBenchConfig, models_table, run_models_suite
from hdnas.bench.quality import QualityBenchConfig, quality_table, run_quality_suite
from hdnas.bench.search import SearchBenchConfig, run_search_suite, search_table
from hdnas.core.atomic import atomic_write_json


def run_suites(
    suites: Iterable[str],
    json_path: str | os.PathLike,
    search_cfg: SearchBenchConfig | None = None,
    models_cfg: ModelsBenchConfig | None = None,
    quality_cfg: QualityBenchConfig | None = None,
    latency_cfg: LatencyBenchConfig | None = None,
    compress_cfg: CompressBenchConfig | None = None,
    quick: bool = False,
    log: Log = print_line,
) -> dict[str, Any]:
    """Run the named suites in order, merging each into ``json_path`` as soon as it finishes.

    The file is written atomically after each suite, so an interrupted run never loses or truncates
    what earlier suites measured. The compress suite also writes after each of its parts, reading the
    file again just before, so records another command wrote meanwhile (parts may run side by side)
    are kept.
    """
    suites = list(suites)
    for s in suites:
        if s not in SUITES:
            raise BenchmarkError(f"unknown suite '{s}' (known: {', '.join(SUITES)})")
    json_path = Path(json_path)
    results = load_results(json_path)  # fail on a bad file before hours of work
    for suite in suites:
        t0 = time.perf_counter()
        if suite == "search":
            cfg = search_cfg or (SearchBenchConfig.quick() if quick else SearchBenchConfig())
            records = run_search_suite(cfg, log)
            merge_suite(results, suite, {**run_info(cfg), "quick": quick}, records)
            log(search_table(records))
        elif suite == "models":
            cfg = models_cfg or (ModelsBenchConfig.quick() if quick else ModelsBenchConfig())
            records, dense = run_models_suite(cfg, log)
            merge_suite(results, suite, {**run_info(cfg), "quick": quick, "dense_conv_gmacs": dense}, records)
            log(models_table(records))
        elif suite == "compress":
            cfg = compress_cfg or CompressBenchConfig()
            info = {**run_info(cfg), "quick": quick}

            def save(records, protocol, suite=suite, info=info):  # after each part: re-read, merge, write
                nonlocal results
                results = load_results(json_path)
                merge_suite(results, suite, info, records, protocol=protocol)
                atomic_write_json(json_path, results)

            entry = results["suites"].get(suite, {})
            records, protocol = run_compress_suite(cfg, log, existing=entry.get("records", []),
                                                   existing_runs=entry.get("runs", []), save=save)
            save(records, protocol)
            log(compress_table(results["suites"][suite]["records"]))
        elif suite == "latency":
            cfg = latency_cfg or (LatencyBenchConfig.quick() if quick else LatencyBenchConfig())
            records, summary = run_latency_suite(cfg, log, plot_default=json_path.with_suffix(".png"))
            merge_suite(results, suite, {**run_info(cfg), "quick": quick}, records)
            merged = results["suites"][suite].setdefault("summary", {})
            merged.update(summary if cfg.accuracy else {k: v for k, v in summary.items() if k in ("target", "hr_size")})
            log(latency_table(results["suites"][suite]["records"], merged))
        else:
            cfg = quality_cfg or (QualityBenchConfig.quick() if quick else QualityBenchConfig())
            records, protocol = run_quality_suite(cfg, log)
            merge_suite(results, suite, {**run_info(cfg), "quick": quick}, records, protocol={**protocol, "quick": quick})
            log(quality_table(results["suites"]["quality"]["records"]))
        results["suites"][suite]["seconds_last_run"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(json_path, results)
        log(f"[{suite}] written to {json_path} ({time.perf_counter() - t0:.0f} s)")
    return results


__all__ = ["run_suites"]
