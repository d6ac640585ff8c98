"""The compression config: one :class:`CompressConfig` (YAML + ``key=value`` overrides) per run.

Sections: ``drc`` (the channel-number search, :mod:`hdnas.compress.drc`), ``iterative`` (DIPNet's
prune-and-fine-tune rounds, :mod:`hdnas.compress.prune`), and the fine-tuning run's ``data``, ``train``
and ``loss`` (the retraining engine's own sections).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hdnas.core.config import ConfigError, DataConfig
from hdnas.core.run import RunError
from hdnas.train.losses import DistillConfig, DualConfig, LossConfig
from hdnas.train.trainer import TrainOptions

METHODS = ("drc", "l1", "scratch", "iterative")


class CompressError(RunError):
    """Compression cannot start or go on (bad rate, wrong checkpoint, non-finite loss)."""


@dataclass
class DRCOptions:
    steps: int = 200  # channel-search steps (one architecture + one weight update each)
    factors: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5])  # × (1 − rate)·C
    round_to: int = 4
    w_lr: float = 1e-4  # the net and D during the search
    a_lr: float = 0.05
    a_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    a_weight_decay: float = 0.0
    order: int = 1  # 1: first order; 2: unrolled (the Architect's finite-difference Hessian-vector product)
    penalty_weight: float = 1.0
    dual_weight: float = 0.1  # λ of the dual term, as in DRN
    tolerance: float = 0.05  # final widths: exact Multi-Adds within ±tolerance of the target
    saliency_batches: int = 8
    search_fraction: float = 0.3  # share of --minutes for the channel search (the rest fine-tunes)
    save_every: int = 50
    log_every: int = 10

    def validate(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"drc.steps: expected 0 or more, got {self.steps}")
        if not self.factors or any(not f > 0 for f in self.factors):
            raise ConfigError(f"drc.factors: expected positive numbers, got {self.factors}")
        if self.round_to < 1:
            raise ConfigError(f"drc.round_to: expected at least 1, got {self.round_to}")
        if self.order not in (1, 2):
            raise ConfigError(f"drc.order: expected 1 or 2, got {self.order}")
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"drc.tolerance: expected a fraction in (0, 1), got {self.tolerance}")
        if not 0 <= self.search_fraction < 1:
            raise ConfigError(f"drc.search_fraction: expected a fraction in [0, 1), got {self.search_fraction}")
        if self.saliency_batches < 1 or self.save_every < 1 or self.log_every < 1:
            raise ConfigError("drc.saliency_batches, drc.save_every and drc.log_every: expected at least 1")


@dataclass
class IterativeOptions:
    """DIPNet's iterative pruning: each round cuts ``step_rate`` of every prunable layer's channels by
    filter L1 norm and fine-tunes; it stops when the held-out PSNR falls more than ``tolerance`` dB
    below the unpruned net's, and keeps the last round that did not."""

    step_rate: float = 0.1  # share of each layer's current channels cut per round (at least one)
    tolerance: float = 0.05  # dB below the unpruned net on the held-out training images
    max_rounds: int = 10  # with --minutes, each round fine-tunes for minutes / max_rounds
    min_width: int = 4  # a layer is not cut below this many channels

    def validate(self) -> None:
        if not 0 < self.step_rate < 1:
            raise ConfigError(f"iterative.step_rate: expected a fraction in (0, 1), got {self.step_rate}")
        if not self.tolerance >= 0:
            raise ConfigError(f"iterative.tolerance: expected 0 or more (dB), got {self.tolerance}")
        if self.max_rounds < 1:
            raise ConfigError(f"iterative.max_rounds: expected at least 1, got {self.max_rounds}")
        if self.min_width < 1:
            raise ConfigError(f"iterative.min_width: expected at least 1, got {self.min_width}")


def _finetune_defaults() -> TrainOptions:
    return TrainOptions(steps=1000, lr=2e-4, val_every=100)


@dataclass
class CompressConfig:
    name: str = ""
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    runs_dir: str = "runs"
    method: str = "drc"  # drc | l1 | scratch | iterative
    rate: float = 0.3  # channel pruning rate p in (0, 1) (drc, and the baselines without --widths)
    minutes: Optional[float] = None  # total wall-clock: channel search (or every round) + fine-tuning
    data: DataConfig = field(default_factory=DataConfig)
    drc: DRCOptions = field(default_factory=DRCOptions)
    iterative: IterativeOptions = field(default_factory=IterativeOptions)
    train: TrainOptions = field(default_factory=_finetune_defaults)  # fine-tuning (and scratch training)
    # fine-tuning: L1 + dual regression (DRC's objective; stated here, the retraining default is off) + distillation
    loss: LossConfig = field(default_factory=lambda: LossConfig(dual=DualConfig(enabled=True),
                                                                distill=DistillConfig(enabled=True)))
    teacher_cache: bool = False  # teacher.cache of the fine-tuning: biased targets (hdnas.train.teacher)

    def validate(self) -> None:
        check_rate(self.rate)
        if self.method not in METHODS:
            raise ConfigError(f"method: expected one of {', '.join(METHODS)}, got '{self.method}'")
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"minutes: expected a positive number, got {self.minutes}")


def check_rate(rate) -> float:
    """The rate as a float in (0, 1), or a :class:`ConfigError` naming it."""
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ConfigError(f"rate: expected a number in (0, 1), got {rate!r}") from None
    if not 0 < value < 1:  # also refuses nan
        raise ConfigError(f"rate: expected a number in (0, 1) (the share of channels pruned), got {rate!r}")
    return value
