"""Loss terms of retraining, each switched and weighted by its own config section.

A term is a callable ``LossInputs -> scalar tensor`` registered under its config name; the
:class:`CompositeLoss` adds the enabled ones with their weights and reports each part, so a new
term (a depth constraint, a feature-distillation loss) is one function, one config section and
one ``TERMS`` entry. Terms:

* ``l1``: ``mean(w · |SR − HR|)``; ``w`` is the importance map when importance learning is on, else 1.
* ``dual``: ``L1(D(SR), LR)``, D the dual model of :mod:`hdnas.train.dual` (DRN; default weight 0.1).
* ``distill``: ``L1(SR, T(LR))`` with T a frozen teacher network.
* ``feature_distill``: multi-anchor feature distillation (DIPNet, :mod:`hdnas.train.distill`): the mean
  over anchors of ``L1(A_k(S_k), T_k)``, S_k / T_k the student's / teacher's features after paired
  cells and A_k a learned 1×1 aligner; use it beside ``distill``, the output term.

The pixel term ``l1`` becomes ``mean(w · (SR − HR)²)`` when a progressive-learning stage asks for L2
(``LossInputs.pixel``; :class:`hdnas.train.trainer.ProgressiveStage`).

Adaptive importance learning (Zhang et al.) lives here too: :class:`ImportanceLearner`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from hdnas.core.errors import ConfigError

# ------------------------------------------------------------------------------------------ configs


@dataclass
class L1Config:
    enabled: bool = True
    weight: float = 1.0


@dataclass
class DualConfig:
    enabled: bool = False  # off by default: no equal-steps run showed it helping (README, ablation)
    weight: float = 0.1  # λ_dual of DRN
    features: int = 16


@dataclass
class DistillConfig:
    """L1 to a frozen teacher's output; needs ``teacher.genotype`` + ``teacher.weights`` (or a module)."""

    enabled: bool = False
    weight: float = 1.0


@dataclass
class FeatureDistillConfig:
    """Multi-anchor feature distillation; needs a teacher with cells (a trained hdnas net, zoo rfdn/imdn_space)."""

    enabled: bool = False
    weight: float = 0.1  # cell features are larger than pixel errors; 0.1 keeps the output terms leading


@dataclass
class ImportanceConfig:
    """Adaptive importance learning; without a teacher w0 = 1, so every weight is 1 (plain L1)."""

    enabled: bool = False
    alpha: float = 100.0  # steepness of the teacher-error sigmoid
    b: float = 0.01  # teacher-error threshold, [0, 1] intensities
    sigma: float = 10.0  # decay of exp(−σ·e)
    lam: float = 0.15  # λ of round 1
    rho: float = 0.15  # λ grows by ρ per round
    round_steps: int = 500  # steps per round; round r covers steps [r·n, (r+1)·n)
    # rounds > 0: the run in that many equal rounds by run fraction instead (the time fraction under
    # --minutes, as the learning rate reads it), so the easy-to-hard schedule fits a run of any length
    rounds: int = 0
    normalize: bool = False  # divide the map by its batch mean: mean weight 1, the loss scale kept

    def validate(self) -> None:
        if self.round_steps < 1:
            raise ConfigError(f"loss.importance.round_steps: expected at least 1, got {self.round_steps}")
        if self.rounds < 0:
            raise ConfigError(f"loss.importance.rounds: expected 0 (use round_steps) or more, got {self.rounds}")
        if self.sigma < 0 or self.alpha < 0:
            raise ConfigError("loss.importance.alpha and .sigma: expected non-negative numbers")


@dataclass
class LossConfig:
    l1: L1Config = field(default_factory=L1Config)
    dual: DualConfig = field(default_factory=DualConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    feature_distill: FeatureDistillConfig = field(default_factory=FeatureDistillConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)

    def validate(self) -> None:
        for name in TERMS:
            if getattr(self, name).weight < 0:
                raise ConfigError(f"loss.{name}.weight: expected a non-negative number")
        if not any(getattr(self, n).enabled for n in TERMS):
            raise ConfigError("loss: every term is disabled (enable at least loss.l1)")


# ------------------------------------------------------------------------------------------ terms


@dataclass
class LossInputs:
    """What one training step hands the loss terms (HR-sized tensors are (B, 3, sH, sW))."""

    lr: torch.Tensor
    hr: torch.Tensor
    sr: torch.Tensor
    teacher_sr: Optional[torch.Tensor] = None
    importance: Optional[torch.Tensor] = None  # (B, 1, sH, sW) in [0, 1]
    dual: Optional[nn.Module] = None
    pixel: str = "l1"  # the pixel term's norm: l1 | l2 (progressive learning's last stage)
    student_features: Optional[list[torch.Tensor]] = None  # at the anchors, before alignment
    teacher_features: Optional[list[torch.Tensor]] = None
    aligners: Optional[nn.Module] = None  # student features -> teacher channels (hdnas.train.distill.Aligners)


def weighted_l1(sr: torch.Tensor, hr: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(w · |sr − hr|)`` over every element; ``w`` (B, 1, H, W) broadcasts over channels.

    Not renormalised by ``mean(w)``: this is the importance objective ``Σ w·ℓ`` itself, so pixels
    with low importance really contribute less (and the loss scale drops with the mean weight).
    """
    if weights is None:
        return F.l1_loss(sr, hr)
    return (weights * (sr - hr).abs()).mean()


def weighted_l2(sr: torch.Tensor, hr: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(w · (sr − hr)²)``, the MSE counterpart of :func:`weighted_l1`."""
    if weights is None:
        return F.mse_loss(sr, hr)
    return (weights * (sr - hr).square()).mean()


PIXEL_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"l1": weighted_l1, "l2": weighted_l2}


def l1_term(x: LossInputs) -> torch.Tensor:
    """The pixel term: weighted L1, or weighted L2 when ``x.pixel == "l2"``."""
    if x.pixel not in PIXEL_LOSSES:
        raise ValueError(f"unknown pixel loss '{x.pixel}' (known: {', '.join(PIXEL_LOSSES)})")
    return PIXEL_LOSSES[x.pixel](x.sr, x.hr, x.importance)


def dual_term(x: LossInputs) -> torch.Tensor:
    if x.dual is None:
        raise ValueError("loss term 'dual' needs a dual model")
    return F.l1_loss(x.dual(x.sr), x.lr)


def distill_term(x: LossInputs) -> torch.Tensor:
    if x.teacher_sr is None:
        raise ValueError("loss term 'distill' needs a teacher output")
    return F.l1_loss(x.sr, x.teacher_sr)


def feature_distill_term(x: LossInputs) -> torch.Tensor:
    if x.student_features is None or x.teacher_features is None or x.aligners is None:
        raise ValueError("loss term 'feature_distill' needs student and teacher features and the aligners")
    aligned = x.aligners(x.student_features)
    return sum(F.l1_loss(s, t) for s, t in zip(aligned, x.teacher_features)) / len(aligned)


TERMS: dict[str, Callable[[LossInputs], torch.Tensor]] = {
    "l1": l1_term,
    "dual": dual_term,
    "distill": distill_term,
    "feature_distill": feature_distill_term,
}


class CompositeLoss:
    """Weighted sum of the enabled terms; returns the total and each unweighted part (for logs)."""

    def __init__(self, terms: list[tuple[str, float]]):
        for name, _ in terms:
            if name not in TERMS:
                raise ConfigError(f"unknown loss term '{name}' (known: {', '.join(TERMS)})")
        self.terms = list(terms)

    @classmethod
    def from_config(cls, cfg: LossConfig) -> "CompositeLoss":
        return cls([(n, getattr(cfg, n).weight) for n in TERMS if getattr(cfg, n).enabled])

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.terms]

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: TERMS[name](inputs) for name, _ in self.terms}
        total = sum(w * parts[n] for n, w in self.terms)
        assert isinstance(total, torch.Tensor)
        return total, parts


# ------------------------------------------------------------------------------------- importance


def pixel_error(pred: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Per-pixel error map ``mean_c |pred − hr|``, shape (B, 1, H, W), on [0, 1] intensities."""
    return (pred - hr).abs().mean(dim=1, keepdim=True)


def teacher_importance(e_teacher: torch.Tensor, alpha: float = 100.0, b: float = 0.01) -> torch.Tensor:
    """Round-0 importance ``w0 = s(e_T) / s(0)``, ``s(e) = 1 / (1 + exp(α(e − b)))``.

    Pixels the teacher reconstructs well (e_T below b) start near 1, pixels it gets wrong near 0:
    the student first learns what is learnable. ``s`` is the logistic function of ``−α(e − b)``.
    """
    return torch.sigmoid(-alpha * (e_teacher - b)) / (1.0 / (1.0 + math.exp(-alpha * b)))


def importance_weights(w0: torch.Tensor | float, error: torch.Tensor, lam: float, sigma: float = 10.0) -> torch.Tensor:
    """Importance of round r ≥ 1: ``w = clamp(w0 + λ_r·exp(−σ·e), 0, 1)``.

    This is the closed-form minimiser, pixel by pixel, of the convex importance subproblem

        min_{w ∈ [0, 1]}  w·e + f(w),   f(w) = (1/σ)·[u·ln(u/λ) − u + λ],   u = w − w0 ≥ 0

    (``f(w) = +∞`` for ``w < w0``). ``f`` is the generalised Kullback-Leibler divergence
    ``KL(u ‖ λ)`` of the importance *increment* ``u`` from ``λ``, scaled by the temperature 1/σ.
    Stationarity: ``e + f'(w) = e + (1/σ)·ln(u/λ) = 0`` gives ``u = λ·exp(−σ·e)``; ``f'' = 1/(σu) > 0``,
    so the objective is strictly convex, and the minimiser over the interval ``[max(0, w0), 1]`` is
    the unconstrained one clipped to it: the clamp (its lower end never binds, as ``u ≥ 0``).
    Reading: the penalty raises every pixel's importance by λ, the loss term ``w·e`` holds back the
    increase where the student's error ``e`` is large; easy pixels are raised first, and growing λ
    round by round brings in the harder ones (easy-to-complex curriculum).
    """
    return (w0 + lam * torch.exp(-sigma * error)).clamp(0.0, 1.0)


def round_lambda(r: int, lam: float = 0.15, rho: float = 0.15) -> float:
    """λ_r = λ + ρ·(r − 1) for round r ≥ 1; round 0 (teacher-only weights) has λ_0 = 0."""
    return 0.0 if r <= 0 else lam + rho * (r - 1)


class ImportanceLearner:
    """Per-pixel importance maps, computed per patch on the fly; rounds switch at fixed steps
    (``round_steps``) or at fixed fractions of the run (``rounds``).

    Round 0: ``w = w0`` (from the teacher's error, or 1 without a teacher). At the first step of
    round r ≥ 1 the student is copied and frozen; during the round ``e`` is that frozen copy's
    error on the current patch. Nothing is stored per image: the state is the round and the
    frozen copy's weights (in checkpoints, so a resumed run continues exactly). With ``normalize``
    the map is divided by its mean over the batch (the trainer takes that mean over every process),
    so importance redistributes the loss over pixels instead of also shrinking it.
    """

    def __init__(self, cfg: ImportanceConfig):
        self.cfg = cfg
        self.round = 0
        self.frozen: nn.Module | None = None
        self.last: torch.Tensor | None = None  # the latest map, for logging

    def round_at(self, step: int, fraction: float = 0.0) -> int:
        """The round of ``step``; with ``rounds`` set, of the run ``fraction`` (in [0, 1]) instead."""
        if self.cfg.rounds > 0:
            return min(int(fraction * self.cfg.rounds), self.cfg.rounds - 1)
        return step // self.cfg.round_steps

    def lam(self, r: int | None = None) -> float:
        return round_lambda(self.round if r is None else r, self.cfg.lam, self.cfg.rho)

    def begin_step(self, step: int, student: nn.Module, fraction: float = 0.0) -> bool:
        """Enter the round of ``step`` (at run ``fraction``), freezing a copy of ``student`` when a new round starts."""
        r = self.round_at(step, fraction)
        if r == self.round and (r == 0 or self.frozen is not None):
            return False
        self.round = r
        self.frozen = self._freeze(student) if r >= 1 else None
        return True

    @staticmethod
    def _freeze(student: nn.Module) -> nn.Module:
        frozen = copy.deepcopy(student)
        frozen.eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        return frozen

    @torch.no_grad()
    def weights(
        self,
        lr: torch.Tensor,
        hr: torch.Tensor,
        teacher_sr: torch.Tensor | None = None,
        batch_mean: Callable[[float], float] | None = None,
    ) -> torch.Tensor | None:
        """The (B, 1, H, W) importance map of a batch, or None when every weight would be 1.

        Without a teacher w0 = 1 and the clamp makes every weight exactly 1 in every round, so
        no frozen forward is spent on it. ``batch_mean`` turns this process's mean weight into the
        global batch's (under ``torchrun``) for ``normalize``.
        """
        if teacher_sr is None:
            self.last = None
            return None
        w0 = teacher_importance(pixel_error(teacher_sr, hr), self.cfg.alpha, self.cfg.b)
        if self.round == 0 or self.frozen is None:
            w = w0
        else:
            w = importance_weights(w0, pixel_error(self.frozen(lr), hr), self.lam(), self.cfg.sigma)
        self.last = w
        if self.cfg.normalize:
            mean = float(w.mean())
            w = w / max(batch_mean(mean) if batch_mean is not None else mean, 1e-8)
        return w

    def state_dict(self) -> dict:
        return {"round": self.round, "frozen": None if self.frozen is None else self.frozen.state_dict()}

    def load_state_dict(self, state: dict, student: nn.Module) -> None:
        self.round = int(state["round"])
        self.frozen = None
        if state.get("frozen") is not None:
            self.frozen = self._freeze(student)
            self.frozen.load_state_dict(state["frozen"])
