"""Suite ``ablation``: what each retraining loss term buys, one term at a time.

Five runs of the retraining engine (:class:`hdnas.train.trainer.Trainer`) on one student genotype,
one seed, one data set and one number of steps, which differ only in the loss terms switched on
(and in the teacher, which only the runs that use it are given):

    (a) L1   (b) L1 + dual   (c) (b) + importance   (d) (b) + distill   (e) (d) + importance

(c) and (e) use the same teacher; (d) and (e) distil from it. The teacher is a trained checkpoint
(``teacher``), or is trained first as a stage of the suite (``teacher_genotype`` for
``teacher_steps`` with the default retraining recipe; reused when its run folder already holds it).
Every run starts from the same initial weights (the trainer seeds before it builds the net) and
draws the same batches (per-step generators). The teacher's outputs of the training images are
computed once and shared by the runs that use it (``teacher.cache``, :mod:`hdnas.train.teacher`).

Each record holds ``name``, ``terms``, ``teacher``, ``steps``, ``minutes`` (the training loop's
wall clock) and ``eval`` (``{"Set5": {"psnr", "ssim"}, ...}``, PSNR/SSIM-Y of the final weights),
plus the full retraining config of the run, so that a reader can check what differed.
``overrides`` (``key=value``) apply to every run alike (e.g. ``loss.importance.alpha=30``); a
``tag`` keeps the records of such a variant apart from the defaults' in one results file.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from hdnas.bench.common import REPO_ROOT, BenchmarkError, Log, format_table, print_line
from hdnas.bench.quality import shared_data_root
from hdnas.core.config import load_config, parse_overrides, to_dict
from hdnas.core.data import PatchDataset, SRImageSet, build_dataset
from hdnas.core.evaluation import bicubic_model, evaluate_model
from hdnas.core.genotype import load_genotype
from hdnas.core.run import build_data, load_checkpoint
from hdnas.core.timing import time_fn
from hdnas.train.teacher import TeacherConfig, TeacherOutputs, build_teacher
from hdnas.train.trainer import RetrainConfig, Trainer

#: run letter -> (name, loss terms on). The terms every run may switch; all others stay as configured.
RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "a": ("(a) L1", ("l1",)),
    "b": ("(b) L1 + dual", ("l1", "dual")),
    "c": ("(c) L1 + dual + importance", ("l1", "dual", "importance")),
    "d": ("(d) L1 + dual + distill", ("l1", "dual", "distill")),
    "e": ("(e) L1 + dual + distill + importance", ("l1", "dual", "distill", "importance")),
}
SWITCHED = ("l1", "dual", "distill", "importance")
TEACHER_TERMS = ("distill", "importance")
#: what the suite sets itself; an override of these would break "the runs differ only in the terms"
RESERVED = ("seed", "genotype", "train.steps", "train.minutes", "teacher", *(f"loss.{t}.enabled" for t in SWITCHED),
            "loss.feature_distill.enabled")


@dataclass
class AblationBenchConfig:
    """Defaults: ``derived/x4.json``, 400 steps a run, seed 0, T91 + BSD200 under ``$HDNAS_DATA``
    (else the built-in sample set), Set5 and Set14, the retraining defaults otherwise."""

    genotype: str = "derived/x4.json"
    steps: int = 400
    seed: int = 0
    data: list[str] | None = None
    eval_sets: list[str] = field(default_factory=lambda: ["Set5", "Set14"])
    runs: list[str] = field(default_factory=lambda: list(RUNS))  # empty: score the teacher (and bicubic) alone
    teacher: str | None = None  # a trained checkpoint (any form teacher.weights takes)
    teacher_genotype: str | None = None  # or train this genotype first, as the suite's first stage
    teacher_steps: int = 2000
    teacher_cache: bool = True  # teacher outputs computed once and cropped (False: a forward per step)
    overrides: list[str] = field(default_factory=list)  # key=value for every run (not the reserved keys)
    tag: str = ""  # record key suffix for a variant (e.g. the importance options tried)
    threads: int = 0
    device: str = "auto"
    runs_dir: str = "runs/benchmark/ablation"

    def validate(self) -> None:
        bad = [r for r in self.runs if r not in RUNS]
        if bad:
            raise BenchmarkError(f"--runs {bad[0]}: the ablation has runs {', '.join(RUNS)}")
        if self.steps < 1 or self.teacher_steps < 1:
            raise BenchmarkError("--steps and --teacher-steps: expected at least 1")
        for item in self.overrides:
            key = item.split("=", 1)[0].strip()
            if any(key == r or key.startswith(r + ".") for r in RESERVED):
                raise BenchmarkError(f"override '{item}': the ablation sets {key} itself (the runs must differ "
                                     "only in the loss terms); use --steps, --seed, --teacher or --runs")
        needs_teacher = any(set(RUNS[r][1]) & set(TEACHER_TERMS) for r in self.runs)
        if needs_teacher and not (self.teacher or self.teacher_genotype):
            raise BenchmarkError("runs c, d and e need a teacher: --teacher CHECKPOINT, or --teacher-genotype G "
                                 "(--teacher-steps N) to train one first")
        if self.teacher and self.teacher_genotype:
            raise BenchmarkError("give --teacher (a trained checkpoint) or --teacher-genotype (train one), not both")


def default_json(cfg: AblationBenchConfig, date: _dt.date | None = None) -> Path:
    """``benchmarks/ablation_x<scale>_<date>.json`` in the repository, the scale the student genotype's."""
    scale = load_genotype(cfg.genotype).scale
    return REPO_ROOT / "benchmarks" / f"ablation_x{scale}_{(date or _dt.date.today()).isoformat()}.json"


def _paths(cfg: AblationBenchConfig) -> tuple[list[str], dict[str, Path | None]]:
    root = shared_data_root()
    train = list(cfg.data) if cfg.data else [str(root / n) for n in ("T91", "BSD200") if (root / n).is_dir()]
    evals = {}
    for n in cfg.eval_sets:
        p = Path(n) if Path(n).is_dir() else root / n
        evals[Path(n).name] = p if p.is_dir() else None
    return train, evals


def run_config(cfg: AblationBenchConfig, terms: tuple[str, ...], teacher: str | None) -> RetrainConfig:
    """The retraining config of one run: the overrides, then what the suite fixes (seed, steps, terms, teacher)."""
    train, _ = _paths(cfg)
    fixed: dict[str, Any] = {
        "seed": cfg.seed, "genotype": cfg.genotype, "threads": cfg.threads, "device": cfg.device,
        "data": {"paths": train},
        "train": {"steps": cfg.steps, "minutes": None, "val_every": cfg.steps},
        "loss": {t: {"enabled": t in terms} for t in SWITCHED} | {"feature_distill": {"enabled": False}},
        "teacher": {"weights": teacher if set(terms) & set(TEACHER_TERMS) else None, "genotype": None, "model": None,
                    "cache": cfg.teacher_cache},
    }
    return load_config(RetrainConfig, [parse_overrides(cfg.overrides)], fixed)


def evaluate(net: nn.Module, sets: dict[str, SRImageSet], device: str | torch.device = "cpu") -> dict[str, dict]:
    res = {n: evaluate_model(net, ds, device=device) for n, ds in sets.items()}
    return {n: {"psnr": r["psnr"], "ssim": r["ssim"], "images": r["images"]} for n, r in res.items()}


def teacher_run_dir(cfg: AblationBenchConfig) -> Path:
    """Where the suite trains ``teacher_genotype``; its ``last.pt`` is the teacher of the runs."""
    return Path(cfg.runs_dir) / f"teacher_{Path(cfg.teacher_genotype).stem}_{cfg.teacher_steps}_s{cfg.seed}"


def train_teacher(cfg: AblationBenchConfig, train_set: SRImageSet, val_set: SRImageSet, log: Log) -> tuple[Path, dict]:
    """The suite's first stage: ``teacher_genotype`` retrained for ``teacher_steps`` (L1 + dual, the
    retraining defaults, the suite's seed and data); a finished run in its folder is reused."""
    geno = load_genotype(cfg.teacher_genotype)
    run_dir = teacher_run_dir(cfg)
    last = run_dir / "last.pt"
    tcfg = load_config(RetrainConfig, [parse_overrides([o for o in cfg.overrides if not o.startswith("loss.")])], {
        "seed": cfg.seed, "genotype": cfg.teacher_genotype, "threads": cfg.threads, "device": cfg.device,
        "data": {"paths": _paths(cfg)[0]}, "train": {"steps": cfg.teacher_steps, "minutes": None,
                                                   "val_every": max(cfg.teacher_steps // 4, 1)}})
    if last.is_file() and int(load_checkpoint(last)["step"]) >= cfg.teacher_steps:
        log(f"[ablation] teacher: reusing {last}")
    else:
        log(f"[ablation] teacher: {cfg.teacher_genotype} for {cfg.teacher_steps} steps -> {run_dir}")
        trainer = Trainer(tcfg, geno, run_dir, train_set=train_set, val_set=val_set, progress=False)
        trainer.resume(missing_ok=True)
        trainer.run()
    seconds = float(load_checkpoint(last)["elapsed"])  # the training loop's, over resumes
    return last, {"genotype": cfg.teacher_genotype, "steps": cfg.teacher_steps, "run_dir": str(run_dir),
                  "train_seconds": round(seconds, 3), "config": to_dict(tcfg)}


def teacher_forward_ms(teacher: nn.Module, train_set: SRImageSet, rcfg: RetrainConfig) -> dict[str, Any]:
    """What the teacher costs a step without the cache: one forward on a batch of the runs' LR patches
    (channels-last, as the trainer feeds it), median of 5 after a warm-up, in ms."""
    lr, _ = PatchDataset(train_set, rcfg.data.patch, skip_small=True).sample_batch(
        rcfg.data.batch, torch.Generator().manual_seed(rcfg.seed))
    if rcfg.train.channels_last:
        lr = lr.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return time_fn(lambda: teacher(lr), warmup=1, repeats=5).as_ms()


def run_ablation_suite(cfg: AblationBenchConfig, log: Log = print_line) -> tuple[list[dict], dict]:
    """Train and score the asked runs; (records, protocol)."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    geno = load_genotype(cfg.genotype)
    train_paths, eval_paths = _paths(cfg)
    missing = [n for n, p in eval_paths.items() if p is None]
    if missing:
        raise BenchmarkError(f"evaluation set {missing[0]} not found (looked in {shared_data_root()})")
    base = run_config(cfg, ("l1",), None)
    (train_set,), val_set = build_data(base.data, geno.scale, cfg.seed)
    eval_sets = {n: build_dataset([str(p)], geno.scale, "val") for n, p in eval_paths.items()}
    records: list[dict] = []
    suffix = f"|{cfg.tag}" if cfg.tag else ""

    wanted = [r for r in RUNS if r in cfg.runs]
    uses_teacher = any(set(RUNS[r][1]) & set(TEACHER_TERMS) for r in wanted)
    scored = uses_teacher or not wanted  # no runs asked for: the teacher (and bicubic) alone
    teacher_path, teacher_info = cfg.teacher, {}
    if cfg.teacher_genotype:  # trained only when it is used or scored (the path is known before)
        teacher_path = str(teacher_run_dir(cfg) / "last.pt")
        if scored:
            teacher_info = train_teacher(cfg, train_set, val_set, log)[1]
    outputs = None
    if teacher_path and scored:
        teacher = build_teacher(TeacherConfig(weights=teacher_path), geno.scale)
        t_geno = getattr(teacher, "genotype", None)
        minutes = round(teacher_info["train_seconds"] / 60.0, 5) if teacher_info else None
        records.append({"key": "teacher", "name": "teacher", "terms": [], "teacher": teacher_path,
                        "steps": teacher_info.get("steps"), "minutes": minutes,
                        **({"train": teacher_info} if teacher_info else {}),
                        "genotype": None if t_geno is None else t_geno.to_dict(),
                        "eval": evaluate(teacher, eval_sets)})
        records[-1]["forward_ms_per_batch"] = teacher_forward_ms(teacher, train_set, base)
        log(f"[ablation] teacher {teacher_path}: " + _scores(records[-1]) +
            f"; one forward on a training batch {records[-1]['forward_ms_per_batch']['median']:.0f} ms")
        if uses_teacher and cfg.teacher_cache:
            outputs = TeacherOutputs(teacher, train_set)
            log(f"[ablation] teacher outputs of {len(outputs)} training images in {outputs.seconds:.1f} s (once)")
    records.append({"key": "bicubic", "name": "bicubic", "terms": [], "teacher": None, "steps": 0, "minutes": 0.0,
                    "eval": evaluate(bicubic_model(geno.scale), eval_sets)})

    for r in wanted:
        name, terms = RUNS[r]
        rcfg = run_config(cfg, terms, teacher_path)
        with_teacher = bool(set(terms) & set(TEACHER_TERMS))
        log(f"[ablation] {name}: {cfg.steps} steps ...")
        run_dir = Path(cfg.runs_dir) / f"{Path(cfg.genotype).stem}_{r}_{cfg.steps}_s{cfg.seed}{'_' + cfg.tag if cfg.tag else ''}"
        t0 = time.perf_counter()
        trainer = Trainer(rcfg, geno, run_dir, train_set=train_set, val_set=val_set, progress=False,
                          teacher_outputs=outputs if with_teacher else None)
        built = time.perf_counter() - t0
        res = trainer.run()
        net = trainer.eval_model()
        rec = {
            "key": r + suffix, "name": name, "terms": list(terms),
            "teacher": teacher_path if with_teacher else None, "tag": cfg.tag, "steps": res.step,
            "minutes": round(res.seconds / 60.0, 3), "seconds_per_step": round(res.seconds / max(res.step, 1), 4),
            "teacher_cache": bool(with_teacher and trainer.teacher_outputs is not None),
            "teacher_outputs_seconds": round(outputs.seconds, 2) if with_teacher and outputs is not None else None,
            "setup_seconds": round(built, 1), "val_psnr": res.val_psnr,
            "eval": evaluate(net, eval_sets, trainer.device), "config": to_dict(rcfg),
        }
        records.append(rec)
        log(f"[ablation]   {res.step} steps in {res.seconds:.0f} s, " + _scores(rec))
    protocol = {
        "genotype": cfg.genotype, "scale": geno.scale, "seed": cfg.seed, "steps": cfg.steps,
        "train_data": train_paths or ["<built-in sample set>"], "eval_sets": {n: str(p) for n, p in eval_paths.items()},
        "teacher": teacher_path, "threads": torch.get_num_threads(),
    }
    return records, protocol


def _scores(rec: dict) -> str:
    return ", ".join(f"{n} {v['psnr']:.3f} dB / {v['ssim']:.4f}" for n, v in rec["eval"].items())


def ablation_table(records: list[dict]) -> str:
    sets: list[str] = []
    for r in records:
        sets += [n for n in r.get("eval", {}) if n not in sets]
    rows = []
    first = {"bicubic": 0, "teacher": 1}
    for r in sorted(records, key=lambda r: (first.get(r["key"], 2), "|" in r["key"], r["key"].split("|")[-1], r["key"])):
        rows.append([r["key"], r["name"], "-" if r.get("steps") is None else str(r["steps"]),
                     "-" if r.get("minutes") is None else f"{r['minutes']:.1f}",
                     *[f"{r['eval'][n]['psnr']:.3f}/{r['eval'][n]['ssim']:.4f}" if n in r.get("eval", {}) else "-"
                       for n in sets]])
    return format_table(["key", "run", "steps", "min", *[f"{n} PSNR/SSIM" for n in sets]], rows, left=2)


__all__ = ["RUNS", "AblationBenchConfig", "ablation_table", "default_json", "run_ablation_suite", "run_config"]
