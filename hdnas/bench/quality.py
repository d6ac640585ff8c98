"""Suite ``quality``: the fixed-budget protocol, what a search buys over references and random nets.

The searched net, an RFDN-style net and random genotypes of similar Multi-Adds are each trained
for the same wall-clock minutes on the same data and seed with the retraining engine
(:class:`hdnas.train.trainer.Trainer`, through its public API only), then scored on Set5/Set14.
Records made under another protocol are refused (see :func:`hdnas.bench.common.merge_suite`).
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from hdnas.bench.common import REPO_ROOT, BenchmarkError, Log, format_table, print_line
from hdnas.core.config import format_count, from_dict
from hdnas.core.cost import count
from hdnas.core.data import SRImageSet, build_dataset
from hdnas.core.evaluation import bicubic_model, evaluate_model
from hdnas.core.genotype import Genotype, load_genotype
from hdnas.core.space import SearchSpace, load_space
from hdnas.train.trainer import Trainer, load_retrain_config
from hdnas.zoo import random_genotypes, rfdn_for_macs
from hdnas.zoo.sampler import random_genotype


@dataclass
class TrainStats:
    steps: int
    seconds: float
    final_loss: float  # mean L1 over the last validation window
    patches_per_s: float
    trainer: str = "hdnas.train.trainer.Trainer (L1, Adam, cosine annealed to the --minutes budget)"


def train_for_minutes(
    genotype: Genotype,
    train_set: SRImageSet,
    minutes: float,
    seed: int = 0,
    *,
    val_set: SRImageSet | None = None,
    run_dir: str | os.PathLike,
    batch: int = 16,
    patch: int = 32,
    lr: float = 1e-3,
    threads: int = 0,
    device: str = "auto",
    max_steps: int | None = None,
    steps: int | None = None,
) -> tuple[nn.Module, TrainStats]:
    """Train ``genotype`` with the retraining engine, L1 only, for ``minutes`` of wall clock
    (or, with ``steps``, for exactly that many steps, the schedule annealed to them: equal steps).

    The schedule is annealed to the time budget (``train.anneal_to_minutes``), so every model of the
    protocol ends its cosine whatever its speed; batches come from the seed, so all see the same
    sequence. Checkpoints and TensorBoard logs go to ``run_dir``. Returns the final (not best) weights.
    """
    cfg = load_retrain_config(None, {
        "seed": seed, "device": device, "threads": threads, "data": {"batch": batch, "patch": patch},
        "train": {"steps": steps or 10**9, "lr": lr, "minutes": None if steps else minutes, "val_every": 500,
                  "log_every": 50},
        "loss": {"dual": {"enabled": False}},
    })
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
    steps: int | None = None  # equal steps instead of equal minutes (the schedule anneals to them)
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
    genotype: Genotype


def _default_space_for(geno: Genotype) -> SearchSpace:
    """The space a genotype was searched in (its provenance), else one inferred from the genotype."""
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
    notes: dict[str, Any] = {}
    path = Path(cfg.genotype) if cfg.genotype else REPO_ROOT / "derived" / f"x{cfg.scale}.json"
    if path.is_file():
        searched = load_genotype(path)
        first = QualityModel(0, f"searched ({path.name})", "searched", searched)
        notes["genotype"] = str(path)
        space = _default_space_for(searched)
    elif cfg.stand_in:
        space = load_space(REPO_ROOT / "search_spaces" / "default.yaml", scale=cfg.scale)
        searched = random_genotype(space, random.Random(cfg.seed + 12345))
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
    rand = random_genotypes(space, cfg.n_random, random.Random(cfg.seed), (lo, hi)) if cfg.n_random else []
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


def run_quality_suite(cfg: QualityBenchConfig, log: Log = print_line) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train and score the protocol's models (all, or those in ``cfg.model_index``); records and protocol."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    models, target, notes = quality_models(cfg)
    scale = models[0].genotype.scale
    train_paths, eval_paths = _data_sources(cfg)
    protocol = {
        "scale": scale, "target_macs": target, "tolerance": cfg.tolerance,
        **({"steps": cfg.steps} if cfg.steps else {"minutes": cfg.minutes}), "seed": cfg.seed,
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
    per_model = f"{cfg.steps} steps" if cfg.steps else f"{cfg.minutes:g} min"
    log(f"[quality] target {format_count(target)} Multi-Adds (±{cfg.tolerance:.0%}), {per_model} per model, "
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
                                       patch=cfg.patch, lr=cfg.lr, threads=cfg.threads, steps=cfg.steps)
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


__all__ = [
    "QualityBenchConfig",
    "QualityModel",
    "TrainStats",
    "quality_models",
    "quality_table",
    "run_quality_suite",
    "shared_data_root",
    "train_for_minutes",
]
