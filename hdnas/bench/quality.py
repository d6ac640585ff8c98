"""Suite ``quality``: the fixed-budget protocol, what a search buys over references and random nets.

The searched net, an RFDN-style net and random genotypes of similar Multi-Adds are each trained
for the same wall-clock minutes on the same data and seed with the retraining engine
(:class:`hdnas.train.trainer.Trainer`, through its public API only), then scored on Set5/Set14.
Records made under another protocol are refused (see :func:`hdnas.bench.common.merge_suite`).

With ``seeds`` (``--seeds 0 1 2``) the protocol is repeated per seed from the search on: each seed
searches its own genotype (:func:`hdnas.search.engine.run_search`), draws its random nets within
±5 % of that genotype's Multi-Adds and its width-matched RFDN-style net, and trains all of them in two
arms, equal steps and equal minutes. The best random net of a seed and arm is the one scoring best
on images held out of the *training* data, never on Set5/Set14. :func:`seeds_summary` gives per-seed
values, mean ± std over seeds per kind and the searched net's margins (:func:`run_seeds_protocol`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from hdnas.bench.common import REPO_ROOT, BenchmarkError, Log, file_lock, format_table, print_line
from hdnas.core.atomic import atomic_write_json, json_safe
from hdnas.core.config import as_overrides, first_difference, format_count, from_dict, merge, parse_count, to_dict
from hdnas.core.cost import cost_bounds, count
from hdnas.core.data import SRImageSet, build_dataset
from hdnas.core.evaluation import bicubic_model, evaluate_model
from hdnas.core.genotype import Genotype, load_genotype
from hdnas.core.network import DerivedNet
from hdnas.core.run import RESUME_FREE, held_out_split
from hdnas.core.space import SearchSpace, load_space
from hdnas.core.timing import time_fn
from hdnas.search.engine import SearchConfig, Searcher, load_search_config, run_search
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
    val_every: int = 500,
) -> tuple[nn.Module, TrainStats]:
    """Train ``genotype`` with the retraining engine, L1 only, for ``minutes`` of wall clock
    (or, with ``steps``, for exactly that many steps, the schedule annealed to them: equal steps).

    The schedule is annealed to the time budget (``train.anneal_to_minutes``), so every model of the
    protocol ends its cosine whatever its speed; batches come from the seed, so all see the same
    sequence. Checkpoints and TensorBoard logs go to ``run_dir``. Returns the final (not best) weights.
    ``val_every``: steps between validations on ``val_set`` (the run also validates when it ends).
    """
    cfg = load_retrain_config(None, {
        "seed": seed, "device": device, "threads": threads, "data": {"batch": batch, "patch": patch},
        "train": {"steps": steps or 10**9, "lr": lr, "minutes": None if steps else minutes, "val_every": val_every,
                  "log_every": 50},
        "loss": {"dual": {"enabled": False}},
    })
    torch.manual_seed(seed)
    trainer = Trainer(cfg, genotype, run_dir, train_set=train_set, val_set=val_set or train_set, progress=False,
                      log=True)
    res = trainer.run(max_steps=max_steps)
    last = res.history[-1].get("loss", float("nan")) if res.history else float("nan")  # no step: no loss
    model = trainer.model.eval().to(memory_format=torch.contiguous_format)
    return model, TrainStats(steps=res.step, seconds=round(res.seconds, 2), final_loss=last,
                             patches_per_s=round(res.step * batch / res.seconds, 2) if res.seconds > 0 else 0.0)


def shared_data_root() -> Path:
    """``$HDNAS_DATA`` or ``<repo>/../shared/data`` (may not exist)."""
    env = os.environ.get("HDNAS_DATA")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


ARMS = ("steps", "minutes")
#: The search of ``--quick --seeds``: a few steps of a narrow supernet, without a budget.
QUICK_SEARCH = ["space.channels=8", "space.cells=2", "space.fusion_cells=2", "search.epochs=2", "search.warmup_epochs=1",
                "search.steps_per_epoch=2", "data.batch=4", "data.patch=16", "data.val_max_images=1"]


@dataclass
class SeedsConfig:
    """The multi-seed protocol (``--seeds``). Defaults: per seed the project's default search at
    ×``scale`` under 10G Multi-Adds (``tools/search.py --budget 10G --seed S`` on the training data),
    3 random nets within ±5 % of its Multi-Adds, both arms at about 4–6 minutes per model on one
    thread: 400 steps, and 5 minutes."""

    arms: list[str] = field(default_factory=lambda: list(ARMS))
    steps: int = 400  # the equal-steps arm: optimizer steps per model
    minutes: float = 5.0  # the equal-minutes arm: wall-clock minutes per model
    n_random: int = 3
    tolerance: float = 0.05  # random nets within ±tolerance of the seed's searched Multi-Adds
    budget: str | None = "10G"  # the search's Multi-Adds budget (search.budget); None: the config's
    search_config: str | None = None  # run config YAML of the search (tools/search.py --config)
    search_overrides: list[str] = field(default_factory=list)  # key=value, as tools/search.py takes them
    held_out: float = 0.1  # share of the training images held out to pick each seed's best random net
    redo: bool = False  # train again models whose record this protocol already wrote
    plan_only: bool = False  # print the plan (the CPU-time estimate, after short probes) and stop


@dataclass
class QualityBenchConfig:
    """Defaults: 8 minutes per model (one model fits one 10-minute command with ``--model-index``),
    T91 + BSD200 from ``$HDNAS_DATA`` (else the built-in sample set), Set5 and Set14.

    ``seeds`` switches to the multi-seed protocol, set by ``multi`` (:class:`SeedsConfig`); there
    ``genotype``, ``target_macs``, ``minutes``, ``steps``, ``seed``, ``n_random`` and ``tolerance``
    are not used."""

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
    seeds: list[int] | None = None  # the multi-seed protocol (search per seed, two arms); None: one seed as above
    multi: SeedsConfig = field(default_factory=SeedsConfig)

    @classmethod
    def quick(cls) -> "QualityBenchConfig":
        return cls(minutes=0.05, eval_sets=["Set5"], n_random=2, batch=4, patch=16, stand_in=True, threads=1,
                   runs_dir="runs/benchmark/quality_quick",
                   multi=SeedsConfig(steps=3, minutes=0.05, n_random=2, budget=None, search_overrides=list(QUICK_SEARCH)))


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
    models = [first, *_compared_models(searched, target, space, cfg.n_random, cfg.tolerance, cfg.seed)]
    notes["random_space"] = dataclasses.asdict(space)
    return models, target, notes


def _compared_models(searched: Genotype, target: int, space: SearchSpace, n_random: int, tolerance: float,
                     seed: int) -> list[QualityModel]:
    """What a searched net is compared with at ``target`` Multi-Adds: the width-matched RFDN-style net
    (index 1, with the searched net's tail) and ``n_random`` random nets of ``space`` within ±``tolerance``,
    none of them the searched net itself."""
    models = [QualityModel(1, "rfdn (width-matched)", "rfdn",
                           rfdn_for_macs(searched.scale, target, upsampler=searched.upsampler))]
    lo, hi = target * (1 - tolerance), target * (1 + tolerance)
    rand = random_genotypes(space, n_random, random.Random(seed), (lo, hi), exclude=[searched]) if n_random else []
    return models + [QualityModel(2 + k, f"random-{k}", "random", g) for k, g in enumerate(rand)]


def _data_sources(cfg: QualityBenchConfig) -> tuple[list[str] | None, dict[str, Path | None]]:
    root = shared_data_root()
    if cfg.data is not None:
        train = list(cfg.data)
    else:
        train = [str(root / n) for n in ("T91", "BSD200") if (root / n).is_dir()] or None
    evals = {n: (Path(n) if Path(n).is_dir() else root / n) for n in cfg.eval_sets}
    return train, {n: (p if p.is_dir() else None) for n, p in evals.items()}


#: ``save(records, protocol)``: called after every model, so a killed protocol keeps what it finished.
Save = Callable[[list[dict[str, Any]], dict[str, Any]], Any]


def run_quality_suite(
    cfg: QualityBenchConfig, log: Log = print_line, save: Save | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train and score the protocol's models (all, or those in ``cfg.model_index``); records and protocol.

    ``save`` is called once with no records before any training (so a results file of another
    protocol is refused at once), then with each model's record as soon as it is scored.
    ``cfg.seeds``: the multi-seed protocol, :func:`run_seeds_protocol`.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.seeds is not None:
        return run_seeds_protocol(cfg, log, save)
    save = save or (lambda records, protocol: None)
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
    save([], protocol)
    train_set = build_dataset(train_paths, scale, "train")
    eval_sets = {n: build_dataset([str(p)] if p else None, scale, "val") for n, p in eval_paths.items()}
    records = []
    if cfg.bicubic and 0 in wanted:  # the bar every model must clear; recorded with model 0
        records.append(_bicubic_record(scale, eval_sets))
        save(records[-1:], protocol)
    for m in models:
        if m.index not in wanted:
            continue
        rep = count(m.genotype)
        log(f"[quality] {m.index}: {m.name}, {format_count(rep.macs)} Multi-Adds, {format_count(rep.params)} params ...")
        first_eval = next(iter(eval_sets.values()), None)
        net, stats = train_for_minutes(m.genotype, train_set, cfg.minutes, cfg.seed, val_set=first_eval,
                                       run_dir=Path(cfg.runs_dir) / f"x{scale}_{m.index}_{m.kind}", batch=cfg.batch,
                                       patch=cfg.patch, lr=cfg.lr, threads=cfg.threads, steps=cfg.steps)
        rec = {
            "key": f"{m.index}|{m.kind}", "index": m.index, "name": m.name, "kind": m.kind, "macs": rep.macs,
            "params": rep.params, "macs_ratio_to_target": round(rep.macs / target, 4),
            "train": dataclasses.asdict(stats), "eval": _scores(net, eval_sets), "genotype": m.genotype.to_dict(),
        }
        records.append(rec)
        save([rec], protocol)
        log("[quality]   " + _scores_line(rec))
    return records, protocol


def _scores(net: nn.Module, sets: dict[str, SRImageSet]) -> dict[str, dict[str, Any]]:
    res = {n: evaluate_model(net, ds) for n, ds in sets.items()}
    return {n: {"psnr": r["psnr"], "ssim": r["ssim"], "images": r["images"]} for n, r in res.items()}


def _bicubic_record(scale: int, eval_sets: dict[str, SRImageSet]) -> dict[str, Any]:
    """The bar every model must clear."""
    return {"key": "bicubic", "index": None, "name": "bicubic", "kind": "bicubic", "macs": 0, "params": 0,
            "eval": _scores(bicubic_model(scale), eval_sets)}


def _scores_line(rec: dict[str, Any]) -> str:
    t = rec["train"]
    return ", ".join([f"{t['steps']} steps in {t['seconds']:.0f} s"] +
                     [f"{n} {v['psnr']:.2f} dB / {v['ssim']:.4f}" for n, v in rec["eval"].items()])


# ------------------------------------------------------------------------------------------------
# the multi-seed protocol (--seeds)
# ------------------------------------------------------------------------------------------------
#: How each seed's best random net is chosen (recorded in the protocol and the summary).
SELECTION = ("best random: per seed and arm, the random net with the highest PSNR-Y on images held out of the "
             "training data (never trained on); Set5/Set14 play no part in the choice")
KINDS = ("searched", "best_random", "mean_random", "rfdn")
MARGINS = {"searched-best_random": ("searched", "best_random"), "searched-rfdn": ("searched", "rfdn")}
_KIND_OF_INDEX = {0: "searched", 1: "rfdn"}  # 2.. random


def _seed_dir(cfg: QualityBenchConfig, seed: int) -> Path:
    return Path(cfg.runs_dir) / "seeds" / f"s{seed}"


def seed_search_config(cfg: QualityBenchConfig, seed: int, train_paths: list[str] | None) -> tuple[SearchConfig, list[str]]:
    """The search of ``seed``: ``search_config`` <- budget <- ``search_overrides`` <- what the protocol
    owns (scale, training data, seed, run folder under the suite's runs dir). Also the overrides."""
    m = cfg.multi
    owned = as_overrides({"space.scale": cfg.scale, "data.paths": train_paths, "seed": seed,
                          "runs_dir": str(_seed_dir(cfg, seed)), "name": "search"})
    overrides = as_overrides({"search.budget": m.budget}) + list(m.search_overrides) + owned
    return load_search_config(m.search_config, None, overrides), overrides


def _config_difference(geno: Genotype, scfg: SearchConfig, ignore: frozenset[str] = RESUME_FREE):
    saved = (geno.provenance or {}).get("config")
    if not isinstance(saved, dict):
        return ("config", None, "a search config")
    return first_difference(merge(to_dict(SearchConfig()), saved), to_dict(scfg), ignore=ignore)


def _reuse(path: Path, scfg: SearchConfig) -> Genotype:
    geno = load_genotype(path)
    diff = _config_difference(geno, scfg)
    if diff is not None:
        raise BenchmarkError(f"{path}: searched with {diff[0]}={diff[1]!r}, the protocol now asks {diff[2]!r}; "
                             f"remove {path.parent} or pass another --runs-dir")
    return geno


def searched_genotype(cfg: QualityBenchConfig, seed: int, train_paths: list[str] | None, log: Log = print_line,
                      block: bool = True) -> Genotype | None:
    """Seed ``seed``'s searched genotype: reused from ``<runs_dir>/seeds/s<seed>/searched.json`` when there
    (its recorded config must match), else searched now (resuming the search's checkpoint after a kill).

    One process searches a seed at a time (a lock beside the genotype); with ``block`` False, None
    is returned at once when another process holds it.
    """
    scfg, overrides = seed_search_config(cfg, seed, train_paths)
    out = _seed_dir(cfg, seed) / "searched.json"
    if out.is_file():
        return _reuse(out, scfg)
    with file_lock(out.with_name("search.lock"), block=block) as held:
        if not held:
            return None
        if out.is_file():  # another process finished it while we waited
            return _reuse(out, scfg)
        ckpt = Path(scfg.runs_dir) / scfg.run_name() / "checkpoint.pt"
        budget = f" under {cfg.multi.budget}" if cfg.multi.budget else ""
        log(f"[quality] seed {seed}: searching x{cfg.scale}{budget} ({'resuming ' + str(ckpt) if ckpt.is_file() else 'new'}"
            f", TensorBoard in {ckpt.parent / 'tb'}), genotype -> {out}")
        command = ["python", "tools/search.py", *(["--config", cfg.multi.search_config] if cfg.multi.search_config
                                                  else []), "--out", str(out), *overrides]
        outcome = run_search(scfg, out, resume=ckpt.is_file(), progress=False, command=command)
        return outcome.genotype


def _search_record(seed: int, path: Path, geno: Genotype) -> dict[str, Any]:
    prov = geno.provenance or {}
    rep = count(geno)
    return {"key": f"s{seed}|search", "seed": seed, "kind": "search", "genotype_path": str(path), "macs": rep.macs,
            "params": rep.params, "budget": prov.get("budget"), "argmax_multi_adds": prov.get("argmax_multi_adds"),
            "budget_swaps": len(prov.get("budget_swaps") or []), "expected_multi_adds": prov.get("expected_multi_adds"),
            "val_psnr": prov.get("val_psnr"), "search_seconds": prov.get("search_seconds"),
            "command": prov.get("command"), "genotype": geno.to_dict()}


def seed_models(cfg: QualityBenchConfig, seed: int, searched: Genotype) -> tuple[list[QualityModel], int]:
    """Seed ``seed``'s models (0 searched, 1 RFDN-style, 2.. random within ±tolerance) and their target."""
    target = count(searched).macs
    m = cfg.multi
    space = _default_space_for(searched)
    return [QualityModel(0, "searched", "searched", searched),
            *_compared_models(searched, target, space, m.n_random, m.tolerance, seed)], target


def held_out_part(images: SRImageSet, share: float, seed: int) -> tuple[SRImageSet, SRImageSet]:
    """(training part, held-out part) of the training images for ``seed``: the held-out images pick
    the best random net and are never trained on."""
    n_val = max(1, round(share * len(images)))
    (train_idx,), val_idx = held_out_split(len(images), n_val, seed)
    return images.subset(train_idx), images.subset(val_idx, name=f"{images.name} (held out, seed {seed})")


def _unit_dir(cfg: QualityBenchConfig, seed: int, arm: str, index: int) -> Path:
    """``<runs_dir>/seeds/s<seed>/<arm><length>_<index>_<kind>``, e.g. ``minutes5_0_searched``: runs of
    another length (the 30-minute check) sit beside, on the same searched genotype."""
    length = f"{cfg.multi.steps}" if arm == "steps" else f"{cfg.multi.minutes:g}"
    return _seed_dir(cfg, seed) / f"{arm}{length}_{index}_{_KIND_OF_INDEX.get(index, 'random')}"


def _finished(unit_dir: Path, protocol: dict[str, Any], since: float | None) -> dict[str, Any] | None:
    """The record a unit wrote under this ``protocol`` (None: none, another protocol's, or older than
    ``since`` when redoing)."""
    path = unit_dir / "record.json"
    try:
        if since is not None and path.stat().st_mtime < since:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data.get("record") if data.get("protocol") == json_safe(protocol) else None


def _train_unit(cfg: QualityBenchConfig, seed: int, arm: str, model: QualityModel, target: int, train_set: SRImageSet,
                held: SRImageSet, eval_sets: dict[str, SRImageSet], unit_dir: Path) -> dict[str, Any]:
    m = cfg.multi
    rep = count(model.genotype)
    load = [round(os.getloadavg()[0], 2)] if hasattr(os, "getloadavg") else []
    # the trainer's own validation (and its bicubic bar, inside the time budget) on one held-out image,
    # only when the run ends: no model spends its minutes on it; the scores below are on all of them
    net, stats = train_for_minutes(model.genotype, train_set, m.minutes, seed, val_set=held.subset(range(1)),
                                   run_dir=unit_dir, batch=cfg.batch, patch=cfg.patch, lr=cfg.lr, threads=cfg.threads,
                                   steps=m.steps if arm == "steps" else None, val_every=10**9)
    if load:
        load.append(round(os.getloadavg()[0], 2))
    return {
        "key": f"s{seed}|{arm}|{model.index}|{model.kind}", "seed": seed, "arm": arm, "index": model.index,
        "name": model.name, "kind": model.kind, "macs": rep.macs, "params": rep.params, "target_macs": target,
        "macs_ratio_to_target": round(rep.macs / target, 4), "train": dataclasses.asdict(stats),
        "held_out": _scores(net, {"held_out": held})["held_out"], "eval": _scores(net, eval_sets),
        "load_average_1min": load, "genotype": model.genotype.to_dict(),
    }


def _check_multi(cfg: QualityBenchConfig) -> None:
    m = cfg.multi
    problems = []
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        problems.append(f"--seeds: expected distinct seeds, got {cfg.seeds}")
    if not m.arms or any(a not in ARMS for a in m.arms):
        problems.append(f"--arms: expected some of {', '.join(ARMS)}, got {m.arms}")
    if m.steps < 1 or m.minutes <= 0:
        problems.append(f"--steps/--minutes: expected positive values, got {m.steps} and {m.minutes}")
    if m.n_random < 1:
        problems.append(f"--n-random: expected at least 1, got {m.n_random}")
    if not 0 < m.tolerance < 1 or not 0 < m.held_out < 1:
        problems.append(f"tolerance and held_out: expected fractions in (0, 1), got {m.tolerance} and {m.held_out}")
    if problems:
        raise BenchmarkError("; ".join(problems))


def _known_search_seconds(cfg: QualityBenchConfig, train_paths: list[str] | None) -> float | None:
    """How long a search took for a seed already searched with the same config (but its seed), if any."""
    for s in cfg.seeds:
        path = _seed_dir(cfg, s) / "searched.json"
        if path.is_file():
            geno = load_genotype(path)
            if _config_difference(geno, seed_search_config(cfg, s, train_paths)[0], RESUME_FREE | {"seed"}) is None:
                return (geno.provenance or {}).get("search_seconds")
    return None


def _search_probe_seconds(scfg: SearchConfig, steps: int = 3) -> float:
    """Seconds a search of ``scfg`` takes here, from a probe of ``steps`` architecture steps in a scratch
    folder (data loading included). On the high side: the weights-only warm-up steps are cheaper."""
    o = scfg.search
    probe = dataclasses.replace(scfg, name="probe", search=dataclasses.replace(o, epochs=1, warmup_epochs=0,
                                                                            steps_per_epoch=steps),
                                data=dataclasses.replace(scfg.data, val_max_images=1))
    with tempfile.TemporaryDirectory(prefix="hdnas-probe-") as d:
        probe.runs_dir = d
        t0 = time.perf_counter()
        searcher = Searcher(probe, progress=False, log=False)
        setup = time.perf_counter() - t0
        searcher.run()
        per_step = searcher.history[0]["seconds"] / steps
    return setup + o.epochs * o.steps_per_epoch * per_step


def _train_probe_seconds(scale: int, macs: float, batch: int, patch: int) -> float:
    """Seconds per training step (L1, Adam, channels-last, as the trainer) of the RFDN-style net at ``macs``."""
    net = DerivedNet(rfdn_for_macs(scale, macs)).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, patch, patch).contiguous(memory_format=torch.channels_last)
    y = torch.rand(batch, 3, patch * scale, patch * scale)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.l1_loss(net(x), y).backward()
        opt.step()

    return time_fn(step, warmup=1, repeats=3).median


def plan_line(cfg: QualityBenchConfig, searches: list[SearchConfig], known_search_s: float | None,
              units: list[tuple[int, str, int]]) -> str:
    """The CPU-time estimate printed before the protocol starts: probes where nothing was measured yet."""
    m = cfg.multi
    parts, total = [], 0.0
    if searches:
        per = known_search_s if known_search_s is not None else _search_probe_seconds(searches[0])
        how = "as the seed searched before" if known_search_s is not None else "3-step probe"
        parts.append(f"{len(searches)} search(es) at ~{per / 60:.1f} min ({how})")
        total += per * len(searches)
    n_steps = sum(1 for _, arm, _ in units if arm == "steps")
    n_minutes = len(units) - n_steps
    if n_steps:
        scfg = searches[0] if searches else seed_search_config(cfg, cfg.seeds[0], None)[0]
        macs = scfg.search.budget_macs or sum(cost_bounds(scfg.space)) / 2
        per = m.steps * _train_probe_seconds(cfg.scale, macs, cfg.batch, cfg.patch)
        parts.append(f"{n_steps} model(s) x {m.steps} steps at ~{per / 60:.1f} min (probe: RFDN-style net at "
                     f"{format_count(macs)})")
        total += per * n_steps
    if n_minutes:
        parts.append(f"{n_minutes} model(s) x {m.minutes:g} min")
        total += 60 * m.minutes * n_minutes
    if not parts:
        return "[quality] plan: nothing left to do (every record is there; --redo trains again)"
    threads = torch.get_num_threads()
    return (f"[quality] plan: {' + '.join(parts)} = ~{_duration(total)} for one process at {threads} thread(s), "
            f"~{_duration(total / 2)} as two processes side by side (evaluation adds seconds per model)")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def run_seeds_protocol(cfg: QualityBenchConfig, log: Log = print_line,
                       save: Save | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The multi-seed protocol (module docstring): records and protocol; ``save`` as in :func:`run_quality_suite`.

    Work is done unit by unit (seed, arm, model); each finished unit leaves its record in its run
    folder, so running the command again skips it (``multi.redo``: train again), and a unit that
    another process is training is left to it: the same command started twice shares the work.
    """
    _check_multi(cfg)
    m = cfg.multi
    save = save or (lambda records, protocol: None)
    n_models = 2 + m.n_random
    wanted = list(range(n_models)) if cfg.model_index is None else sorted(set(cfg.model_index))
    bad = [i for i in wanted if not 0 <= i < n_models]
    if bad:
        raise BenchmarkError(f"--model-index {bad[0]}: each seed has models 0..{n_models - 1} (0 searched, "
                             f"1 RFDN-style, 2..{n_models - 1} random)")
    train_paths, eval_paths = _data_sources(cfg)
    protocol = {
        "mode": "seeds", "scale": cfg.scale, "arms": {"steps": m.steps, "minutes": m.minutes}, "n_random": m.n_random,
        "tolerance": m.tolerance, "held_out": m.held_out, "selection": SELECTION,
        "search": {"config": m.search_config, "budget": m.budget, "overrides": list(m.search_overrides)},
        "batch": cfg.batch, "patch": cfg.patch, "lr": cfg.lr, "train_data": train_paths or ["<built-in sample set>"],
        "eval_sets": {n: (str(p) if p else "<built-in sample val set>") for n, p in eval_paths.items()},
        "trainer": TrainStats.trainer, "threads": torch.get_num_threads(),
    }
    save([], protocol)
    since = time.time() if m.redo else None
    units = [(seed, arm, i) for seed in cfg.seeds for arm in m.arms for i in wanted]
    records: list[dict[str, Any]] = []
    pending = []
    for u in units:
        rec = _finished(_unit_dir(cfg, *u), protocol, since)
        if rec is None:
            pending.append(u)
        else:
            records.append(rec)
    if records:  # the results file may be new: it gets what earlier runs finished
        save(records, protocol)
        log(f"[quality] {len(records)} model(s) already done under this protocol (in {cfg.runs_dir}/seeds)")
    seeds = [s for s in cfg.seeds if any(u[0] == s for u in pending)]
    searches = [seed_search_config(cfg, s, train_paths)[0] for s in seeds
                if not (_seed_dir(cfg, s) / "searched.json").is_file()]
    log(plan_line(cfg, searches, _known_search_seconds(cfg, train_paths), pending))
    if m.plan_only:
        return records, protocol
    images = build_dataset(train_paths, cfg.scale, "train")
    eval_sets = {n: build_dataset([str(p)] if p else None, cfg.scale, "val") for n, p in eval_paths.items()}
    if 0 in wanted and pending:
        records.append(_bicubic_record(cfg.scale, eval_sets))
        save(records[-1:], protocol)
    for s in seeds:  # search what no other process is searching; come back to the others below
        searched_genotype(cfg, s, train_paths, log, block=False)
    seeds.sort(key=lambda s: not (_seed_dir(cfg, s) / "searched.json").is_file())
    for seed in seeds:
        path = _seed_dir(cfg, seed) / "searched.json"
        searched = searched_genotype(cfg, seed, train_paths, log)  # waits for another process's search
        records.append(_search_record(seed, path, searched))
        save(records[-1:], protocol)
        models, target = seed_models(cfg, seed, searched)
        prov = searched.provenance or {}
        log(f"[quality] seed {seed}: searched {format_count(target)} Multi-Adds (argmax "
            f"{format_count(prov.get('argmax_multi_adds') or target)}, {len(prov.get('budget_swaps') or [])} swap(s)), "
            f"random nets within ±{m.tolerance:.0%}: " + ", ".join(format_count(count(q.genotype).macs) for q in models[2:]))
        train_set, held = held_out_part(images, m.held_out, seed)
        for _, arm, i in [u for u in pending if u[0] == seed]:
            unit_dir = _unit_dir(cfg, seed, arm, i)
            q = models[i]
            with file_lock(unit_dir / "claim.lock", block=False) as mine:
                if not mine:
                    log(f"[quality] s{seed} {arm} {i}: {q.name} is being trained by another process; left to it")
                    continue
                rec = _finished(unit_dir, protocol, since)  # finished by another process meanwhile
                if rec is None:
                    arm_text = f"{m.steps} steps" if arm == "steps" else f"{m.minutes:g} min"
                    log(f"[quality] s{seed} {arm} {i}: {q.name}, {format_count(count(q.genotype).macs)} Multi-Adds, "
                        f"{arm_text} ...")
                    rec = _train_unit(cfg, seed, arm, q, target, train_set, held, eval_sets, unit_dir)
                    atomic_write_json(unit_dir / "record.json", {"protocol": json_safe(protocol), "record": rec})
                    log("[quality]   " + _scores_line(rec) + f", held-out {rec['held_out']['psnr']:.2f} dB")
            records.append(rec)
            save([rec], protocol)
    return records, protocol


def _stat(values: list[float]) -> dict[str, Any]:
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else None, "n": len(values)}


def seeds_summary(records: list[dict[str, Any]], protocol: dict[str, Any]) -> dict[str, Any]:
    """Per arm: each seed's searched, best random (chosen on the held-out training images), mean random
    and RFDN-style scores; their mean ± std over seeds; the searched net's margins in dB, per seed and
    mean ± std. A seed's random kinds appear once all its random nets of that arm are scored."""
    n_random = protocol["n_random"]
    sets = list(protocol["eval_sets"])
    by_arm: dict[str, dict[int, dict[int, dict]]] = {}
    for r in records:
        if "arm" in r:
            by_arm.setdefault(r["arm"], {}).setdefault(r["seed"], {})[r["index"]] = r

    def scores(rs: list[dict]) -> dict[str, dict[str, float]]:
        return {n: {q: round(statistics.fmean(r["eval"][n][q] for r in rs), 4) for q in ("psnr", "ssim")} for n in sets}

    arms = {}
    for arm in [a for a in ARMS if a in by_arm]:
        per_seed: dict[str, dict[str, Any]] = {}
        for seed, recs in sorted(by_arm[arm].items()):
            row: dict[str, Any] = {}
            for i, kind in _KIND_OF_INDEX.items():
                if i in recs:
                    row[kind] = {"name": recs[i]["name"], "eval": scores([recs[i]])}
            rand = [recs[i] for i in range(2, 2 + n_random) if i in recs]
            if len(rand) == n_random:
                best = max(rand, key=lambda r: r["held_out"]["psnr"])
                row["best_random"] = {"name": best["name"], "held_out_psnr": best["held_out"]["psnr"],
                                      "eval": scores([best])}
                row["mean_random"] = {"eval": scores(rand)}
            per_seed[str(seed)] = row
        kinds = {}
        for kind in KINDS:
            have = [s for s, row in per_seed.items() if kind in row]
            if have:
                kinds[kind] = {"seeds": [int(s) for s in have], "eval": {
                    n: {q: _stat([per_seed[s][kind]["eval"][n][q] for s in have]) for q in ("psnr", "ssim")} for n in sets}}
        margins = {}
        for name, (a, b) in MARGINS.items():
            have = [s for s, row in per_seed.items() if a in row and b in row]
            if have:
                margins[name] = {"seeds": [int(s) for s in have], "psnr_db": {}}
                for n in sets:
                    d = {s: round(per_seed[s][a]["eval"][n]["psnr"] - per_seed[s][b]["eval"][n]["psnr"], 4) for s in have}
                    margins[name]["psnr_db"][n] = {"per_seed": d, **_stat(list(d.values()))}
        setting = f"{protocol['arms']['steps']} steps" if arm == "steps" else f"{protocol['arms']['minutes']:g} min"
        arms[arm] = {"setting": setting, "per_seed": per_seed, "kinds": kinds, "margins": margins}
    return {"selection": SELECTION, "std": "sample standard deviation over seeds (n - 1); null for one seed",
            "arms": arms}


def quality_summary(entry: dict[str, Any]) -> None:
    """The results file's ``quality`` entry gets the multi-seed summary of all its records (an update
    for :func:`hdnas.bench.common.save_suite`)."""
    if (entry.get("protocol") or {}).get("mode") == "seeds":
        entry["summary"] = seeds_summary(entry["records"], entry["protocol"])


def _mean_std(st: dict[str, Any], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{st['mean']:{sign}.2f}" + ("" if st["std"] is None else f" ± {st['std']:.2f}")


def seeds_tables(entry: dict[str, Any]) -> str:
    """Every model's scores, then per arm the kinds and margins per seed and as mean ± std."""
    records, summary = entry["records"], entry.get("summary") or {"arms": {}}
    sets = list(entry["protocol"]["eval_sets"])
    best = {(a, int(s)): row["best_random"]["name"] for a, arm in summary["arms"].items()
            for s, row in arm["per_seed"].items() if "best_random" in row}
    rows = []
    for r in sorted((r for r in records if "arm" in r), key=lambda r: (r["seed"], ARMS.index(r["arm"]), r["index"])):
        mark = " *" if best.get((r["arm"], r["seed"])) == r["name"] else ""
        rows.append([str(r["seed"]), r["arm"], str(r["index"]), r["name"] + mark, format_count(r["macs"]),
                     f"{r['macs_ratio_to_target']:.3f}", format_count(r["params"]), str(r["train"]["steps"]),
                     f"{r['held_out']['psnr']:.2f}", *[f"{r['eval'][n]['psnr']:.2f}/{r['eval'][n]['ssim']:.4f}" for n in sets]])
    if not rows:
        return "[quality] no model of the multi-seed protocol is scored yet"
    out = [format_table(["seed", "arm", "#", "model (* best random)", "MAdds", "/target", "params", "steps",
                         "held-out PSNR", *[f"{n} PSNR/SSIM" for n in sets]], rows, left=4)]
    labels = {"searched": "searched", "best_random": "best random", "mean_random": "mean random", "rfdn": "RFDN-style",
              "searched-best_random": "searched - best random", "searched-rfdn": "searched - RFDN-style"}
    for arm, a in summary["arms"].items():
        seeds = sorted(int(s) for s in a["per_seed"])
        header = [f"{arm} ({a['setting']}), PSNR dB"] + [f"s{s} {n}" for s in seeds for n in sets] + \
                 [f"{n} mean ± std" for n in sets]
        rows = []
        for kind, k in a["kinds"].items():
            cells = [f"{a['per_seed'][str(s)][kind]['eval'][n]['psnr']:.2f}" if kind in a["per_seed"][str(s)] else "-"
                     for s in seeds for n in sets]
            rows.append([labels[kind], *cells, *[_mean_std(k["eval"][n]["psnr"]) for n in sets]])
        for name, mg in a["margins"].items():
            cells = [f"{mg['psnr_db'][n]['per_seed'][str(s)]:+.2f}" if str(s) in mg["psnr_db"][n]["per_seed"] else "-"
                     for s in seeds for n in sets]
            rows.append([labels[name], *cells, *[_mean_std(mg["psnr_db"][n], signed=True) for n in sets]])
        out.append(format_table(header, rows))
    out.append(SELECTION + ".")
    return "\n\n".join(out)


def quality_report(entry: dict[str, Any]) -> str:
    """The printed report of a results file's ``quality`` entry (either protocol)."""
    if (entry.get("protocol") or {}).get("mode") == "seeds":
        return seeds_tables(entry)
    return quality_table(entry["records"])


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
    "ARMS",
    "QualityBenchConfig",
    "QualityModel",
    "SeedsConfig",
    "TrainStats",
    "held_out_part",
    "plan_line",
    "quality_models",
    "quality_report",
    "quality_summary",
    "quality_table",
    "run_quality_suite",
    "run_seeds_protocol",
    "searched_genotype",
    "seed_models",
    "seed_search_config",
    "seeds_summary",
    "seeds_tables",
    "shared_data_root",
    "train_for_minutes",
]
