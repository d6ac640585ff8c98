"""Benchmark harness: how fast the search runs, how fast and big nets are, and what a search buys.

Three suites, each a function returning JSON-ready records, merged into one results file:

* ``search`` — ms per weight step and per first- / second-order architecture step, and peak RSS,
  through the searcher's own code (:class:`hdnas.search.engine.Searcher` weight step, the real
  :class:`hdnas.search.architect.Architect`), one fresh subprocess per configuration so that peak RSS
  (``ru_maxrss`` at its end) belongs to that configuration alone;
* ``models`` — params, Multi-Adds (ours and fvcore's) and CPU latency (eager NCHW / channels_last,
  ``torch.compile``, onnxruntime) of derived genotypes and reference nets, beside the machine's
  measured dense-conv throughput;
* ``quality`` — the fixed-budget protocol: searched net, an RFDN-style net and random genotypes of
  similar Multi-Adds, each trained for the same wall-clock minutes on the same data and seed, then
  scored on Set5/Set14.

Every run records a machine description (CPU model, cores, torch version and threads, date; no
host name). Timings are medians after warm-up; on a shared machine read them beside the load
average and dense-conv figure recorded with them. Results files merge: a record replaces the one
with the same key, so long suites can run one piece per command (``--model-index``, ``--models``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from hdnas.core.atomic import atomic_write_json, json_safe
from hdnas.core.config import format_count
from hdnas.core.cost import HR_SIZE
from hdnas.core.errors import HdnasError
from hdnas.core.machine import machine_info
from hdnas.deploy.timing import Timing, current_rss_mib, dense_conv_gmacs, peak_rss_mib, time_fn

REPO_ROOT = Path(__file__).resolve().parents[2]
FORMAT = {"name": "hdnas-benchmark", "version": 1}
SUITES = ("search", "models", "quality")

#: Reference DLSR implementation (Huang et al. 2021), batch 8, LR patch 32, first order, as given to
#: this project (machine not stated): seconds per step and peak memory, for comparison only.
DLSR_REFERENCE = {
    "x2": {"weight_s": 3.4, "arch_s": 7.9, "peak_gb": 3.2},
    "x4": {"weight_s": 4.1, "arch_s": 7.3},
    "note": "reference DLSR implementation, batch 8, LR patch 32, first-order; machine not stated",
}


class BenchmarkError(HdnasError):
    """A suite cannot run as asked (missing genotype, mismatched results file, bad option)."""


Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


















# ================================================================================================
# results file
# ================================================================================================
_json_safe = json_safe


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        return {"format": dict(FORMAT), "suites": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: not a valid results file ({exc.msg} at line {exc.lineno})") from None
    if data.get("format", {}).get("name") != FORMAT["name"]:
        raise BenchmarkError(f"{path}: not an hdnas benchmark results file (format.name)")
    data.setdefault("suites", {})
    return data


def merge_suite(
    results: dict[str, Any], suite: str, run: dict[str, Any], records: list[dict[str, Any]], protocol: dict | None = None
) -> dict[str, Any]:
    """Add one run of ``suite``: its records replace earlier ones with the same ``key``.

    ``protocol`` (quality): the settings that make records comparable; a results file holding
    records made under another protocol is refused rather than silently mixed.
    """
    entry = results["suites"].setdefault(suite, {"runs": [], "records": []})
    if protocol is not None:
        old = entry.get("protocol")
        if old is not None and entry["records"] and old != _json_safe(protocol):
            diff = sorted(k for k in set(old) | set(protocol) if old.get(k) != _json_safe(protocol).get(k))
            raise BenchmarkError(
                f"the results file holds '{suite}' records made under another protocol (differs in: {', '.join(diff)}); "
                f"write to another --json file or remove the old one"
            )
        entry["protocol"] = _json_safe(protocol)
    run_id = max((r["id"] for r in entry["runs"]), default=-1) + 1
    entry["runs"].append({"id": run_id, **_json_safe(run)})
    new_keys = {r["key"] for r in records}
    kept = [r for r in entry["records"] if r["key"] not in new_keys]
    entry["records"] = kept + [{**_json_safe(r), "run": run_id} for r in records]
    used = {r["run"] for r in entry["records"]}
    entry["runs"] = [r for r in entry["runs"] if r["id"] in used]
    return results


def write_results(path: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Atomic write: an interrupted suite never truncates earlier results."""
    return atomic_write_json(path, results)


def _run_info(config: Any) -> dict[str, Any]:
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
            "config": cfg, "command": " ".join(sys.argv)}


def format_table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Aligned text table: the first ``left`` columns left-aligned, the rest (numbers) right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ================================================================================================
# subprocess workers (fresh process per configuration: meaningful peak RSS, hard time limits)
# ================================================================================================
_RESULT_TAG = "HDNAS_BENCH_RESULT "


def run_worker(task: str, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run ``worker_main`` in a fresh Python; its result dict, or ``{"error": ...}`` (never raises)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = "import sys; from hdnas.bench.common import worker_main; sys.exit(worker_main(sys.argv[1]))"
    arg = json.dumps({"task": task, **spec})
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=timeout_s,
                              cwd=str(REPO_ROOT), env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s", "wall_s": round(time.perf_counter() - t0, 1)}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            out = json.loads(line[len(_RESULT_TAG):])
            out.setdefault("wall_s", round(time.perf_counter() - t0, 1))
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
    return {"error": f"worker exited with {proc.returncode}: " + " | ".join(tail)}


def worker_main(arg: str) -> int:
    spec = json.loads(arg)
    task = spec.pop("task")
    try:
        if task == "search_case":
            out = search_case(**spec)
        elif task == "compiled_latency":
            out = compiled_latency(**spec)
        else:
            raise BenchmarkError(f"unknown worker task {task!r}")
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a record's error
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(_RESULT_TAG + json.dumps(_json_safe(out)), flush=True)
    return 0


# ================================================================================================
# suite: search
# ================================================================================================
@dataclass
class SearchBenchConfig:
    """Defaults: the figures to publish (both spaces, ×2 and ×4, batch 8, LR patch 32, both orders,
    fused and plain mixed ops). The DLSR reference was measured at batch 8, patch 32."""

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
    threads: int = 0, seed: int = 0,
) -> dict[str, Any]:
    """Time one search configuration in this process: the searcher's weight step and architect step.

    Batches are drawn once beforehand (data sampling is timed apart, ``data_ms``), then each
    iteration runs as the search loop does: architecture step, then weight step. A budget at the
    geometric middle of the space's reachable Multi-Adds keeps the penalty term in the arch step.
    Meant for a fresh process (:func:`run_worker`): peak RSS is the process's.
    """
    from hdnas.core import cost
    from hdnas.search.engine import Searcher, load_search_config

    if mixed not in ("fused", "plain"):
        raise BenchmarkError(f"mixed: expected 'fused' or 'plain', got {mixed!r}")
    path = resolve_space_path(space)
    cfg = load_search_config(space=path, overrides={
        "runs_dir": os.path.join(tempfile.gettempdir(), "hdnas-bench-runs"), "seed": seed, "threads": threads, "device": "cpu",
        "space": {"scale": scale}, "data": {"batch": batch, "patch": patch},
        "search": {"order": order, "fused": mixed == "fused", "epochs": 2, "warmup_epochs": 0},
    })
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
    return {
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
        "budget_macs": int(searcher.budget),
    }


def run_search_suite(cfg: SearchBenchConfig, log: Log = _print) -> list[dict[str, Any]]:
    """One worker per (space, scale, mixed op, order); a failed configuration is a record with ``error``."""
    records = []
    for space in cfg.spaces:
        path = resolve_space_path(space)
        for scale in cfg.scales:
            for mixed in cfg.mixed:
                for order in cfg.orders:
                    spec = dict(space=str(path), scale=scale, batch=cfg.batch, patch=cfg.patch, order=order, mixed=mixed,
                                warmup=cfg.warmup, repeats=cfg.repeats, threads=cfg.threads)
                    key = f"{path.stem}|x{scale}|b{cfg.batch}|p{cfg.patch}|{mixed}|order{order}"
                    log(f"[search] {key} ...")
                    out = run_worker("search_case", spec, cfg.timeout_s)
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
        if "error" in r:
            rows.append([r["space"], f"x{r['scale']}", f"{r['batch']}/{r['patch']}", r["mixed"], str(r["order"]),
                         "error", "", "", r["error"][:40]])
            continue
        rows.append([r["space"], f"x{r['scale']}", f"{r['batch']}/{r['patch']}", r["mixed"], str(r["order"]),
                     f"{r['weight_ms']['median']:.0f}", f"{r['arch_ms']['median']:.0f}", f"{r['peak_rss_mib']:.0f}",
                     str(r["threads"])])
    return format_table(["space", "scale", "batch/patch", "mixed", "order", "weight ms", "arch ms", "peak MiB",
                         "threads"], rows)


# ================================================================================================
# suite: models
# ================================================================================================
@dataclass
class ModelsBenchConfig:
    """Defaults: every reference at ×2/×3/×4 and every ``derived/*.json`` at its scale, at the
    1280×720 output papers use, eager (NCHW, channels_last), compiled and through onnxruntime."""

    models: list[str] = field(default_factory=lambda: ["rfdn", "imdn", "imdn_space", "fsrcnn", "bicubic"])
    genotypes: list[str] = field(default_factory=list)  # extra genotype files
    derived_dir: str | None = "derived"  # None: skip derived/*.json
    scales: list[int] = field(default_factory=lambda: [2, 3, 4])  # for reference nets
    hr_size: tuple[int, int] = HR_SIZE  # latency output (H, W); Multi-Adds are always at 1280×720
    warmup: int = 1
    repeats: int = 5
    layouts: list[str] = field(default_factory=lambda: ["nchw", "channels_last"])
    compile: bool = True
    compile_timeout_s: float = 420.0
    onnx: bool = True
    fvcore: bool = True
    fvcore_full_size: bool = True  # fvcore at 1280×720 (one traced forward each); False: at hr_size
    threads: int = 0

    @classmethod
    def quick(cls) -> "ModelsBenchConfig":
        return cls(scales=[4], hr_size=(180, 320), repeats=2, compile=False, fvcore_full_size=False, threads=1)


@dataclass
class ModelEntry:
    name: str
    scale: int
    kind: str  # reference | genotype
    spec: dict[str, Any]  # how a worker rebuilds it: {"reference": name} or {"genotype": path}

    def build(self) -> nn.Module:
        return build_model(self.spec, self.scale)

    def cost(self, hr_size: tuple[int, int]):
        from hdnas.zoo import genotype_cost, reference_cost

        if "reference" in self.spec:
            return reference_cost(self.spec["reference"], self.scale, hr_size)
        from hdnas.core.genotype import load_genotype

        return genotype_cost(load_genotype(self.spec["genotype"]), hr_size)


def build_model(spec: dict[str, Any], scale: int) -> nn.Module:
    from hdnas.zoo import build_reference

    if "reference" in spec:
        return build_reference(spec["reference"], scale)
    from hdnas.core.genotype import load_genotype
    from hdnas.core.network import DerivedNet

    return DerivedNet(load_genotype(spec["genotype"]))


def model_entries(cfg: ModelsBenchConfig) -> list[ModelEntry]:
    from hdnas.core.genotype import load_genotype
    from hdnas.zoo import list_references

    entries: list[ModelEntry] = []
    files: list[Path] = []
    if cfg.derived_dir:
        d = Path(cfg.derived_dir)
        d = d if d.is_absolute() or d.exists() else REPO_ROOT / d
        files += sorted(d.glob("*.json")) if d.is_dir() else []
    files += [Path(p) for p in cfg.genotypes]
    for p in files:
        g = load_genotype(p)
        try:
            shown = str(p.resolve().relative_to(REPO_ROOT))
        except ValueError:
            shown = str(p)
        entries.append(ModelEntry(shown, g.scale, "genotype", {"genotype": str(p.resolve())}))
    known = list_references()
    for name in cfg.models:
        if name not in known:
            raise BenchmarkError(f"unknown reference net '{name}' (known: {', '.join(known)})")
        for s in cfg.scales:
            entries.append(ModelEntry(name, s, "reference", {"reference": name}))
    return entries


def _latency(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> Timing:
    with torch.inference_mode():
        return time_fn(lambda: model(x), warmup, repeats)


def _throughput(macs: int, t: Timing, dense: float) -> dict[str, Any]:
    out = t.as_ms()
    if macs:
        g = macs / t.median / 1e9
        out["gmacs_per_s"] = round(g, 2)
        out["ratio_to_dense_conv"] = round(g / dense, 3) if dense else None
    return out


def compiled_latency(spec: dict[str, Any], scale: int, hr_size: list[int], warmup: int, repeats: int,
                     threads: int = 0) -> dict[str, Any]:
    """torch.compile latency (channels_last), for a worker process: compile time, then median of runs."""
    if threads:
        torch.set_num_threads(threads)
    model = build_model(spec, scale).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, hr_size[0] // scale, hr_size[1] // scale).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model)
    t0 = time.perf_counter()
    with torch.inference_mode():
        compiled(x)
    compile_s = time.perf_counter() - t0
    t = _latency(compiled, x, max(warmup, 1), repeats)
    return {"compile_s": round(compile_s, 1), "times": t.times, "layout": "channels_last"}


def onnx_latency(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> dict[str, Any]:
    """Export with fixed input size (TorchScript-based exporter), run on onnxruntime's CPU provider."""
    try:
        import onnxruntime as ort
    except Exception:  # noqa: BLE001
        return {"skipped": "onnxruntime is not installed (pip install hdnas[onnx])"}
    with tempfile.TemporaryDirectory(prefix="hdnas-onnx-") as d:
        f = os.path.join(d, "model.onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17, input_names=["lr"],
                                  output_names=["sr"])
        except Exception as exc:  # noqa: BLE001
            return {"skipped": f"ONNX export failed: {type(exc).__name__}: {str(exc)[:200]}"}
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        y = sess.run(None, {"lr": xn})[0]
        with torch.inference_mode():
            ref = model(x)
        diff = float((torch.from_numpy(y) - ref).abs().max())
        t = time_fn(lambda: sess.run(None, {"lr": xn}), warmup, repeats)
    return {"times": t.times, "max_abs_diff": diff, "export": "torch.onnx (dynamo=False), opset 17, fixed size"}


def benchmark_model(entry: ModelEntry, cfg: ModelsBenchConfig, dense: float, log: Log = _print) -> dict[str, Any]:
    """Params, Multi-Adds (ours, fvcore's) and latencies of one net at one scale."""
    from hdnas.core.cost import fvcore_macs, lr_size_for
    from hdnas.zoo import num_params

    s = entry.scale
    hr = tuple(cfg.hr_size)
    full = entry.cost(HR_SIZE)
    at_hr = entry.cost(hr)
    model = entry.build().eval()
    rec: dict[str, Any] = {
        "key": f"{entry.name}|x{s}|{hr[1]}x{hr[0]}",
        "name": entry.name,
        "kind": entry.kind,
        "scale": s,
        "params": full.params,
        "params_counted": num_params(model),
        "macs": full.macs,
        "macs_at": "1280x720 output",
        "macs_extras": full.extras,
        "macs_paper_convention": full.paper_macs,
        "cost_note": full.note,
        "latency_hr_size": [hr[0], hr[1]],
        "latency_lr_size": list(lr_size_for(s, hr)),
        "latency_ms": {},
    }
    if cfg.fvcore and rec["params_counted"]:
        size = HR_SIZE if cfg.fvcore_full_size else hr
        fv = fvcore_macs(model, lr_size_for(s, size))
        ours = full if cfg.fvcore_full_size else at_hr
        rec["fvcore_macs"] = fv
        rec["fvcore_at"] = f"{size[1]}x{size[0]} output"
        rec["fvcore_plus_extras_equals_ours"] = fv + ours.extras == ours.macs
    x = torch.rand(1, 3, *lr_size_for(s, hr))
    macs = at_hr.macs
    lat = rec["latency_ms"]
    for layout in cfg.layouts:
        if layout == "nchw":
            m, xi = model, x
        elif layout == "channels_last":
            m = model.to(memory_format=torch.channels_last)
            xi = x.contiguous(memory_format=torch.channels_last)
        else:
            raise BenchmarkError(f"unknown layout {layout!r} (nchw, channels_last)")
        lat[f"eager_{layout}"] = _throughput(macs, _latency(m, xi, cfg.warmup, cfg.repeats), dense)
        model = model.to(memory_format=torch.contiguous_format)
    is_net = entry.spec.get("reference") != "bicubic"
    if not is_net:
        lat["compile"] = {"skipped": "bicubic is a fixed function, not a network"}
        lat["onnxruntime"] = {"skipped": "bicubic is a fixed function, not a network"}
    else:
        if cfg.compile:
            out = run_worker("compiled_latency", dict(spec=entry.spec, scale=s, hr_size=list(hr), warmup=cfg.warmup,
                                                     repeats=cfg.repeats, threads=torch.get_num_threads()),
                             cfg.compile_timeout_s)
            if "error" in out:
                lat["compile"] = {"skipped": f"torch.compile: {out['error']}"}
            else:
                lat["compile"] = {**_throughput(macs, Timing(out["times"]), dense), "compile_s": out["compile_s"],
                                  "layout": out["layout"]}
        else:
            lat["compile"] = {"skipped": "disabled (--no-compile or --quick)"}
        if cfg.onnx:
            out = onnx_latency(model, x, cfg.warmup, cfg.repeats)
            lat["onnxruntime"] = out if "skipped" in out else {
                **_throughput(macs, Timing(out["times"]), dense), "max_abs_diff": out["max_abs_diff"], "export": out["export"]}
        else:
            lat["onnxruntime"] = {"skipped": "disabled (--no-onnx)"}
    best = [(k, v["median"]) for k, v in lat.items() if "median" in v]
    if best:
        k, v = min(best, key=lambda kv: kv[1])
        rec["fastest"] = {"variant": k, "median_ms": v}
    log("[models]   " + _model_line(rec))
    return rec


def _model_line(r: dict[str, Any]) -> str:
    parts = [f"{r['name']} x{r['scale']}: {format_count(r['params'])} params, {format_count(r['macs'])} Multi-Adds"]
    if "fvcore_macs" in r:
        parts.append(f"fvcore {format_count(r['fvcore_macs'])} ({r['fvcore_at']})")
    for k, v in r["latency_ms"].items():
        parts.append(f"{k} {v['median']:.1f} ms" if "median" in v else f"{k} skipped")
    return ", ".join(parts)


def run_models_suite(cfg: ModelsBenchConfig, log: Log = _print) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records per (net, scale), and the dense-conv throughput measured before and after them."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    entries = model_entries(cfg)
    dense = {
        "before_channels_last": dense_conv_gmacs(),
        "nchw": dense_conv_gmacs(channels_last=False),
    }
    ref = dense["before_channels_last"]
    log(f"[models] dense 3x3 conv 64->64 at 320x180: {ref:.1f} GMAC/s channels_last, {dense['nchw']:.1f} NCHW")
    records = []
    for e in entries:
        log(f"[models] {e.name} x{e.scale} ...")
        try:
            records.append(benchmark_model(e, cfg, ref, log))
        except Exception as exc:  # noqa: BLE001 - one broken net must not lose the others' figures
            records.append({"key": f"{e.name}|x{e.scale}|{cfg.hr_size[1]}x{cfg.hr_size[0]}", "name": e.name,
                            "scale": e.scale, "error": f"{type(exc).__name__}: {exc}"})
            log(f"[models]   error: {records[-1]['error']}")
    dense["after_channels_last"] = dense_conv_gmacs()
    dense = {k: round(v, 2) for k, v in dense.items()}
    dense["conv"] = "3x3, 64->64, 320x180, batch 1, median; ratios use before_channels_last"
    return records, dense


def _fvcore_cell(r: dict[str, Any]) -> str:
    if "fvcore_macs" not in r:
        return "-"
    return "yes" if r.get("fvcore_plus_extras_equals_ours") else "NO"


def models_table(records: list[dict[str, Any]]) -> str:
    variants = ["eager_nchw", "eager_channels_last", "compile", "onnxruntime"]
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r["name"], f"x{r['scale']}", "error", "", ""] + [""] * len(variants) + [""])
            continue
        lat = r["latency_ms"]
        cells = [f"{lat[v]['median']:.1f}" if "median" in lat.get(v, {}) else "-" for v in variants]
        best = r.get("fastest", {}).get("variant")
        ratio = lat.get(best, {}).get("ratio_to_dense_conv") if best else None
        rows.append([r["name"], f"x{r['scale']}", format_count(r["params"]), format_count(r["macs"]),
                     _fvcore_cell(r), *cells,
                     "-" if ratio is None else f"{ratio:.2f}"])
    return format_table(["net", "scale", "params", "MAdds", "=fvcore+extras", "NCHW ms", "NHWC ms", "compile ms", "ORT ms",
                         "best/dense"], rows)


# ================================================================================================
# suite: quality (fixed-budget protocol)
# ================================================================================================
@dataclass
class TrainStats:
    steps: int
    seconds: float
    final_loss: float  # mean L1 over the last validation window
    patches_per_s: float
    trainer: str = "hdnas.train.trainer.Trainer (L1, Adam, cosine annealed to the --minutes budget)"


def train_for_minutes(
    genotype,
    train_set,
    minutes: float,
    seed: int = 0,
    *,
    val_set=None,
    run_dir: str | os.PathLike,
    batch: int = 16,
    patch: int = 32,
    lr: float = 1e-3,
    threads: int = 0,
    device: str = "auto",
    max_steps: int | None = None,
) -> tuple[nn.Module, TrainStats]:
    """Train ``genotype`` with the retraining engine, L1 only, for ``minutes`` of wall clock.

    The schedule is annealed to the time budget (``train.anneal_to_minutes``), so every model of the
    protocol ends its cosine whatever its speed; batches come from the seed, so all see the same
    sequence. Checkpoints and TensorBoard logs go to ``run_dir``. Returns the final (not best) weights.
    """
    from hdnas.train.trainer import RetrainConfig, Trainer

    cfg = RetrainConfig(seed=seed, device=device, threads=threads)
    cfg.data.batch, cfg.data.patch = batch, patch
    cfg.train.steps, cfg.train.lr, cfg.train.minutes = 10**9, lr, minutes
    cfg.train.val_every, cfg.train.log_every = 500, 50
    cfg.loss.dual.enabled = False
    torch.manual_seed(seed)
    trainer = Trainer(cfg, genotype, run_dir, train_set=train_set, val_set=val_set or train_set, progress=False,
                      log=True)
    res = trainer.run(max_steps=max_steps)
    last = res.history[-1]["loss"] if res.history else float("nan")
    model = trainer.model.eval().to(memory_format=torch.contiguous_format)
    return model, TrainStats(steps=res.step, seconds=round(res.seconds, 2), final_loss=last,
                             patches_per_s=round(res.step * batch / res.seconds, 2) if res.seconds > 0 else 0.0)


def shared_data_root() -> Path:
    """``$HDNAS_DATA`` or ``<repo>/../shared/data`` (may not exist)."""
    env = os.environ.get("HDNAS_DATA")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


@dataclass
class QualityBenchConfig:
    """Defaults: 8 minutes per model (one model fits one 10-minute command with ``--model-index``),
    T91 + BSD200 from ``$HDNAS_DATA`` (else the built-in sample set), Set5 and Set14."""

    genotype: str | None = None  # default derived/x<scale>.json
    scale: int = 4
    target_macs: float | None = None  # default: the genotype's Multi-Adds
    minutes: float = 8.0
    data: list[str] | None = None  # None: T91 + BSD200 under the shared data root, else the sample set
    eval_sets: list[str] = field(default_factory=lambda: ["Set5", "Set14"])
    seed: int = 0
    n_random: int = 5
    tolerance: float = 0.10
    batch: int = 16
    patch: int = 32
    lr: float = 1e-3
    model_index: list[int] | None = None  # None: all
    bicubic: bool = True
    stand_in: bool = False  # no genotype file: use a seeded random genotype as a stand-in (--quick)
    threads: int = 0  # 0: leave torch's setting
    runs_dir: str = "runs/benchmark/quality"  # each model's checkpoints and TensorBoard logs

    @classmethod
    def quick(cls) -> "QualityBenchConfig":
        return cls(minutes=0.05, eval_sets=["Set5"], n_random=2, batch=4, patch=16, stand_in=True, threads=1,
                   runs_dir="runs/benchmark/quality_quick")


@dataclass
class QualityModel:
    index: int
    name: str
    kind: str  # searched | rfdn | random | stand-in
    genotype: Any  # Genotype


def _default_space_for(geno) -> Any:
    """The space a genotype was searched in (its provenance), else one inferred from the genotype."""
    from hdnas.core.config import from_dict
    from hdnas.core.space import SearchSpace

    space_cfg = (geno.provenance or {}).get("config", {}).get("space")
    if isinstance(space_cfg, dict):
        try:
            space = from_dict(SearchSpace, space_cfg)
            space.scale, space.channels = geno.scale, geno.channels
            space.validate()
            return space
        except Exception:  # noqa: BLE001 - hand-edited provenance: fall back to inference
            pass
    space = SearchSpace(scale=geno.scale, channels=geno.channels, cells=len(geno.cells), steps=geno.steps, esa=geno.esa,
                        cell_inputs=max(len(c.inputs) for c in geno.cells), fusion_cells=len(geno.fusion))
    used = {o for c in geno.cells for o in c.ops}
    if not used <= set(space.ops):  # a hand-made genotype with ops outside the default set
        space.ops = list(space.ops) + sorted(used - set(space.ops))
    space.validate()
    return space


def quality_models(cfg: QualityBenchConfig) -> tuple[list[QualityModel], int, dict[str, Any]]:
    """The protocol's models in a fixed order (0 searched, 1 RFDN-style, 2.. random), the target, notes."""
    import random as _random

    from hdnas.core.cost import count
    from hdnas.zoo.sampler import random_genotype
    from hdnas.core.genotype import load_genotype
    from hdnas.core.space import load_space
    from hdnas.zoo import random_genotypes, rfdn_for_macs

    notes: dict[str, Any] = {}
    path = Path(cfg.genotype) if cfg.genotype else REPO_ROOT / "derived" / f"x{cfg.scale}.json"
    if path.is_file():
        searched = load_genotype(path)
        first = QualityModel(0, f"searched ({path.name})", "searched", searched)
        notes["genotype"] = str(path)
        space = _default_space_for(searched)
    elif cfg.stand_in:
        space = load_space(REPO_ROOT / "search_spaces" / "default.yaml", scale=cfg.scale)
        searched = random_genotype(space, _random.Random(cfg.seed + 12345))
        first = QualityModel(0, "stand-in (random; no searched genotype)", "stand-in", searched)
        notes["genotype"] = f"{path} not found: a seeded random genotype of the default space stands in"
    else:
        raise BenchmarkError(
            f"{path}: no searched genotype; run a search first or pass --genotype FILE "
            f"(the quality suite compares a searched net with references at the same Multi-Adds)"
        )
    target = int(cfg.target_macs) if cfg.target_macs else count(searched).macs
    models = [first, QualityModel(1, "rfdn (width-matched)", "rfdn",
                                       rfdn_for_macs(searched.scale, target, upsampler=searched.upsampler))]
    lo, hi = target * (1 - cfg.tolerance), target * (1 + cfg.tolerance)
    rand = random_genotypes(space, cfg.n_random, _random.Random(cfg.seed), (lo, hi)) if cfg.n_random else []
    for k, g in enumerate(rand):
        models.append(QualityModel(2 + k, f"random-{k}", "random", g))
    notes["random_space"] = dataclasses.asdict(space)
    return models, target, notes


def _data_sources(cfg: QualityBenchConfig) -> tuple[list[str] | None, dict[str, Path | None]]:
    root = shared_data_root()
    if cfg.data is not None:
        train = list(cfg.data)
    else:
        train = [str(root / n) for n in ("T91", "BSD200") if (root / n).is_dir()] or None
    evals = {n: (Path(n) if Path(n).is_dir() else root / n) for n in cfg.eval_sets}
    return train, {n: (p if p.is_dir() else None) for n, p in evals.items()}


def run_quality_suite(cfg: QualityBenchConfig, log: Log = _print) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train and score the protocol's models (all, or those in ``cfg.model_index``); records and protocol."""
    from hdnas.core.cost import count
    from hdnas.core.data import build_dataset
    from hdnas.core.evaluation import bicubic_model, evaluate_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    models, target, notes = quality_models(cfg)
    scale = models[0].genotype.scale
    train_paths, eval_paths = _data_sources(cfg)
    protocol = {
        "scale": scale, "target_macs": target, "tolerance": cfg.tolerance, "minutes": cfg.minutes, "seed": cfg.seed,
        "batch": cfg.batch, "patch": cfg.patch, "lr": cfg.lr, "n_random": cfg.n_random,
        "train_data": train_paths or ["<built-in sample set>"],
        "eval_sets": {n: (str(p) if p else "<built-in sample val set>") for n, p in eval_paths.items()},
        "genotype": notes["genotype"], "models": [m.name for m in models],
        "trainer": TrainStats.trainer, "threads": torch.get_num_threads(),
    }
    wanted = set(range(len(models))) if cfg.model_index is None else set(cfg.model_index)
    bad = sorted(i for i in wanted if not 0 <= i < len(models))
    if bad:
        raise BenchmarkError(f"--model-index {bad[0]}: the protocol has models 0..{len(models) - 1} "
                             f"({', '.join(f'{m.index}: {m.name}' for m in models)})")
    log(f"[quality] target {format_count(target)} Multi-Adds (±{cfg.tolerance:.0%}), {cfg.minutes:g} min per model, "
        f"data: {', '.join(protocol['train_data'])}")
    train_set = build_dataset(train_paths, scale, "train")
    eval_sets = {n: build_dataset([str(p)] if p else None, scale, "val") for n, p in eval_paths.items()}
    records = []
    if cfg.bicubic and 0 in wanted:  # the bar every model must clear; recorded with model 0
        fn = bicubic_model(scale)
        res = {n: evaluate_model(fn, ds) for n, ds in eval_sets.items()}
        records.append({"key": "bicubic", "index": None, "name": "bicubic", "kind": "bicubic", "macs": 0, "params": 0,
                        "eval": {n: {"psnr": r["psnr"], "ssim": r["ssim"], "images": r["images"]} for n, r in res.items()}})
    for m in models:
        if m.index not in wanted:
            continue
        rep = count(m.genotype)
        log(f"[quality] {m.index}: {m.name}, {format_count(rep.macs)} Multi-Adds, {format_count(rep.params)} params ...")
        first_eval = next(iter(eval_sets.values()), None)
        net, stats = train_for_minutes(m.genotype, train_set, cfg.minutes, cfg.seed, val_set=first_eval,
                                       run_dir=Path(cfg.runs_dir) / f"x{scale}_{m.index}_{m.kind}", batch=cfg.batch,
                                       patch=cfg.patch, lr=cfg.lr, threads=cfg.threads)
        res = {n: evaluate_model(net, ds) for n, ds in eval_sets.items()}
        rec = {
            "key": f"{m.index}|{m.kind}", "index": m.index, "name": m.name, "kind": m.kind, "macs": rep.macs,
            "params": rep.params, "macs_ratio_to_target": round(rep.macs / target, 4),
            "train": dataclasses.asdict(stats),
            "eval": {n: {"psnr": r["psnr"], "ssim": r["ssim"], "images": r["images"]} for n, r in res.items()},
            "genotype": m.genotype.to_dict(),
        }
        records.append(rec)
        log("[quality]   " + ", ".join([f"{stats.steps} steps in {stats.seconds:.0f} s"] +
                                       [f"{n} {v['psnr']:.2f} dB / {v['ssim']:.4f}" for n, v in rec["eval"].items()]))
    return records, protocol


def quality_table(records: list[dict[str, Any]]) -> str:
    sets: list[str] = []
    for r in records:
        sets += [n for n in r.get("eval", {}) if n not in sets]
    rows = []
    for r in sorted(records, key=lambda r: -1 if r.get("index") is None else r["index"]):
        steps = str(r["train"]["steps"]) if "train" in r else "-"
        cells = []
        for n in sets:
            v = r.get("eval", {}).get(n)
            cells.append("-" if v is None else f"{v['psnr']:.2f}/{v['ssim']:.4f}")
        ratio = r.get("macs_ratio_to_target")
        rows.append(["-" if r.get("index") is None else str(r["index"]), r["name"], format_count(r["macs"]),
                     "-" if ratio is None else f"{ratio:.2f}", format_count(r["params"]), steps, *cells])
    return format_table(["#", "model", "MAdds", "/target", "params", "steps", *[f"{n} PSNR/SSIM" for n in sets]], rows,
                        left=2)


# ================================================================================================
# driver (what tools/benchmark.py calls)
# ================================================================================================
def run_suites(
    suites: Iterable[str],
    json_path: str | os.PathLike,
    search_cfg: SearchBenchConfig | None = None,
    models_cfg: ModelsBenchConfig | None = None,
    quality_cfg: QualityBenchConfig | None = None,
    quick: bool = False,
    log: Log = _print,
) -> dict[str, Any]:
    """Run the named suites in order, merging each into ``json_path`` as soon as it finishes."""
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
            run = {**_run_info(cfg), "quick": quick, "dlsr_reference": DLSR_REFERENCE}
            merge_suite(results, suite, run, records)
            log(search_table(records))
            log("DLSR reference implementation (batch 8, patch 32, first order; machine not stated): "
                "x2 3.4 s/weight step, 7.9 s/arch step, 3.2 GB peak; x4 4.1 s, 7.3 s")
        elif suite == "models":
            cfg = models_cfg or (ModelsBenchConfig.quick() if quick else ModelsBenchConfig())
            records, dense = run_models_suite(cfg, log)
            merge_suite(results, suite, {**_run_info(cfg), "quick": quick, "dense_conv_gmacs": dense}, records)
            log(models_table(records))
        else:
            cfg = quality_cfg or (QualityBenchConfig.quick() if quick else QualityBenchConfig())
            records, protocol = run_quality_suite(cfg, log)
            merge_suite(results, suite, {**_run_info(cfg), "quick": quick}, records, protocol={**protocol, "quick": quick})
            log(quality_table(results["suites"]["quality"]["records"]))
        results["suites"][suite]["seconds_last_run"] = round(time.perf_counter() - t0, 1)
        write_results(json_path, results)
        log(f"[{suite}] written to {json_path} ({time.perf_counter() - t0:.0f} s)")
    return results


__all__ = [
    "BenchmarkError",
    "DLSR_REFERENCE",
    "ModelsBenchConfig",
    "QualityBenchConfig",
    "SearchBenchConfig",
    "Timing",
    "TrainStats",
    "dense_conv_gmacs",
    "load_results",
    "machine_info",
    "merge_suite",
    "model_entries",
    "quality_models",
    "run_models_suite",
    "run_quality_suite",
    "run_search_suite",
    "run_suites",
    "search_case",
    "time_fn",
    "train_for_minutes",
    "write_results",
]
