"""Suite ``compress``: issue 14's measurement protocol for compressing a retrained net.

Parts, each one record keyed by its name (run all of them or a few with ``parts``; records merge by
key, so the suite can run piece by piece, e.g. one part per command):

* ``base`` — the unpruned net: ``base_checkpoint``, or ``genotype`` retrained for ``base_minutes``
  with the retraining defaults (L1 + dual regression) into ``runs_dir/base``.
* ``base+ft`` — the unpruned net fine-tuned as the pruned nets are (``minutes``, the base as teacher):
  what "unpruned" means at the same total training, since fine-tuning alone also moves PSNR.
* ``drc@R`` for R in ``rates`` — DRC at rate R, ``minutes`` in all (channel search + fine-tuning).
* ``l1@R`` and ``scratch@R`` — the baselines at ``drc@R``'s widths and the same ``minutes``
  (so ``drc@R`` runs first).
* ``dip:plain``, ``dip:reparam``, ``dip:distill``, ``dip:progressive``, ``dip:iterative`` — DIPNet's
  stages added in turn to the retraining of ``genotype`` from scratch, each at the same budget of
  ``minutes``: plain (L1 + dual); + re-parameterisation; + output and multi-anchor feature
  distillation from the base net; + progressive patches (16 → 24 → 32 LR, L2 in the last stage);
  + iterative pruning, which trains as ``dip:progressive`` for ``1 − prune_fraction`` of the minutes
  and prunes iteratively (``step_rate``, ``tolerance``, ``prune_rounds`` rounds) for the rest.
* ``latency`` — measures again the latency of every record in the results file, in one short pass
  (for a quiet machine: latencies measured beside training runs are marked, see below).

Every record holds the exact Multi-Adds and params (at 1280×720 output), the CPU latency of the net
at ``hr_size`` output (:func:`hdnas.core.latency.measure_genotype`: median of forwards after
warm-up, ``latency_threads``; the latency pass: the median of ``latency_rounds`` interleaved passes
over the distinct nets), PSNR/SSIM-Y on each evaluation set, the steps each run took and the load
average around it. Beside each latency: the 1-minute load average and the machine's dense 3×3 conv
throughput (:func:`hdnas.core.timing.dense_conv_gmacs`) before each pass, and ``loaded_machine``,
true when that load average exceeded the measuring threads by more than 0.5 — other work was
running, and the figure is not a fair latency.

Budgets are CPU time by default (``cpu_clock``): every run's ``minutes`` are read on the process's
CPU clock (``time.process_time``), so a machine shared with other work gives each run the same
compute rather than the same wall time — core-minutes (with 2 threads, an idle machine spends them
in about half the wall minutes). ``cpu_clock=False`` (``--wall-clock``) budgets wall time, as the
tools do.

Every run of a part starts over in its folder under ``runs_dir`` (``force``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from hdnas.bench.common import REPO_ROOT, BenchmarkError, Log, format_table, print_line
from hdnas.bench.quality import _data_sources
from hdnas.compress.job import load_compress_config, run_compress
from hdnas.core.config import DataConfig, format_count
from hdnas.core.cost import HR_SIZE, count
from hdnas.core.data import build_dataset
from hdnas.core.evaluation import evaluate_model
from hdnas.core.genotype import Genotype, load_genotype
from hdnas.core.latency import Target, measure_genotype
from hdnas.core.run import build_data
from hdnas.core.surgery import prunable_widths
from hdnas.core.timing import dense_conv_gmacs
from hdnas.core.weights import load_model
from hdnas.train.trainer import Trainer, load_retrain_config

DIP_STAGES = ("plain", "reparam", "distill", "progressive", "iterative")
#: DIPNet's progressive learning as the issue states it: LR patches 16 → 24 → 32, L2 in the last stage.
PROGRESSIVE = [{"until": 0.4, "patch": 16}, {"until": 0.8, "patch": 24}, {"until": 1.0, "patch": 32, "loss": "l2"}]

#: The protocol's retraining recipe (base and DIPNet stages): L1 + dual, pinned so its records stay
#: comparable after the retraining default turned dual off.
RETRAIN_RECIPE = ["loss.dual.enabled=true"]
#: Steps are never the limit of a run in this suite: the wall-clock is.
UNLIMITED_STEPS = 10**9


@dataclass
class CompressBenchConfig:
    """Defaults: the issue's protocol at short lengths (``minutes`` per model), on T91 + BSD200 from
    ``$HDNAS_DATA``, scored on Set5 and Set14."""

    genotype: str | None = None  # default derived/x<scale>.json
    scale: int = 4
    base_checkpoint: str | None = None  # a retrained net of ``genotype``; None: the ``base`` part trains one
    base_minutes: float = 30.0
    minutes: float = 5.0  # per model: every compression run and every DIPNet stage
    steps: int | None = None  # DIPNet stages (not iterative): these steps instead of ``minutes`` (equal steps)
    rates: list[float] = field(default_factory=lambda: [0.3, 0.5])
    parts: list[str] | None = None  # None: every part but ``latency``
    data: list[str] | None = None  # None: T91 + BSD200 under the shared data root, else the sample set
    eval_sets: list[str] = field(default_factory=lambda: ["Set5", "Set14"])
    seed: int = 0
    threads: int = 0  # 0: leave torch's setting
    val_every: int = 250  # validation on the held-out images, every run alike
    step_rate: float = 0.1  # dip:iterative
    tolerance: float = 0.05  # dip:iterative, dB
    prune_fraction: float = 0.4  # dip:iterative: share of ``minutes`` for pruning
    prune_rounds: int = 2  # dip:iterative: rounds at most (each prunes for prune_fraction·minutes / rounds)
    cpu_clock: bool = True  # minutes of process CPU time (False: wall-clock minutes)
    latency: bool = True  # measure each record's latency as it is made
    latency_threads: int = 0  # 0: the run's threads
    latency_rounds: int = 5  # the latency pass: interleaved passes over the nets, median per net
    hr_size: tuple[int, int] = HR_SIZE  # latency output (H, W); Multi-Adds are always at 1280×720
    compress_overrides: list[str] = field(default_factory=list)  # key=value for every compression run
    retrain_overrides: list[str] = field(default_factory=list)  # key=value for every retraining run
    runs_dir: str = "runs/benchmark/compress"

    def all_parts(self) -> list[str]:
        parts = ["base", "base+ft"]
        for r in self.rates:
            parts += [f"drc@{r:g}", f"l1@{r:g}", f"scratch@{r:g}"]
        return parts + [f"dip:{s}" for s in DIP_STAGES]

    def validate(self) -> None:
        known = self.all_parts() + ["latency"]
        for p in self.parts or []:
            if p not in known:
                raise BenchmarkError(f"compress suite: unknown part '{p}' (known: {', '.join(known)})")
        if not self.minutes > 0 or not self.base_minutes > 0:
            raise BenchmarkError("compress suite: --minutes and --base-minutes must be positive")
        if self.steps is not None and self.steps < 1:
            raise BenchmarkError(f"compress suite: --steps must be positive, got {self.steps}")
        if self.steps is not None and "dip:iterative" in (self.parts or self.all_parts()):
            raise BenchmarkError("compress suite: --steps applies to the DIPNet stages that only train; "
                                 "dip:iterative's pruning runs on minutes (leave it out of --parts)")
        if not 0 < self.prune_fraction < 1:
            raise BenchmarkError(f"compress suite: prune_fraction must be in (0, 1), got {self.prune_fraction}")


def _net_key(genotype: Genotype) -> str:
    """What decides a net's latency: the genotype without its provenance."""
    return json.dumps({k: v for k, v in genotype.to_dict().items() if k != "provenance"}, sort_keys=True)


def _load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


class _Suite:
    """One run of the suite: the shared data, the base net, and one method per kind of part."""

    def __init__(self, cfg: CompressBenchConfig, log: Log):
        self.cfg = cfg
        self.log = log
        self.runs = Path(cfg.runs_dir)
        path = Path(cfg.genotype) if cfg.genotype else REPO_ROOT / "derived" / f"x{cfg.scale}.json"
        if not path.is_file():
            raise BenchmarkError(f"{path}: genotype not found (pass --genotype FILE)")
        self.genotype_path = path
        self.genotype = load_genotype(path)
        self.scale = self.genotype.scale
        self.train_paths, eval_paths = _data_sources(cfg)
        self.eval_paths = {Path(n).name: p for n, p in eval_paths.items()}  # "Set5", whether named or a path
        self._data = None
        self._eval = None
        self.latencies: dict[str, dict[str, Any]] = {}  # genotype JSON -> latency figures of this pass
        self.clock = time.process_time if cfg.cpu_clock else time.monotonic

    # -- shared inputs ---------------------------------------------------------------------------
    def data(self):
        """(training images, held-out images), as every run here splits them (decoded once)."""
        if self._data is None:
            (train,), val = build_data(DataConfig(paths=list(self.train_paths or [])), self.scale, self.cfg.seed)
            self._data = (train, val)
        return self._data

    def eval_sets(self):
        if self._eval is None:
            self._eval = {n: build_dataset([str(p)] if p else None, self.scale, "val")
                          for n, p in self.eval_paths.items()}
        return self._eval

    @property
    def base(self) -> Path:
        return Path(self.cfg.base_checkpoint) if self.cfg.base_checkpoint else self.runs / "base" / "best.pt"

    def need(self, path: Path, part: str) -> Path:
        if not path.is_file():
            raise BenchmarkError(f"{path}: not found; run the part '{part}' first (--parts {part})")
        return path

    # -- runs ------------------------------------------------------------------------------------
    def _common(self) -> list[str]:
        items = [f"seed={self.cfg.seed}", f"threads={self.cfg.threads}", f"train.steps={UNLIMITED_STEPS}",
                 f"train.val_every={self.cfg.val_every}"]
        if self.train_paths:
            items.append("data.paths=" + json.dumps([str(p) for p in self.train_paths]))
        return items

    def retrain(self, out: Path, minutes: float, extra: list[str]):
        """``genotype`` retrained from scratch for ``minutes`` by the retraining engine; its result."""
        rcfg = load_retrain_config(None, self._common() + [f"train.minutes={minutes}", *RETRAIN_RECIPE, *extra,
                                                           *self.cfg.retrain_overrides])
        train, val = self.data()
        trainer = Trainer(rcfg, self.genotype, out, train_set=train, val_set=val, progress=False, log=True,
                          clock=self.clock)
        trainer.start(force=True)
        return trainer.run()

    def compress(self, source: Path, out: Path, method: str, minutes: float, extra: list[str],
                 widths_from: Path | None = None):
        ccfg = load_compress_config(None, self._common() + [f"method={method}", f"minutes={minutes}", *extra,
                                                            *self.cfg.compress_overrides])
        train, val = self.data()
        return run_compress(ccfg, source, out, widths_from=None if widths_from is None else str(widths_from),
                            force=True, progress=False, train_set=train, val_set=val, clock=self.clock)

    # -- records ---------------------------------------------------------------------------------
    def latency(self, genotypes: list[Genotype], how: str, rounds: int = 1) -> list[dict[str, Any]]:
        """The latency figures of each genotype's net. The nets not measured yet in this run are measured
        in ``rounds`` interleaved passes (median per net), so all see the machine in the same states."""
        keys = [_net_key(g) for g in genotypes]
        todo = {k: g for k, g in zip(keys, genotypes) if k not in self.latencies}
        if todo:
            threads = self.cfg.latency_threads or torch.get_num_threads()
            times: dict[str, list[float]] = {k: [] for k in todo}
            loads, dense = [], []
            for _ in range(rounds):
                previous = torch.get_num_threads()
                torch.set_num_threads(threads)
                try:
                    load = _load_average()
                    loads.append(None if load is None else load[0])
                    dense.append(round(dense_conv_gmacs(), 2))
                finally:
                    torch.set_num_threads(previous)
                for k, g in todo.items():
                    times[k].append(measure_genotype(g, Target(threads=threads), tuple(self.cfg.hr_size)))
            loaded = any(x is not None and x > threads + 0.5 for x in loads)
            for k, ms in times.items():
                self.latencies[k] = {
                    "latency_ms": round(statistics.median(ms), 2),
                    "latency": {"threads": threads, "hr_size": list(self.cfg.hr_size), "measured": how,
                                "rounds_ms": [round(x, 2) for x in ms], "load_1min_per_round": loads,
                                "dense_conv_gmacs_per_round": dense, "loaded_machine": loaded,
                                "date": time.strftime("%Y-%m-%dT%H:%M:%S")},
                }
        return [self.latencies[k] for k in keys]

    def record(self, part: str, name: str, group: str, checkpoint: Path, **extra: Any) -> dict[str, Any]:
        net, geno = load_model(checkpoint)
        rep = count(geno)
        rec: dict[str, Any] = {
            "key": part, "part": part, "name": name, "group": group, "checkpoint": str(checkpoint),
            "macs": rep.macs, "params": rep.params, "net_params": sum(p.numel() for p in net.parameters()),
            "widths": prunable_widths(geno) if geno.has_widths else None, **extra,
        }
        rec["eval"] = {n: {k: r[k] for k in ("psnr", "ssim", "images")}
                       for n, r in ((n, evaluate_model(net, ds)) for n, ds in self.eval_sets().items())}
        if self.cfg.latency:
            rec.update(self.latency([geno], "after the part's training, same process")[0])
        rec["genotype"] = geno.to_dict()
        return rec

    # -- the parts -------------------------------------------------------------------------------
    def run_part(self, part: str) -> dict[str, Any]:
        cfg = self.cfg
        t0, load0 = time.monotonic(), _load_average()
        if part == "base":
            if cfg.base_checkpoint:
                rec = self.record(part, "unpruned (given base)", "base", self.need(self.base, part),
                                  minutes=None, train=None)
            else:
                res = self.retrain(self.runs / "base", cfg.base_minutes, [])
                rec = self.record(part, f"unpruned ({cfg.base_minutes:g}-min base)", "base", self.base,
                                  minutes=cfg.base_minutes, train=_train_stats(res))
        elif part == "base+ft":  # L1-norm "pruning" at the full widths: the fine-tuning alone
            source = self.need(self.base, "base")
            full = self.runs / "base_ft" / "full_widths.json"
            full.parent.mkdir(parents=True, exist_ok=True)
            load_model(source)[1].save(full)
            res = self.compress(source, self.runs / "base_ft", "l1", cfg.minutes, [], widths_from=full)
            rec = self.record(part, "unpruned, fine-tuned as the pruned nets", "base", self.runs / "base_ft" / "best.pt",
                              method="l1 at full widths", minutes=cfg.minutes, train=_train_stats(res.train))
        elif part.startswith("dip:"):
            rec = self.dip(part, part[4:])
        else:
            method, rate = part.split("@")
            out = self.runs / f"{method}_{rate}"
            source = self.need(self.base, "base")
            if method == "drc":
                res = self.compress(source, out, "drc", cfg.minutes, [f"rate={rate}"])
                search = res.search
                extra = {"search": {"steps": search.step, "seconds": round(search.seconds, 1), "stopped": search.stopped,
                                    "target_macs": search.target_macs, "moves": search.moves}}
                name = f"DRC, rate {rate}"
            else:
                widths = self.need(self.runs / f"drc_{rate}" / "genotype.json", f"drc@{rate}")
                res = self.compress(source, out, method, cfg.minutes, [f"rate={rate}"], widths_from=widths)
                extra = {"widths_from": str(widths)}
                name = {"l1": "L1-norm pruning", "scratch": "from scratch"}[method] + f" at DRC {rate}'s widths"
            rec = self.record(part, name, "drc" if method == "drc" else "baseline", out / "best.pt", method=method,
                              rate=float(rate), minutes=cfg.minutes, target_macs=res.target_macs,
                              train=_train_stats(res.train), **extra)
        rec["seconds"] = round(time.monotonic() - t0, 1)
        rec["load_average"] = {"before": load0, "after": _load_average()}
        return rec

    def dip_recipe(self, stage: str) -> list[str]:
        """The retraining overrides of DIPNet stage ``stage``: every earlier stage's, plus its own."""
        out: list[str] = []
        for s in DIP_STAGES[1:DIP_STAGES.index(stage) + 1]:
            if s == "reparam":
                out.append("reparam.enabled=true")
            elif s == "distill":  # only the stages from here need the base
                out += [f"teacher.weights={self.need(self.base, 'base')}", "loss.distill.enabled=true",
                        "loss.feature_distill.enabled=true"]
            elif s == "progressive":
                out.append("train.progressive=" + json.dumps(PROGRESSIVE))
        return out

    def dip(self, part: str, stage: str) -> dict[str, Any]:
        cfg = self.cfg
        out = self.runs / f"dip_{stage}"
        names = {"plain": "plain (L1 + dual)", "reparam": "+ re-parameterisation", "distill": "+ distillation",
                 "progressive": "+ progressive patches", "iterative": "+ iterative pruning"}
        recipe = self.dip_recipe(stage)
        if stage != "iterative":
            if cfg.steps is not None:  # equal steps: the schedule anneals to them, no time limit
                recipe = recipe + [f"train.steps={cfg.steps}", "train.minutes=null"]
            res = self.retrain(out, cfg.minutes, recipe)
            return self.record(part, names[stage], "dipnet", out / "best.pt", stage=stage,
                               minutes=cfg.minutes if cfg.steps is None else None, step_budget=cfg.steps,
                               recipe=recipe, train=_train_stats(res))
        train_min = cfg.minutes * (1 - cfg.prune_fraction)
        res = self.retrain(out / "train", train_min, recipe)
        pruned = self.compress(out / "train" / "best.pt", out / "prune", "iterative", cfg.minutes - train_min,
                               [f"iterative.step_rate={cfg.step_rate}", f"iterative.tolerance={cfg.tolerance}",
                                f"iterative.max_rounds={cfg.prune_rounds}"])
        unpruned = count(self.genotype)
        return self.record(part, names[stage], "dipnet", out / "prune" / "best.pt", stage=stage, minutes=cfg.minutes,
                           recipe=recipe, train=_train_stats(res), train_minutes=round(train_min, 3),
                           prune_minutes=round(cfg.minutes - train_min, 3),
                           unpruned={"macs": unpruned.macs, "params": unpruned.params},
                           iterative=pruned.iterative.summary())

    def remeasure(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every record again, its latency measured in this pass (the earlier figure kept beside it)."""
        figures = self.latency([Genotype.from_dict(r["genotype"]) for r in records],
                               "separate latency pass (--parts latency)", self.cfg.latency_rounds)
        out = []
        for r, fresh in zip(records, figures):
            before = {k: r[k] for k in ("latency_ms", "latency") if k in r}
            out.append({**r, **fresh, **({"latency_previous": before} if before else {})})
            self.log(f"[compress] latency {r['key']}: {fresh['latency_ms']:.1f} ms")
        return out


def _train_stats(res) -> dict[str, Any] | None:
    if res is None:
        return None
    return {"steps": res.step, "seconds": round(res.seconds, 1), "stopped": res.stopped,
            "best_val_psnr": res.best_psnr, "best_step": res.best_step, "start_val_psnr": res.start_psnr}


def run_compress_suite(cfg: CompressBenchConfig, log: Log = print_line,
                       existing: list[dict[str, Any]] | None = None, existing_runs: list[dict[str, Any]] | None = None,
                       save: Callable[[list[dict[str, Any]], dict[str, Any] | None], None] | None = None,
                       ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Run the parts of ``cfg`` (default every part but ``latency``); records and the protocol (None
    for a latency-only pass, which re-measures ``existing`` records and changes nothing else; each
    keeps, under ``made_in_run``, the entry of ``existing_runs`` that made it, since the pass's merge
    makes the pass their run).
    ``save(records so far, protocol)`` is called after each part, so a long run loses at most one."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    suite = _Suite(cfg, log)
    parts = cfg.parts or cfg.all_parts()
    protocol = {
        "scale": suite.scale, "genotype": str(suite.genotype_path), "minutes": cfg.minutes, "dip_steps": cfg.steps,
        "clock": "process CPU time (time.process_time)" if cfg.cpu_clock else "wall clock",
        "base": str(cfg.base_checkpoint) if cfg.base_checkpoint else f"retrained {cfg.base_minutes:g} min",
        "retrain_recipe": RETRAIN_RECIPE, "rates": list(cfg.rates), "seed": cfg.seed, "threads": torch.get_num_threads(),
        "val_every": cfg.val_every,
        "train_data": [str(p) for p in suite.train_paths or []] or ["<built-in sample set>"],
        "eval_sets": {n: (str(p) if p else "<built-in sample val set>") for n, p in suite.eval_paths.items()},
        "step_rate": cfg.step_rate, "tolerance": cfg.tolerance, "prune_fraction": cfg.prune_fraction,
        "prune_rounds": cfg.prune_rounds, "compress_overrides": list(cfg.compress_overrides),
        "retrain_overrides": list(cfg.retrain_overrides),
    }
    records = []
    for part in parts:
        if part == "latency":
            continue
        length = f"{cfg.steps} steps" if cfg.steps is not None and part.startswith("dip:") else f"{cfg.minutes:g} min"
        log(f"[compress] {part} ({length})" if part != "base" or not cfg.base_checkpoint
            else f"[compress] base: {cfg.base_checkpoint}")
        rec = suite.run_part(part)
        records.append(rec)
        if save is not None:
            save(records, protocol)
        log("[compress]   " + ", ".join([f"{format_count(rec['macs'])} Multi-Adds", f"{format_count(rec['params'])} params"]
                                        + [f"{n} {v['psnr']:.3f} dB / {v['ssim']:.4f}" for n, v in rec["eval"].items()]
                                        + ([f"{rec['latency_ms']:.1f} ms"] if "latency_ms" in rec else [])))
    if "latency" in parts:  # this run's records and the file's others, measured again in one pass
        runs = {r["id"]: {k: v for k, v in r.items() if k != "id"} for r in existing_runs or []}
        pool = {r["key"]: ({**r, "made_in_run": runs[r["run"]]} if r.get("run") in runs and "made_in_run" not in r
                           else r) for r in existing or []}
        pool.update({r["key"]: r for r in records})
        records = suite.remeasure(list(pool.values()))
    only_latency = set(parts) == {"latency"}
    return records, None if only_latency else protocol


def compress_table(records: list[dict[str, Any]]) -> str:
    sets: list[str] = []
    for r in records:
        sets += [n for n in r.get("eval", {}) if n not in sets]
    def order(r: dict[str, Any]) -> tuple:  # the protocol's order: base, per rate DRC and baselines, DIPNet stages
        key = r["key"]
        if key.startswith("dip:"):
            return (3, 0, DIP_STAGES.index(key[4:]) if key[4:] in DIP_STAGES else 9)
        if "@" in key:
            method, rate = key.split("@")
            return (2, float(rate), ("drc", "l1", "scratch").index(method) if method in ("drc", "l1", "scratch") else 9)
        return (1, 0, 0 if key == "base" else 1)

    rows = []
    for r in sorted(records, key=order):
        lat = r.get("latency_ms")
        mark = "*" if r.get("latency", {}).get("loaded_machine") else ""
        steps = (r.get("train") or {}).get("steps")
        rows.append([r["key"], r["name"], format_count(r["macs"]), format_count(r["params"]),
                     "-" if lat is None else f"{lat:.1f}{mark}", "-" if steps is None else str(steps),
                     *[f"{r['eval'][n]['psnr']:.3f}/{r['eval'][n]['ssim']:.4f}" if n in r.get("eval", {}) else "-"
                       for n in sets]])
    table = format_table(["part", "net", "MAdds", "params", "latency ms", "steps", *[f"{n} PSNR/SSIM" for n in sets]],
                         rows, left=2)
    return table + "\n(* latency measured on a loaded machine)"


__all__ = ["CompressBenchConfig", "DIP_STAGES", "PROGRESSIVE", "compress_table", "run_compress_suite"]
