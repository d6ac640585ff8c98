"""Norm-based pruning: DRC's baselines at given widths, DIPNet's iterative pruning, and the
fine-tuning every method shares.

* :func:`l1_prune` — L1-norm filter pruning (Li et al., 2017): each layer keeps the channels whose
  producing filters have the largest L1 norm; then :func:`finetune`, as DRC.
* :func:`train_from_scratch` — the pruned genotype (same widths) trained from a fresh init.
* :func:`iterative_prune` — DIPNet: rounds of :func:`l1_prune` by ``iterative.step_rate`` of every
  layer's channels, each followed by :func:`finetune` with the unpruned net as teacher, until the
  PSNR on the held-out training images falls more than ``iterative.tolerance`` dB below the
  unpruned net's; the last round that stayed within it is kept.

A benchmark compares methods at the same widths (a DRC run's ``genotype.json``:
:func:`widths_of`) and the same total wall-clock (``minutes``).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from hdnas.core.atomic import atomic_path
from hdnas.core.cost import count
from hdnas.core.data import SRImageSet
from hdnas.core.evaluation import evaluate_model
from hdnas.core.genotype import Genotype
from hdnas.core.inference import upscale
from hdnas.core.network import DerivedNet
from hdnas.core.run import build_data, save_checkpoint
from hdnas.core.surgery import prunable_widths, prune
from hdnas.core.weights import CHECKPOINT_FORMAT, load_model
from hdnas.compress.config import CompressConfig, CompressError
from hdnas.compress.drc import layer_modules, load_dual_state, ranking, widths_genotype
from hdnas.train.teacher import TeacherConfig
from hdnas.train.trainer import RetrainConfig, Trainer, TrainResult


def widths_of(genotype: Genotype) -> dict[str, int]:
    """Layer -> width of a (pruned) genotype: what another method is given to prune to."""
    return prunable_widths(genotype)


def l1_scores(net: DerivedNet) -> dict[str, torch.Tensor]:
    """Layer -> the L1 norm of each channel's producing filter (weights and bias)."""
    out = {}
    for name in prunable_widths(net.genotype):
        conv = layer_modules(net, name)[0]
        w = conv.weight.detach().abs().flatten(1).sum(1)
        out[name] = w + (conv.bias.detach().abs() if conv.bias is not None else 0)
    return out


def l1_keep(net: DerivedNet, widths: dict[str, int]) -> dict[str, list[int]]:
    """Layer -> the ``widths[layer]`` channels of largest filter L1 norm (sorted indices)."""
    scores = l1_scores(net)
    return {name: sorted(ranking(scores[name])[:w].tolist()) for name, w in widths.items()}


def l1_prune(net: DerivedNet, widths: dict[str, int]) -> DerivedNet:
    return prune(net, l1_keep(net, widths))


def retrain_config(cfg: CompressConfig, minutes: float | None, distill: bool) -> RetrainConfig:
    """The fine-tuning (or scratch) run's config: the compression config's data, train and loss
    sections, ``minutes`` of wall-clock, the distillation term on only with a teacher."""
    loss = copy.deepcopy(cfg.loss)
    loss.distill.enabled = distill and loss.distill.enabled
    if not (loss.l1.enabled or loss.dual.enabled or loss.distill.enabled):
        loss.l1.enabled = True
    train = copy.deepcopy(cfg.train)
    train.minutes = minutes if minutes is None else max(minutes, 0.0)
    return RetrainConfig(name=cfg.name, seed=cfg.seed, device=cfg.device, threads=cfg.threads, runs_dir=cfg.runs_dir,
                         data=copy.deepcopy(cfg.data), train=train, loss=loss,
                         teacher=TeacherConfig(cache=cfg.teacher_cache))


Clock = Callable[[], float]


def _train(rcfg: RetrainConfig, genotype: Genotype, out, init: nn.Module | None, teacher: nn.Module | None, *,
           resume: bool, force: bool, train_set, val_set, progress: bool, log: bool, clock: Clock,
           dual_state: dict | None = None) -> TrainResult:
    trainer = Trainer(rcfg, genotype, out, teacher=teacher, train_set=train_set, val_set=val_set,
                      progress=progress, log=log, clock=clock)
    if not (resume and trainer.resume(missing_ok=True)):
        trainer.start(force=force)
        if trainer.dual is not None:  # the dual model is part of what is fine-tuned, as in DRC's search
            load_dual_state(trainer.dual, dual_state, rcfg.loss.dual.features)
        if init is not None:  # scored and saved before any step: what surgery alone kept is a best.pt candidate
            trainer.model.load_state_dict(init.state_dict())  # (fine-tuning a converged net can lose to it)
            trainer.score_start()
    return trainer.run()


def finetune(pruned: DerivedNet, teacher: nn.Module | None, cfg: CompressConfig, out: str | os.PathLike,
             minutes: float | None = None, *, resume: bool = False, force: bool = False,
             train_set: SRImageSet | None = None, val_set: SRImageSet | None = None, progress: bool = True,
             log: bool = True, clock: Clock = time.monotonic, dual_state: dict | None = None) -> TrainResult:
    """Train ``pruned`` from its own weights with ``teacher`` (the unpruned net) for ``loss.distill``;
    writes ``out/best.pt`` and ``out/last.pt`` (retrain checkpoints). ``resume`` continues ``out/last.pt``
    when there is one. ``clock`` measures ``minutes`` (``time.process_time``: CPU time). ``dual_state``:
    the source run's dual model, which the dual term starts from (its width does not depend on the net's)."""
    if type(pruned) is not DerivedNet:
        raise CompressError(f"fine-tuning expects a plain DerivedNet, got {type(pruned).__name__}")
    rcfg = retrain_config(cfg, minutes, distill=teacher is not None)
    return _train(rcfg, pruned.genotype, out, pruned, teacher, resume=resume, force=force, train_set=train_set,
                  val_set=val_set, progress=progress, log=log, clock=clock, dual_state=dual_state)


def train_from_scratch(genotype: Genotype, widths: dict[str, int], cfg: CompressConfig, out: str | os.PathLike,
                       minutes: float | None = None, *, resume: bool = False, force: bool = False,
                       train_set: SRImageSet | None = None, val_set: SRImageSet | None = None,
                       progress: bool = True, log: bool = True, clock: Clock = time.monotonic) -> TrainResult:
    """The genotype at ``widths`` trained from a fresh init, no teacher (the from-scratch baseline)."""
    rcfg = retrain_config(cfg, minutes, distill=False)
    return _train(rcfg, widths_genotype(genotype, widths), out, None, None, resume=resume, force=force,
                  train_set=train_set, val_set=val_set, progress=progress, log=log, clock=clock)


# ---------------------------------------------------------------------------------- iterative (DIPNet)


def next_widths(widths: dict[str, int], step_rate: float, min_width: int) -> dict[str, int]:
    """Each layer's width after one round: ``(1 − step_rate)`` of it, rounded, at least one channel
    fewer, never below ``min_width`` (a layer already there stays)."""
    return {name: w if w <= min_width else max(min_width, min(w - 1, round(w * (1 - step_rate))))
            for name, w in widths.items()}


@torch.no_grad()
def held_out_psnr(net: nn.Module, val_set: SRImageSet, tile: int | None = None) -> float:
    """Y-PSNR of ``net`` on ``val_set`` as the fine-tuning run's validation scores it."""
    device = next(net.parameters()).device
    return float(evaluate_model(lambda x: upscale(net, x, tile=tile), val_set, val_set.scale, device=device)["psnr"])


@dataclass
class IterativeRound:
    index: int  # 1-based
    widths: dict[str, int]
    macs: int
    params: int
    val_psnr: float  # best held-out PSNR of the round's fine-tuning
    drop: float  # the unpruned net's held-out PSNR minus val_psnr (dB)
    kept: bool  # within the tolerance
    steps: int
    seconds: float
    run_dir: str


@dataclass
class IterativeResult:
    net: DerivedNet  # the last good net (the unpruned one when round 1 already fell too far)
    kept_round: int  # 0: none kept
    reference_psnr: float  # the unpruned net on the held-out images
    stopped: str  # tolerance | max_rounds | min_width
    rounds: list[IterativeRound] = field(default_factory=list)
    train: TrainResult | None = None  # the kept round's fine-tuning

    def summary(self) -> dict:
        """What the genotype's provenance and a benchmark record keep of the rounds."""
        return {"reference_psnr": self.reference_psnr, "kept_round": self.kept_round, "stopped": self.stopped,
                "rounds": [asdict(r) for r in self.rounds]}


def iterative_prune(net: DerivedNet, cfg: CompressConfig, out: str | os.PathLike, minutes: float | None = None, *,
                    resume: bool = False, force: bool = False, train_set: SRImageSet | None = None,
                    val_set: SRImageSet | None = None, progress: bool = True, log: bool = True,
                    clock: Clock = time.monotonic, dual_state: dict | None = None) -> IterativeResult:
    """DIPNet's iterative pruning of ``net`` (module docstring): round r fine-tunes in ``out/round{r}``;
    the last good net is written to ``out/best.pt`` (a retrain checkpoint: ``load_model`` reads it).

    ``minutes``: the whole budget, split evenly over ``iterative.max_rounds`` rounds (a run that stops
    early uses less); without it each round runs ``train.steps``. ``resume`` continues the rounds whose
    folders hold a checkpoint (finished rounds return at once).
    """
    if type(net) is not DerivedNet:
        raise CompressError(f"iterative pruning expects a plain DerivedNet, got {type(net).__name__}")
    opts = cfg.iterative
    out = Path(out)
    if train_set is None or val_set is None:
        (t,), v = build_data(cfg.data, net.genotype.scale, cfg.seed)
        train_set, val_set = train_set or t, val_set or v
    t0 = clock()
    reference = held_out_psnr(net, val_set, cfg.data.val_tile)
    per_round = None if minutes is None else max(minutes - (clock() - t0) / 60.0, 0.0) / opts.max_rounds
    current, kept, kept_ckpt, kept_train = net, 0, None, None
    rounds: list[IterativeRound] = []
    stopped = "max_rounds"
    for r in range(1, opts.max_rounds + 1):
        widths = prunable_widths(current.genotype)
        target = next_widths(widths, opts.step_rate, opts.min_width)
        if target == widths:
            stopped = "min_width"
            break
        run_dir = out / f"round{r}"
        res = finetune(l1_prune(current, target), net, cfg, run_dir, per_round, resume=resume, force=force,
                       train_set=train_set, val_set=val_set, progress=progress, log=log, clock=clock,
                       dual_state=dual_state)
        rep = count(widths_genotype(current.genotype, target))
        drop = reference - res.best_psnr
        good = drop <= opts.tolerance
        rounds.append(IterativeRound(r, target, rep.macs, rep.params, res.best_psnr, drop, good, res.step,
                                     round(res.seconds, 1), str(run_dir)))
        if not good:
            stopped = "tolerance"
            break
        kept, kept_ckpt, kept_train = r, run_dir / "best.pt", res
        current = load_model(kept_ckpt)[0]
    dest = out / "best.pt"
    if kept_ckpt is not None:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(kept_ckpt.read_bytes())
    else:  # nothing could be cut within the tolerance: the unpruned net, as a retrain checkpoint
        save_checkpoint({"format": CHECKPOINT_FORMAT, "genotype": net.genotype.to_dict(),
                         "scale": net.genotype.scale, "model": net.state_dict(), "ema": None}, dest)
    return IterativeResult(current, kept, reference, stopped, rounds, kept_train)
