"""Retraining a genotype into a trained upscaler: one loop, pluggable loss terms.

One :class:`RetrainConfig` (YAML + ``key=value`` overrides) describes a run; :class:`Trainer` runs
it. Loss terms (:mod:`hdnas.train.losses`): L1, dual regression (a learned downsampler D maps SR back to
LR, with its own optimiser), adaptive importance weights, distillation from a frozen teacher.

The loop stands on the run scaffold (:class:`hdnas.core.run.Run`: checkpoints, resume rules, seeded
batches, held-out split, TensorBoard, progress). Exact resume: the schedules are pure functions of
the step, and checkpoints hold everything else that evolves (model, D, both optimisers and
schedulers, EMA, the importance round and its frozen student, the step), so a run killed and
resumed ends with the same weights, bit for bit on CPU, as one that never stopped.

Re-parameterisation (``reparam.enabled``, :mod:`hdnas.train.reparam`): the net trains with
multi-branch convs; checkpoints hold the *folded* plain net in ``model`` and ``ema`` (what
``load_model``, evaluation and export read, at no inference cost), and the branch weights in
``reparam`` (with the optimiser state, what resuming needs). Validation scores the folded net, i.e.
exactly what is saved. The EMA averages the branch weights and is folded when read.

Multi-anchor distillation (``loss.feature_distill``, :mod:`hdnas.train.distill`): the student's
features after its live cells are pulled toward the teacher's after paired cells, through learned
1×1 aligners that train in the student's optimiser (a second parameter group) and sit in checkpoints
under ``aligners``, outside ``model``: the saved net is the plain one.

The teacher (``teacher.*``, :mod:`hdnas.train.teacher`): any trained net. It runs once per step on
the batch; with ``teacher.cache`` its outputs on the whole training images are computed once when the
trainer is built and each batch crops them at the patches' windows, so a step runs no teacher (faster,
but a target that differs from the teacher's patch forward). Importance rounds switch at
``round_steps`` or, with ``loss.importance.rounds``, at fractions of the run (:func:`run_fraction`).

Progressive learning (``train.progressive``, :class:`ProgressiveStage`): the LR patch grows stage by
stage and a stage may switch the pixel term to L2. The stage is a pure function of the step (and of
the ``--minutes`` time fraction, as the learning rate is; :func:`stage_index`) and the batch of a step
is drawn from that step's generator at that stage's patch size, so resuming stays exact.

Scale-out: under ``torchrun`` each process takes an equal shard of the global batch and gradients
are averaged explicitly (``DistContext.all_reduce_mean``) rather than through
``DistributedDataParallel``: the step also runs a teacher, a frozen student and the dual model,
whose forwards must not trigger DDP's hooks, and the mean of equal-shard means is the global mean,
so N processes make the same update as one (up to float summation order).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from hdnas.core.adaptive import AdaptiveConfig, AdaptiveNet
from hdnas.core.config import ConfigError, DataConfig, load_config, to_dict
from hdnas.core.data import SRImageSet
from hdnas.core.distributed import DistContext, init_distributed
from hdnas.core.evaluation import bicubic_model, evaluate_model
from hdnas.core.genotype import Genotype, load_genotype
from hdnas.core.inference import upscale
from hdnas.core.network import DerivedNet
from hdnas.core.run import Run, RunError, build_data, patch_datasets
from hdnas.core.errors import HdnasError
from hdnas.core.weights import CHECKPOINT_FORMAT, genotype_mismatch, load_backbone
from hdnas.train.adaptive import block_gain, depth_loss, gain_loss, sample_depths
from hdnas.train.distill import FeatureDistiller
from hdnas.train.dual import DualModel
from hdnas.train.losses import CompositeLoss, ImportanceLearner, LossConfig, LossInputs
from hdnas.train.reparam import ReparamConfig, fold, reparameterise
from hdnas.train.teacher import TeacherConfig, TeacherOutputs, build_teacher

class TrainError(RunError):
    """Retraining cannot start or go on (non-finite loss, mismatched checkpoint, bad data)."""


# ------------------------------------------------------------------------------------------ config


PIXEL_LOSS_NAMES = ("l1", "l2")


@dataclass
class ProgressiveStage:
    """One stage of progressive learning: up to the run fraction ``until``, patches of ``patch`` LR
    pixels (None: ``data.patch``) and the pixel loss ``loss`` (l1 | l2)."""

    until: float = 1.0
    patch: Optional[int] = None
    loss: str = "l1"


@dataclass
class TrainOptions:
    steps: int = 2000
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | multistep | constant
    lr_min: float = 1e-6  # cosine floor
    milestones: list[int] = field(default_factory=list)  # multistep: steps where lr *= gamma
    gamma: float = 0.5
    warmup_steps: int = 0  # linear warm-up from 0
    grad_clip: float = 0.0  # max global gradient norm; 0: off
    channels_last: bool = True  # NHWC: 20-30% faster training on CPU (1×1 and depthwise convs)
    val_every: int = 200  # steps
    save_every: int = 0  # extra last.pt writes every N steps; 0: at validations and the end only
    log_every: int = 10
    minutes: Optional[float] = None  # wall-clock budget; the run stops, validates and saves
    # With ``minutes``, the schedule runs to the budget: its progress is the larger of the step and
    # time fractions, so a time-limited run still anneals fully (budgeted training, Li et al. 2020).
    anneal_to_minutes: bool = True
    # progressive learning (DIPNet): stages by run fraction, e.g. [{until: 0.4, patch: 16},
    # {until: 0.8, patch: 24}, {until: 1.0, patch: 32, loss: l2}]; empty: data.patch and L1 throughout
    progressive: list[ProgressiveStage] = field(default_factory=list)

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"train.steps: expected at least 1, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr: expected a positive number, got {self.lr}")
        if self.schedule not in ("cosine", "multistep", "constant"):
            raise ConfigError(f"train.schedule: expected cosine, multistep or constant, got '{self.schedule}'")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas: expected two numbers, got {self.betas}")
        if self.val_every < 1 or self.log_every < 1:
            raise ConfigError("train.val_every and train.log_every: expected at least 1")
        if self.minutes is not None and self.minutes < 0:
            raise ConfigError(f"train.minutes: expected a non-negative number, got {self.minutes}")
        prev = 0.0
        for i, st in enumerate(self.progressive):
            where = f"train.progressive[{i}]"
            if not prev < st.until <= 1.0:
                raise ConfigError(f"{where}.until: expected a run fraction above the previous stage's ({prev}) "
                                  f"and at most 1.0, got {st.until}")
            prev = st.until
            if st.patch is not None and st.patch < 4:
                raise ConfigError(f"{where}.patch: expected an LR patch side of at least 4, got {st.patch}")
            if st.loss not in PIXEL_LOSS_NAMES:
                raise ConfigError(f"{where}.loss: expected one of {', '.join(PIXEL_LOSS_NAMES)}, got '{st.loss}'")
        if self.progressive and self.progressive[-1].until != 1.0:
            raise ConfigError(f"train.progressive[{len(self.progressive) - 1}].until: the last stage must run to "
                              f"the end (1.0), got {self.progressive[-1].until}")


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.999

    def validate(self) -> None:
        if not 0 < self.decay < 1:
            raise ConfigError(f"ema.decay: expected a number in (0, 1), got {self.decay}")


@dataclass
class RetrainConfig:
    name: str = ""  # run folder runs/<name>/; empty: retrain_x<scale>_<genotype file>_s<seed>
    genotype: str = ""  # genotype JSON (the CLI's --genotype)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainOptions = field(default_factory=TrainOptions)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)  # AdaDSR depth adapter (hdnas.core.adaptive)
    reparam: ReparamConfig = field(default_factory=ReparamConfig)  # DIPNet branches, folded in checkpoints

    def validate(self) -> None:
        """Checks across sections (each section checked its own fields already)."""
        for i, st in enumerate(self.train.progressive):
            if st.loss != "l1" and not self.loss.l1.enabled:
                raise ConfigError(f"train.progressive[{i}].loss: '{st.loss}' replaces the pixel term, "
                                  "but loss.l1 is disabled")

    def run_name(self, scale: int) -> str:
        if self.name:
            return self.name
        path = Path(self.genotype or "genotype")
        # a search writes runs/<search>/genotype.json: name the retrain after the search, so two differ
        stem = path.parent.name if path.stem == "genotype" and path.parent.name else path.stem
        return f"retrain_x{scale}_{stem}_s{self.seed}"


def load_retrain_config(config: str | os.PathLike | None = None, overrides: list[str] | dict = ()) -> RetrainConfig:
    """defaults <- ``--config`` YAML <- ``key=value`` overrides."""
    return load_config(RetrainConfig, config, overrides)


# ---------------------------------------------------------------------------------------- helpers


def lr_factor(step: int, opts: TrainOptions, time_fraction: float = 0.0) -> float:
    """Learning-rate multiplier at ``step``: a pure function, so resuming needs no scheduler history.

    ``time_fraction`` (spent / budgeted wall-clock) moves the schedule as the step fraction does; the
    larger of the two wins, so a ``--minutes`` run ends annealed whether steps or time run out first.
    """
    warm = min(1.0, (step + 1) / opts.warmup_steps) if opts.warmup_steps > 0 else 1.0
    tf = min(max(time_fraction, 0.0), 1.0)
    if opts.schedule == "cosine":
        t = max(min(step, opts.steps) / opts.steps, tf)
        floor = opts.lr_min / opts.lr
        return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))
    if opts.schedule == "multistep":
        return warm * opts.gamma ** sum(1 for m in opts.milestones if step >= m or (tf > 0 and tf >= m / opts.steps))
    return warm


def run_fraction(step: int, opts: TrainOptions, time_fraction: float = 0.0) -> float:
    """How far the run is at ``step``: the larger of ``step / steps`` and ``time_fraction`` (as
    :func:`lr_factor` reads them), so a ``--minutes`` run moves through its stages with the clock."""
    return max(step / opts.steps, min(max(time_fraction, 0.0), 1.0))


def stage_index(step: int, opts: TrainOptions, time_fraction: float = 0.0) -> int:
    """The progressive stage of ``step``: the first whose ``until`` exceeds :func:`run_fraction`;
    -1 without stages."""
    if not opts.progressive:
        return -1
    t = run_fraction(step, opts, time_fraction)
    for i, st in enumerate(opts.progressive):
        if t < st.until:
            return i
    return len(opts.progressive) - 1


class EMA:
    """Exponential moving average of a model's weights (decay warmed up as (1+n)/(10+n))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, p in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1.0 - d)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: str  # done | time | max_steps
    val_psnr: float
    val_ssim: float
    best_psnr: float
    best_step: int
    bicubic_psnr: float
    seconds: float
    history: list[dict]

    @property
    def start_psnr(self) -> float | None:
        """Held-out PSNR of the weights before step 1, when the run scored them (:meth:`Trainer.score_start`)."""
        return self.history[0]["val_psnr"] if self.history and self.history[0]["step"] == 0 else None


# ---------------------------------------------------------------------------------------- trainer


class Trainer(Run):
    """Builds net, dual model, optimisers, data and loss from a config, and runs the loop."""

    kind = "retrain"
    checkpoint_format = CHECKPOINT_FORMAT
    Error = TrainError
    elsewhere = "--out <another folder>"

    def __init__(
        self,
        cfg: RetrainConfig,
        genotype: Genotype,
        run_dir: str | os.PathLike | None = None,
        *,
        dist_ctx: DistContext | None = None,
        teacher: nn.Module | None = None,
        teacher_outputs: TeacherOutputs | None = None,
        train_set: SRImageSet | None = None,
        val_set: SRImageSet | None = None,
        progress: bool = True,
        log: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        genotype.validate()
        self.genotype = genotype
        self.scale = genotype.scale
        run_dir = Path(run_dir) if run_dir is not None else Path(cfg.runs_dir) / cfg.run_name(self.scale)
        super().__init__(cfg, run_dir, "last.pt", dist_ctx=dist_ctx, progress=progress, log=log)
        self.clock = clock
        self.last_path = self.ckpt_path
        self.best_path = self.run_dir / "best.pt"
        lc = cfg.loss
        for term in ("distill", "feature_distill"):
            if getattr(lc, term).enabled and teacher is None and not (cfg.teacher.weights or cfg.teacher.model):
                raise TrainError(f"loss.{term} is enabled but no teacher is given (teacher.weights or teacher.model)")

        # data first: a bad folder fails before any model is built
        if train_set is None or val_set is None:
            (t,), v = build_data(cfg.data, self.scale, cfg.seed)
            train_set, val_set = train_set or t, val_set or v
        for name, ds in (("training", train_set), ("validation", val_set)):
            if ds.scale != self.scale:
                raise TrainError(f"{name} images are for ×{ds.scale}, genotype is ×{self.scale}")
        # one patch sampler per patch size in use: data.patch, or each progressive stage's
        sizes = sorted({cfg.data.patch if st.patch is None else st.patch for st in cfg.train.progressive}
                       or {cfg.data.patch})
        self.patch_sets = {p: patch_datasets([train_set], dataclasses.replace(cfg.data, patch=p))[0] for p in sizes}
        self.val_set = val_set

        fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.memory_format = fmt
        net = AdaptiveNet(genotype, cfg.adaptive) if cfg.adaptive.enabled else DerivedNet(genotype)
        if cfg.adaptive.enabled and cfg.adaptive.init:  # a trained backbone (a resume overwrites it)
            try:
                load_backbone(net, cfg.adaptive.init)
            except (HdnasError, OSError) as exc:
                raise TrainError(f"adaptive.init: {exc}") from None
            if cfg.adaptive.freeze_backbone:  # the adapter alone learns; the backbone stays the trained net
                for name, p in net.named_parameters():
                    p.requires_grad_(name.startswith("adapter."))
        self.reparam = cfg.reparam.enabled
        if self.reparam:  # after the plain net is built: its k×k weights are the plain run's, seed for seed
            reparameterise(net, cfg.reparam)
        self.model = net.to(self.device, memory_format=fmt)
        self.adaptive = cfg.adaptive if cfg.adaptive.enabled else None
        self.dual = None
        if lc.dual.enabled:
            self.dual = DualModel(self.scale, lc.dual.features).to(self.device, memory_format=fmt)
        self.teacher = self._build_teacher(teacher)
        # the teacher's outputs of the whole training images, once (hdnas.train.teacher): no teacher
        # forward per step; not with feature distillation, which reads the teacher's features every step
        self.teacher_outputs: TeacherOutputs | None = None
        if self.teacher is not None and cfg.teacher.cache and not lc.feature_distill.enabled:
            if teacher_outputs is None:
                teacher_outputs = TeacherOutputs(self.teacher, train_set, self.device)
            teacher_outputs.check(train_set)
            self.teacher_outputs = teacher_outputs
        self.features: FeatureDistiller | None = None
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        if lc.feature_distill.enabled:
            field_name = "teacher.model" if cfg.teacher.model else "teacher.weights" if cfg.teacher.weights else "teacher"
            self.features = FeatureDistiller(self.model, self.teacher, field_name).to(self.device, memory_format=fmt)
            # the aligners learn with the student (a second group: same learning rate and schedule)
            groups.append({"params": list(self.features.parameters())})
        opts = cfg.train
        self._clock0: float | None = None  # (clock, elapsed) when run() started: the schedule's time
        self._elapsed0 = 0.0
        self.optimizer = torch.optim.Adam(groups, lr=opts.lr, betas=tuple(opts.betas),
                                          weight_decay=opts.weight_decay)
        factor = lambda step: lr_factor(step, opts, self.time_fraction())  # noqa: E731 - LambdaLR does not pickle it
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.dual_optimizer = self.dual_scheduler = None
        if self.dual is not None:
            self.dual_optimizer = torch.optim.Adam(self.dual.parameters(), lr=opts.lr, betas=tuple(opts.betas),
                                                   weight_decay=opts.weight_decay)
            self.dual_scheduler = torch.optim.lr_scheduler.LambdaLR(self.dual_optimizer, factor)
        self.ema = EMA(self.model, cfg.ema.decay) if cfg.ema.enabled else None
        self.loss = CompositeLoss.from_config(lc)
        self.importance = ImportanceLearner(lc.importance) if lc.importance.enabled else None
        if self.importance is not None and self.teacher is None:
            warnings.warn("loss.importance is enabled without a teacher: w0 = 1, so every importance weight is 1 "
                          "and the pixel loss is plain L1 (set teacher.weights or teacher.model=bicubic)", stacklevel=2)

        self.step = 0
        self.patch = cfg.data.patch  # the LR patch side of the latest step (progressive learning)
        self.elapsed = 0.0  # seconds of run() so far, over resumes (the --minutes budget)
        self.best_psnr = -math.inf
        self.best_step = -1
        self.bicubic_psnr = float("nan")

    # -- teacher ---------------------------------------------------------------------------------
    def _build_teacher(self, teacher: nn.Module | None) -> nn.Module | None:
        """The given module, or the one ``teacher.*`` names when a term uses it, frozen on the device."""
        tc, lc = self.cfg.teacher, self.cfg.loss
        need = lc.distill.enabled or lc.feature_distill.enabled or lc.importance.enabled
        if teacher is None and need:
            teacher = build_teacher(tc, self.scale)
        if teacher is None:
            return None
        teacher = teacher.to(self.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    # -- state (the scaffold adds format, config, RNG and history) ---------------------------------
    @property
    def position(self) -> int:
        return self.step

    def _ema_state(self, folded: bool) -> dict | None:
        if self.ema is None:
            return None
        state = self.ema.state_dict()
        return {**state, "model": fold(self.ema.model).state_dict()} if folded else state

    def loop_state(self) -> dict:
        folded = self.reparam
        return {
            "genotype": self.genotype.to_dict(),
            "scale": self.scale,
            "step": self.step,
            # with reparam: the plain net's folded weights, for load_model; the branches under "reparam"
            "model": (fold(self.model) if folded else self.model).state_dict(),
            "reparam": {"model": self.model.state_dict(), "ema": self._ema_state(False)} if folded else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "dual": None if self.dual is None else self.dual.state_dict(),
            "aligners": None if self.features is None else self.features.state_dict(),  # not part of the net
            "dual_optimizer": None if self.dual_optimizer is None else self.dual_optimizer.state_dict(),
            "dual_scheduler": None if self.dual_scheduler is None else self.dual_scheduler.state_dict(),
            "ema": self._ema_state(folded),
            "importance": None if self.importance is None else self.importance.state_dict(),
            "adaptive": None if self.adaptive is None else to_dict(self.adaptive),
            "elapsed": self.elapsed,
            "best_psnr": self.best_psnr,
            "best_step": self.best_step,
            "bicubic_psnr": self.bicubic_psnr,
        }

    def check_checkpoint(self, state: dict, where: str | os.PathLike) -> None:
        why = genotype_mismatch(state["genotype"], self.genotype)
        if why is not None:
            raise TrainError(f"{where}: {why}")

    def load_loop_state(self, state: dict) -> None:
        trained = state["reparam"] if self.reparam else state  # the branch weights, not the folded ones
        self.model.load_state_dict(trained["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.dual is not None:
            self.dual.load_state_dict(state["dual"])
            self.dual_optimizer.load_state_dict(state["dual_optimizer"])
            self.dual_scheduler.load_state_dict(state["dual_scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(trained["ema"])
        if self.features is not None:
            self.features.load_state_dict(state["aligners"])
        if self.importance is not None:
            self.importance.load_state_dict(state["importance"], self.model)
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.best_psnr = float(state["best_psnr"])
        self.best_step = int(state["best_step"])
        self.bicubic_psnr = float(state["bicubic_psnr"])

    def save(self, best: bool = False) -> None:
        """``last.pt``, and ``best.pt`` too when ``best``."""
        super().save(*([self.best_path] if best else []))

    # -- one step --------------------------------------------------------------------------------
    def stage(self, step: int) -> ProgressiveStage:
        """The progressive stage of ``step`` (data.patch and L1 without ``train.progressive``)."""
        i = stage_index(step, self.cfg.train, self.time_fraction())
        if i < 0:
            return ProgressiveStage(1.0, self.cfg.data.patch, "l1")
        st = self.cfg.train.progressive[i]
        return ProgressiveStage(st.until, self.cfg.data.patch if st.patch is None else st.patch, st.loss)

    def _batch(self, step: int, patch: int | None = None) -> tuple[torch.Tensor, ...]:
        """(LR, HR) of ``step``, this process's shard; and the cached teacher output third when there is one."""
        patches = self.patch_sets[self.stage(step).patch if patch is None else patch]
        g = self.generator(step)
        if self.teacher_outputs is not None:
            batch = patches.sample_batch_with(self.cfg.data.batch, g, self.teacher_outputs)
        else:
            batch = patches.sample_batch(self.cfg.data.batch, g)
        sl = self.dist.shard(self.cfg.data.batch)
        return tuple(t[sl].to(self.device, memory_format=self.memory_format) for t in batch)

    def train_step(self, step: int) -> dict[str, float]:
        """One update at ``step``; raises :class:`TrainError` on a non-finite loss before touching weights."""
        if self.importance is not None:
            self.importance.begin_step(step, self.model, run_fraction(step, self.cfg.train, self.time_fraction()))
        stage = self.stage(step)
        self.patch = stage.patch
        lr, hr, *cached = self._batch(step, stage.patch)
        teacher_sr = cached[0] if cached else None
        teacher_feats = None
        if self.teacher is not None and teacher_sr is None:
            reading = self.features.teacher() if self.features is not None else contextlib.nullcontext()
            with torch.no_grad(), reading as teacher_feats:
                teacher_sr = self.teacher(lr)
        weights = None
        if self.importance is not None:
            weights = self.importance.weights(lr, hr, teacher_sr, self.dist.all_reduce_scalar)
        self.model.train()
        with self.features.student() if self.features is not None else contextlib.nullcontext() as student_feats:
            if self.adaptive is not None:  # one desired depth per image, seeded by the step (exact resume)
                lo, hi = self.model.depth_bounds()
                d = sample_depths(self.cfg.data.batch, lo, hi, self.generator(step, stream=3))
                d = d[self.dist.shard(self.cfg.data.batch)].to(self.device)
                sr, depth = self.model.forward_depth(lr, d)
            else:
                sr = self.model(lr)
        aligners = None if self.features is None else self.features.aligners
        total, parts = self.loss(LossInputs(lr, hr, sr, teacher_sr, weights, self.dual, stage.loss,
                                            student_feats, teacher_feats, aligners))
        if stage.loss != "l1" and "l1" in parts:  # the pixel term under its real name in logs and history
            parts[stage.loss] = parts.pop("l1")
        if self.adaptive is not None:
            parts["depth"] = depth_loss(depth, d)
            parts["depth_mean"] = depth.detach().mean()
            total = total + self.adaptive.weight * parts["depth"]
            if self.adaptive.gain_weight > 0:  # where full depth helps most, from the current backbone
                parts["depth_gain"] = gain_loss(self.model, lr, block_gain(self.model, lr, hr))
                total = total + self.adaptive.gain_weight * parts["depth_gain"]
        loss_value = self.dist.all_reduce_scalar(float(total.detach()))
        if not math.isfinite(loss_value):
            raise TrainError(
                f"non-finite loss ({loss_value}) at step {step}; stopped without updating the weights. "
                f"The last good checkpoint {self.last_path} is kept"
                + ("" if self.last_path.exists() else " (none was written yet)")
            )
        total.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.features is not None:
            params += list(self.features.parameters())
        if self.dual is not None:
            params += list(self.dual.parameters())
        self.dist.all_reduce_mean([p.grad for p in params])
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.dual is not None:
            self.dual_optimizer.step()
            self.dual_optimizer.zero_grad(set_to_none=True)
            self.dual_scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        out = {"loss": loss_value}
        out.update({k: float(v.detach()) for k, v in parts.items()})
        if weights is not None:  # before normalisation: how much of the loss the map keeps
            out["importance_mean"] = float(self.importance.last.mean())
        return out

    # -- validation ------------------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        """What validation scores and checkpoints call best: the EMA weights when EMA is on; with
        reparam, those weights folded into the plain net (what the checkpoint holds)."""
        net = self.ema.model if self.ema is not None else self.model
        return fold(net).to(memory_format=self.memory_format) if self.reparam else net

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        net = self.eval_model()
        was = net.training
        net.eval()
        if self.adaptive is not None:
            net.depth = self.adaptive.val_depth if self.adaptive.val_depth is not None else net.depth_bounds()[1]
        tile = self.cfg.data.val_tile
        try:
            res = evaluate_model(lambda x: upscale(net, x, tile=tile), self.val_set, self.scale, device=self.device)
        finally:
            net.train(was)
        return {"psnr": res["psnr"], "ssim": res["ssim"]}

    def _bicubic(self) -> float:
        return evaluate_model(bicubic_model(self.scale), self.val_set, self.scale)["psnr"]

    # -- loop ------------------------------------------------------------------------------------
    def time_fraction(self) -> float:
        """Share of the ``--minutes`` budget spent, for the schedule (0 without a budget or outside run())."""
        minutes = self.cfg.train.minutes
        if not minutes or not self.cfg.train.anneal_to_minutes or self._clock0 is None:
            return 0.0
        return (self._elapsed0 + self.clock() - self._clock0) / (minutes * 60.0)

    def _over_budget(self, started: float) -> bool:
        minutes = self.cfg.train.minutes
        if minutes is None:
            return False
        over = self.elapsed + (self.clock() - started) >= minutes * 60.0
        return self.dist.all_reduce_scalar(1.0 if over else 0.0) > 0

    def score_start(self) -> dict[str, float]:
        """Validate and save the weights before step 1 (every process calls it): a best.pt candidate,
        so a fine-tune that only loses to its starting weights keeps them."""
        return self._validate_and_save(self.clock(), {})

    def _validate_and_save(self, started: float, losses: dict[str, float]) -> dict[str, float]:
        val = self.validate() if self.dist.is_main else {"psnr": float("nan"), "ssim": float("nan")}
        best = self.dist.is_main and val["psnr"] > self.best_psnr
        if best:
            self.best_psnr, self.best_step = val["psnr"], self.step
        record = {"step": self.step, "val_psnr": val["psnr"], "val_ssim": val["ssim"],
                  "lr": self.optimizer.param_groups[0]["lr"], **losses}
        self.history.append(record)
        self._log_validation(record)
        self.elapsed += self.clock() - started
        self.save(best=best)
        return val

    def run(self, max_steps: int | None = None) -> TrainResult:
        """Train until ``train.steps`` (or ``max_steps``, as a kill would, or the ``--minutes`` budget)."""
        opts = self.cfg.train
        started = self.clock()
        self._clock0, self._elapsed0 = started, self.elapsed
        if self.dist.is_main and math.isnan(self.bicubic_psnr):
            self.bicubic_psnr = self._bicubic()
        stop = "done"
        last_val = None
        if self.history:
            last_val = {"psnr": self.history[-1]["val_psnr"], "ssim": self.history[-1]["val_ssim"]}
        sums: dict[str, float] = {}
        n_sum = 0
        validated_at = self.history[-1]["step"] if self.history else -1
        with self.session(opts.steps, self.step, minutes=opts.minutes, seconds=self.elapsed, clock=self.clock) as bar:
            while self.step < opts.steps:
                if max_steps is not None and self.step >= max_steps:
                    stop = "max_steps"
                    break
                if self._over_budget(started):
                    stop = "time"
                    break
                losses = self.train_step(self.step)
                self.step += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_sum += 1
                if self.writer is not None and self.step % opts.log_every == 0:
                    self._log_step(losses)
                post = {"loss": f"{losses['loss']:.4f}"}
                if last_val is not None:
                    post["PSNR"] = f"{last_val['psnr']:.2f}"
                bar.advance(self.step, **post)
                if self.step % opts.val_every == 0 or self.step == opts.steps:
                    mean = {k: v / n_sum for k, v in sums.items()}
                    last_val = self._validate_and_save(started, mean)
                    started = self.clock()
                    sums, n_sum, validated_at = {}, 0, self.step
                elif opts.save_every > 0 and self.step % opts.save_every == 0:
                    self.elapsed += self.clock() - started
                    started = self.clock()
                    self.save()
            if stop == "time" and validated_at != self.step:
                last_val = self._validate_and_save(started, {k: v / max(n_sum, 1) for k, v in sums.items()})
                started = self.clock()
            elif stop == "max_steps":
                self.elapsed += self.clock() - started
                started = self.clock()
                self.save()
        val = last_val or {"psnr": float("nan"), "ssim": float("nan")}
        return TrainResult(self.run_dir, self.step, stop, val["psnr"], val["ssim"], self.best_psnr, self.best_step,
                           self.bicubic_psnr, self.elapsed, self.history)

    # -- logging ---------------------------------------------------------------------------------
    def _log_step(self, losses: dict[str, float]) -> None:
        w = self.writer
        for k, v in losses.items():
            w.add_scalar(f"loss/{k}" if k != "importance_mean" else "importance/mean", v, self.step)
        w.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
        if self.cfg.train.progressive:
            w.add_scalar("train/patch", self.patch, self.step)
        if self.importance is not None:
            w.add_scalar("importance/round", self.importance.round, self.step)
            w.add_scalar("importance/lambda", self.importance.lam(), self.step)
            if self.importance.last is not None and self.step % (self.cfg.train.log_every * 10) == 0:
                w.add_image("importance/map", self.importance.last[0].float().cpu().clamp(0, 1), self.step)

    @torch.no_grad()
    def _log_validation(self, record: dict) -> None:
        if self.writer is None:
            return
        w = self.writer
        w.add_scalar("val/psnr_y", record["val_psnr"], self.step)
        w.add_scalar("val/ssim_y", record["val_ssim"], self.step)
        w.add_scalar("val/bicubic_psnr_y", self.bicubic_psnr, self.step)
        with self.logging("the validation crop image (val/bicubic_sr_hr)"):
            w.add_image("val/bicubic_sr_hr", self._crop_strip(), self.step)
        w.flush()

    def _crop_strip(self, side: int = 48) -> torch.Tensor:
        """A centre crop of the first validation image: bicubic | SR | HR, side by side (3, H, 3W)."""
        im = self.val_set[0]
        s = self.scale
        h, w = im.lr.shape[-2:]
        p = min(side, h, w)
        y, x = (h - p) // 2, (w - p) // 2
        lr = im.lr[None, :, y : y + p, x : x + p].float().div(255.0)
        net = self.eval_model()
        was = net.training
        net.eval()
        sr = net(lr.to(self.device)).float().cpu().clamp(0, 1)
        net.train(was)
        bic = bicubic_model(s)(lr).clamp(0, 1)
        hr = im.hr[None, :, y * s : (y + p) * s, x * s : (x + p) * s].float().div(255.0)
        return torch.cat([bic, sr, hr], dim=-1)[0]


# ------------------------------------------------------------------------------------------- job


def run_retrain(
    cfg: RetrainConfig,
    genotype: Genotype | None = None,
    out: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    dist_ctx: DistContext | None = None,
) -> TrainResult | None:
    """The job behind ``tools/retrain.py``; None on processes other than the main one.

    The run folder's checkpoint follows the scaffold's rules (:meth:`hdnas.core.run.Run.start`):
    ``resume`` without one is an error naming it; an existing one is refused unless ``resume`` or ``force``.
    """
    if genotype is None:
        if not cfg.genotype:
            raise TrainError("no genotype given (--genotype derived/x4.json)")
        genotype = load_genotype(cfg.genotype)
    dist_ctx = dist_ctx or init_distributed(cfg.device)
    trainer = Trainer(cfg, genotype, out, dist_ctx=dist_ctx, progress=progress)
    trainer.start(resume=resume, force=force)
    result = trainer.run()
    return result if dist_ctx.is_main else None
