"""Suite ``latency``: how well the latency model predicts measured latency, and what searches under it give.

Three parts, each optional:

* **accuracy** — at each scale, the latency table of the default space is built (timed, fresh with
  ``rebuild``), then ``derived/*.json`` of that scale and ``n_random`` seeded random genotypes of the
  default space are measured whole (median of forwards after warm-up, channels-last, the same
  threads) and predicted, with and without the correction: median and worst relative error and
  Spearman's rank correlation per scale and overall, and a scatter plot (PNG). The table's speed
  reference (:func:`hdnas.core.latency.reference_genotype`) is timed right after each net: the ratio to
  its time during the build is the machine's drift since, and a third set of figures multiplies the
  prediction by it (``speed_adjusted``) to tell the model's error from the machine's.
* **genotypes** — extra genotype files (e.g. searched under ``--latency-budget``): measured,
  predicted, and set against the latency budget their provenance records.
* **compare** — two or more genotypes trained for the same steps with the quality protocol's trainer
  (:func:`hdnas.bench.quality.train_for_minutes`, L1, same data, seed and batches) and scored on
  Set5/Set14, beside their measured latency.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from hdnas.bench.common import REPO_ROOT, Log, format_table, print_line
from hdnas.bench.quality import _data_sources, QualityBenchConfig, train_for_minutes
from hdnas.core import latency
from hdnas.core.config import format_count
from hdnas.core.cost import HR_SIZE, count, lr_size_for
from hdnas.core.data import build_dataset
from hdnas.core.evaluation import evaluate_model
from hdnas.core.genotype import Genotype, load_genotype, random_genotype
from hdnas.core.space import SearchSpace, load_space
from hdnas.core.timing import minor_faults_per_call


@dataclass
class LatencyBenchConfig:
    scales: list[int] = field(default_factory=lambda: [2, 3, 4])
    n_random: int = 20
    seed: int = 0
    derived_dir: str | None = "derived"
    accuracy: bool = True
    genotypes: list[str] = field(default_factory=list)  # extra files: measured against their latency budget
    compare: list[str] = field(default_factory=list)  # files trained for compare_steps and scored
    compare_steps: int = 2000
    eval_sets: list[str] = field(default_factory=lambda: ["Set5", "Set14"])
    data: list[str] | None = None  # None: T91 + BSD200 under the shared data root
    hr_size: tuple[int, int] = HR_SIZE
    rebuild: bool = True  # measure the tables afresh (the build time is part of the report)
    warmup: int = 3
    repeats: int = 7
    threads: int = 0
    plot: str | None = None  # scatter PNG; None: beside the results file
    runs_dir: str = "runs/benchmark/latency"

    @classmethod
    def quick(cls) -> "LatencyBenchConfig":
        return cls(scales=[4], n_random=2, hr_size=(96, 160), repeats=2, warmup=1, compare_steps=5,
                   eval_sets=["Set5"], threads=1, runs_dir="runs/benchmark/latency_quick")

    def target(self) -> latency.Target:
        return latency.Target(threads=self.threads, warmup=self.warmup, repeats=self.repeats)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(x: list[float]) -> list[float]:
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def accuracy_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Median / worst relative error (corrected and sum of parts) and Spearman over ``records``."""
    out: dict[str, Any] = {"n": len(records)}
    if len(records) < 2:
        return out
    meas = [r["measured_ms"] for r in records]
    for kind in ("corrected", "sum_of_parts", "isolated_parts", "speed_adjusted"):
        if not all(kind in r["predicted_ms"] for r in records):
            continue
        pred = [r["predicted_ms"][kind] for r in records]
        errs = [abs(p / m - 1) for p, m in zip(pred, meas)]
        out[kind] = {"median_rel_error": round(statistics.median(errs), 4), "worst_rel_error": round(max(errs), 4),
                     "spearman": round(spearman(pred, meas), 4)}
    return out


def memory_record(scale: int, target: latency.Target, hr_size: tuple[int, int], log: Log = print_line) -> dict[str, Any]:
    """Each part of the default space timed alone, with the allocator's defaults, then with memory kept
    (:func:`hdnas.core.timing.kept_memory`): what the latency model's ``keep_memory`` changes.
    Run before any table in the process, so the defaults are the untouched ones."""
    space = load_space(REPO_ROOT / "search_spaces" / "default.yaml", scale=scale)
    h, w = lr_size_for(scale, hr_size)
    out: dict[str, dict[str, float]] = {}
    faults: dict[str, dict[str, float]] = {}
    for keep in (False, True):
        t, mode = replace(target, keep_memory=keep), "kept" if keep else "default"
        torch.manual_seed(0)
        out[mode], faults[mode] = {}, {}
        for p in latency.parts_of(space):
            module, x = p.build().eval(), torch.rand(1, p.in_channels, h, w)
            out[mode][p.name] = round(1e3 * latency.measure(p.name, module, x, t), 3)
            faults[mode][p.name] = _faults_per_forward(module, x, t)
    ratio = {k: round(out["default"][k] / out["kept"][k], 3) for k in out["kept"]}
    log(f"[latency] x{scale}: parts alone, allocator defaults / memory kept: "
        + ", ".join(f"{k.removeprefix('op:')} {v:.2f}x" for k, v in ratio.items()))
    return {"key": f"memory|x{scale}", "kind": "memory", "scale": scale, "parts_alone_ms": out,
            "default_over_kept": ratio, "minor_page_faults_per_forward": faults}


def _faults_per_forward(module: torch.nn.Module, x: torch.Tensor, target: latency.Target) -> float:
    """Minor page faults per forward after warm-up, run as :func:`hdnas.core.latency.measure` runs it."""
    with latency.on_target(module, x, target) as (module, x, _):
        return minor_faults_per_call(lambda: module(x))


def _net_record(kind: str, name: str, geno: Genotype, model: latency.LatencyModel, cfg: LatencyBenchConfig,
                target: latency.Target, space: SearchSpace) -> dict[str, Any]:
    measured = latency.measure_genotype(geno, target, cfg.hr_size)
    pred = {"corrected": round(model.predict(geno), 3), "sum_of_parts": round(model.predict(geno, corrected=False), 3)}
    isolated = model.fit.get("isolated_ms")
    if isolated and model.fit.get("method") == "in_context":  # the table's parts timed alone, for comparison
        pred["isolated_parts"] = round(latency.LatencyModel(model.key, dict(isolated)).predict(geno, corrected=False), 3)
    rec = {"key": f"{kind}|x{geno.scale}|{name}", "kind": kind, "name": name, "scale": geno.scale,
           "macs": count(geno).macs, "measured_ms": round(measured, 3), "predicted_ms": pred,
           "rel_error": round(pred["corrected"] / measured - 1, 4),
           "rel_error_sum_of_parts": round(pred["sum_of_parts"] / measured - 1, 4)}
    if model.reference_ms:  # the speed reference right after the net: how fast the machine runs now
        speed = latency.measure_genotype(latency.reference_genotype(space), target, cfg.hr_size) / model.reference_ms
        pred["speed_adjusted"] = round(pred["corrected"] * speed, 3)
        rec.update(reference_speed=round(speed, 4), rel_error_speed_adjusted=round(pred["speed_adjusted"] / measured - 1, 4))
    return rec


def run_latency_suite(cfg: LatencyBenchConfig, log: Log = print_line,
                      plot_default: Path | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records (tables, nets, budgets, comparisons) and the summary statistics."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    target = cfg.target()
    records: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"target": target.describe(), "hr_size": list(cfg.hr_size)}
    nets: list[dict[str, Any]] = []
    if cfg.accuracy:
        # first, before anything keeps memory in this process: the parts alone with glibc's defaults
        records += [memory_record(s, target, cfg.hr_size, log) for s in cfg.scales]
        for s in cfg.scales:
            space = load_space(REPO_ROOT / "search_spaces" / "default.yaml", scale=s)
            t0 = time.perf_counter()
            model = latency.latency_model(space, target, cfg.hr_size, rebuild=cfg.rebuild)
            took = time.perf_counter() - t0
            records.append({"key": f"table|x{s}", "kind": "table", "scale": s, "seconds": round(took, 1),
                            "rebuilt": cfg.rebuild, "parts_ms": model.parts_ms, "factor": model.factor, "fit": model.fit,
                            "cache": str(model.path)})
            log(f"[latency] x{s}: table in {took:.1f} s, correction factor {model.factor:.3f} "
                f"(median whole/sum {model.fit.get('median_ratio')})")
            genos: list[tuple[str, str, Genotype]] = []
            if cfg.derived_dir:
                d = Path(cfg.derived_dir)
                d = d if d.is_absolute() or d.exists() else REPO_ROOT / d
                for p in sorted(d.glob("*.json")) if d.is_dir() else []:
                    g = load_genotype(p)
                    if g.scale == s:
                        genos.append(("derived", _shown(p), g))
            rng = random.Random(cfg.seed * 1000 + s)
            genos += [("random", f"random-{k}", random_genotype(space, rng)) for k in range(cfg.n_random)]
            for kind, name, g in genos:
                rec = _net_record(kind, name, g, model, cfg, target, space)
                records.append(rec)
                nets.append(rec)
                log(f"[latency]   {name} x{s}: measured {rec['measured_ms']:.1f} ms, predicted "
                    f"{rec['predicted_ms']['corrected']:.1f} ({rec['rel_error']:+.1%}), sum of parts "
                    f"{rec['predicted_ms']['sum_of_parts']:.1f} ({rec['rel_error_sum_of_parts']:+.1%})"
                    + (f", machine speed {rec['reference_speed']:.3f} of the table's: adjusted "
                       f"{rec['rel_error_speed_adjusted']:+.1%}" if "reference_speed" in rec else ""))
            summary[f"x{s}"] = accuracy_stats([r for r in nets if r["scale"] == s])
        summary["all"] = accuracy_stats(nets)
        plot = Path(cfg.plot) if cfg.plot else plot_default
        if plot is not None and nets:
            summary["plot"] = _shown(scatter_plot(nets, plot))
    for path in cfg.genotypes:
        g = load_genotype(path)
        space = latency.space_of(g)
        model = latency.latency_model(space, target, cfg.hr_size)
        rec = _net_record("budget", _shown(Path(path)), g, model, cfg, target, space)
        budget = (g.provenance or {}).get("latency_budget_ms")
        if budget:
            rec["latency_budget_ms"] = budget
            rec["measured_vs_budget"] = round(rec["measured_ms"] / budget - 1, 4)
        rec["multi_adds_budget"] = (g.provenance or {}).get("budget")
        records.append(rec)
        log(f"[latency] {rec['name']}: measured {rec['measured_ms']:.1f} ms, predicted "
            f"{rec['predicted_ms']['corrected']:.1f}" + (f", budget {budget:g} ms ({rec['measured_vs_budget']:+.1%})"
                                                         if budget else ""))
    if cfg.compare:
        records += compare_at_equal_steps(cfg, target, log)
    return records, summary


def compare_at_equal_steps(cfg: LatencyBenchConfig, target: latency.Target, log: Log) -> list[dict[str, Any]]:
    """Train each ``cfg.compare`` genotype for ``compare_steps`` with the quality protocol; score and time it."""
    q = QualityBenchConfig(data=cfg.data, eval_sets=cfg.eval_sets, seed=cfg.seed)
    out = []
    sets = None
    for path in cfg.compare:
        g = load_genotype(path)
        train_paths, eval_paths = _data_sources(q)
        if sets is None:
            train_set = build_dataset(train_paths, g.scale, "train")
            sets = {n: build_dataset([str(p)] if p else None, g.scale, "val") for n, p in eval_paths.items()}
        name = Path(path).stem
        log(f"[latency] compare: training {name} for {cfg.compare_steps} steps ...")
        net, stats = train_for_minutes(g, train_set, 0, q.seed, val_set=next(iter(sets.values())),
                                       run_dir=Path(cfg.runs_dir) / f"compare_{name}", batch=q.batch, patch=q.patch,
                                       lr=q.lr, threads=cfg.threads, steps=cfg.compare_steps)
        res = {n: evaluate_model(net, ds) for n, ds in sets.items()}
        measured = latency.measure_genotype(g, target, cfg.hr_size)
        rec = {"key": f"compare|{cfg.compare_steps}|{_shown(Path(path))}", "kind": "compare", "name": _shown(Path(path)), "scale": g.scale,
               "macs": count(g).macs, "measured_ms": round(measured, 3), "steps": stats.steps,
               "train_seconds": stats.seconds, "batch": q.batch, "patch": q.patch, "lr": q.lr,
               "latency_budget_ms": (g.provenance or {}).get("latency_budget_ms"),
               "multi_adds_budget": (g.provenance or {}).get("budget"),
               "eval": {n: {"psnr": r["psnr"], "ssim": r["ssim"], "images": r["images"]} for n, r in res.items()}}
        out.append(rec)
        log(f"[latency]   {name}: {format_count(rec['macs'])} Multi-Adds, {measured:.1f} ms, "
            + ", ".join(f"{n} {v['psnr']:.2f} dB / {v['ssim']:.4f}" for n, v in rec["eval"].items()))
    return out


def scatter_plot(nets: list[dict[str, Any]], path: Path) -> Path:
    """Predicted (corrected) against measured latency, one colour per scale, with the ±10 % band."""
    from hdnas.core.plots import plt  # matplotlib: heavy, only for this figure

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for s, colour in ((2, "tab:blue"), (3, "tab:orange"), (4, "tab:green")):
        pts = [r for r in nets if r["scale"] == s]
        if pts:
            ax.scatter([r["measured_ms"] for r in pts], [r["predicted_ms"]["corrected"] for r in pts], s=14,
                       color=colour, label=f"×{s}")
    hi = max(max(r["measured_ms"], r["predicted_ms"]["corrected"]) for r in nets) * 1.05
    ax.plot([0, hi], [0, hi], "k-", lw=0.8)
    ax.plot([0, hi], [0, 1.1 * hi], "k:", lw=0.6)
    ax.plot([0, hi], [0, 0.9 * hi], "k:", lw=0.6, label="±10 %")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title("latency model, 1280×720 output, batch 1")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def latency_table(records: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    rows = []
    for key in [k for k in summary if k.startswith("x") or k == "all"]:
        st = summary[key]
        if "corrected" not in st:
            continue
        c, r = st["corrected"], st["sum_of_parts"]
        three = lambda d: f"{d['median_rel_error']:.1%} / {d['worst_rel_error']:.1%} / {d['spearman']:.3f}" if d else "-"  # noqa: E731
        rows.append([key, str(st["n"]), f"{c['median_rel_error']:.1%}", f"{c['worst_rel_error']:.1%}",
                     f"{c['spearman']:.3f}", f"{r['median_rel_error']:.1%}", f"{r['worst_rel_error']:.1%}",
                     f"{r['spearman']:.3f}", three(st.get("isolated_parts")), three(st.get("speed_adjusted"))])
    text = format_table(["scale", "nets", "median err", "worst err", "Spearman", "median (sum)", "worst (sum)",
                         "Spearman (sum)", "parts alone: median / worst / Spearman",
                         "speed-adjusted: median / worst / Spearman"], rows) if rows else ""
    extra = [r for r in records if r.get("kind") in ("budget", "compare")]
    if extra:
        rows = []
        for r in extra:
            ev = r.get("eval", {})
            rows.append([r["kind"], r["name"], format_count(r["macs"]), f"{r['measured_ms']:.1f}",
                         f"{r['predicted_ms']['corrected']:.1f}" if "predicted_ms" in r else "-",
                         f"{r['latency_budget_ms']:g}" if r.get("latency_budget_ms") else "-",
                         *[f"{ev[n]['psnr']:.2f}" if n in ev else "-" for n in ("Set5", "Set14")]])
        text += "\n" + format_table(["kind", "genotype", "MAdds", "measured ms", "predicted ms", "budget ms",
                                     "Set5 PSNR", "Set14 PSNR"], rows, left=2)
    return text


__all__ = ["LatencyBenchConfig", "accuracy_stats", "latency_table", "run_latency_suite", "scatter_plot", "spearman"]
