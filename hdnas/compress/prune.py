"""The baselines of DRC at given widths, and the fine-tuning every method shares.

* :func:`l1_prune` — L1-norm filter pruning (Li et al., 2017): each layer keeps the channels whose
  producing filters have the largest L1 norm; then :func:`finetune`, as DRC.
* :func:`train_from_scratch` — the pruned genotype (same widths) trained from a fresh init.

A benchmark compares methods at the same widths (a DRC run's ``genotype.json``:
:func:`widths_of`) and the same total wall-clock (``minutes``).
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn as nn

from hdnas.core.data import SRImageSet
from hdnas.core.genotype import Genotype
from hdnas.core.network import DerivedNet
from hdnas.core.surgery import prunable_widths, prune
from hdnas.compress.drc import CompressConfig, CompressError, layer_modules, ranking, widths_genotype
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
                         data=copy.deepcopy(cfg.data), train=train, loss=loss)


def _train(rcfg: RetrainConfig, genotype: Genotype, out, init: nn.Module | None, teacher: nn.Module | None, *,
           resume: bool, force: bool, train_set, val_set, progress: bool, log: bool) -> TrainResult:
    trainer = Trainer(rcfg, genotype, out, teacher=teacher, train_set=train_set, val_set=val_set,
                      progress=progress, log=log)
    if not (resume and trainer.resume(missing_ok=True)):
        trainer.start(force=force)
        if init is not None:
            trainer.model.load_state_dict(init.state_dict())
    return trainer.run()


def finetune(pruned: DerivedNet, teacher: nn.Module | None, cfg: CompressConfig, out: str | os.PathLike,
             minutes: float | None = None, *, resume: bool = False, force: bool = False,
             train_set: SRImageSet | None = None, val_set: SRImageSet | None = None, progress: bool = True,
             log: bool = True) -> TrainResult:
    """Train ``pruned`` from its own weights with ``teacher`` (the unpruned net) for ``loss.distill``;
    writes ``out/best.pt`` and ``out/last.pt`` (retrain checkpoints). ``resume`` continues ``out/last.pt``
    when there is one."""
    if type(pruned) is not DerivedNet:
        raise CompressError(f"fine-tuning expects a plain DerivedNet, got {type(pruned).__name__}")
    rcfg = retrain_config(cfg, minutes, distill=teacher is not None)
    return _train(rcfg, pruned.genotype, out, pruned, teacher, resume=resume, force=force, train_set=train_set,
                  val_set=val_set, progress=progress, log=log)


def train_from_scratch(genotype: Genotype, widths: dict[str, int], cfg: CompressConfig, out: str | os.PathLike,
                       minutes: float | None = None, *, resume: bool = False, force: bool = False,
                       train_set: SRImageSet | None = None, val_set: SRImageSet | None = None,
                       progress: bool = True, log: bool = True) -> TrainResult:
    """The genotype at ``widths`` trained from a fresh init, no teacher (the from-scratch baseline)."""
    rcfg = retrain_config(cfg, minutes, distill=False)
    return _train(rcfg, widths_genotype(genotype, widths), out, None, None, resume=resume, force=force,
                  train_set=train_set, val_set=val_set, progress=progress, log=log)
