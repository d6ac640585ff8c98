"""Suite ``models``: how big and how fast nets are, beside this machine's dense-conv throughput.

Params, Multi-Adds (ours, and fvcore's as a cross-check) and CPU latency (eager NCHW and
channels_last, ``torch.compile`` in a worker process, onnxruntime) of derived genotypes and
reference nets. Every figure is measured in the same run as the dense 3×3 conv throughput it is
read against (``ratio_to_dense_conv``).
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from hdnas.bench.common import REPO_ROOT, BenchmarkError, Log, format_table, print_line, run_worker
from hdnas.core.config import format_count
from hdnas.core import latency
from hdnas.core.cost import HR_SIZE, fvcore_macs, lr_size_for
from hdnas.core.genotype import load_genotype
from hdnas.core.network import DerivedNet
from hdnas.core.timing import Timing, dense_conv_gmacs, kept_memory, time_fn
from hdnas.zoo import build_reference, genotype_cost, list_references, num_params, reference_cost


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
    predict: bool = True  # the latency model's prediction (default target) beside each genotype's measurement
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
        if "reference" in self.spec:
            return reference_cost(self.spec["reference"], self.scale, hr_size)
        return genotype_cost(load_genotype(self.spec["genotype"]), hr_size)


def build_model(spec: dict[str, Any], scale: int) -> nn.Module:
    if "reference" in spec:
        return build_reference(spec["reference"], scale)
    return DerivedNet(load_genotype(spec["genotype"]))


def model_entries(cfg: ModelsBenchConfig) -> list[ModelEntry]:
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
    # freed memory kept, as the latency model times (its prediction is printed beside this)
    with torch.inference_mode(), kept_memory():
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
        import onnxruntime as ort  # optional extra (hdnas[onnx]), heavy: imported only when measured
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


def benchmark_model(entry: ModelEntry, cfg: ModelsBenchConfig, dense: float, log: Log = print_line) -> dict[str, Any]:
    """Params, Multi-Adds (ours, fvcore's) and latencies of one net at one scale."""
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
            out = run_worker("hdnas.bench.models:compiled_latency", dict(spec=entry.spec, scale=s, hr_size=list(hr), warmup=cfg.warmup,
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
    if cfg.predict and entry.kind == "genotype":
        geno = load_genotype(entry.spec["genotype"])
        lm = latency.latency_model(latency.space_of(geno), hr_size=hr, progress=False)
        rec["latency_predicted_ms"] = {"corrected": round(lm.predict(geno), 3),
                                       "sum_of_parts": round(lm.predict(geno, corrected=False), 3),
                                       "target": latency.Target().describe(), "compare_with": "eager_channels_last"}
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
    if "latency_predicted_ms" in r:
        parts.append(f"predicted {r['latency_predicted_ms']['corrected']:.1f} ms (channels_last)")
    return ", ".join(parts)


def run_models_suite(cfg: ModelsBenchConfig, log: Log = print_line) -> tuple[list[dict[str, Any]], dict[str, Any]]:
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
            rows.append([r["name"], f"x{r['scale']}", "error", "", ""] + [""] * (len(variants) + 1) + [""])
            continue
        lat = r["latency_ms"]
        cells = [f"{lat[v]['median']:.1f}" if "median" in lat.get(v, {}) else "-" for v in variants]
        best = r.get("fastest", {}).get("variant")
        ratio = lat.get(best, {}).get("ratio_to_dense_conv") if best else None
        pred = r.get("latency_predicted_ms", {}).get("corrected")
        rows.append([r["name"], f"x{r['scale']}", format_count(r["params"]), format_count(r["macs"]),
                     _fvcore_cell(r), *cells[:2], "-" if pred is None else f"{pred:.1f}", *cells[2:],
                     "-" if ratio is None else f"{ratio:.2f}"])
    return format_table(["net", "scale", "params", "MAdds", "=fvcore+extras", "NCHW ms", "NHWC ms", "NHWC pred ms", "compile ms", "ORT ms",
                         "best/dense"], rows)


__all__ = [
    "ModelEntry",
    "ModelsBenchConfig",
    "benchmark_model",
    "build_model",
    "compiled_latency",
    "model_entries",
    "models_table",
    "onnx_latency",
    "run_models_suite",
]
