"""The bilevel search loop: weights on one half of the data, architecture on the other.

One :class:`SearchConfig` (a YAML file plus ``key=value`` overrides) describes a run. The loop
stands on the run scaffold (:class:`hdnas.core.run.Run`: checkpoints, resume rules, seeded batches,
TensorBoard, progress); what is here is the search's own: every epoch ends with a checkpoint of
the supernet (weights and α, β), both optimisers and the epoch, so a resumed run replays exactly
what an uninterrupted one would have done.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hdnas import __version__
from hdnas.core import cost, latency, render
from hdnas.core.config import ConfigError, DataConfig, format_count, load_config, parse_count, to_dict
from hdnas.core.cost import HR_SIZE
from hdnas.core.data import imresize
from hdnas.core.distributed import DistContext, init_distributed
from hdnas.core.machine import machine_info
from hdnas.core.metrics import psnr_y
from hdnas.core.run import Run, RunError, build_data, check_file, check_folder, patch_datasets
from hdnas.core.space import ArchProbs, SearchSpace
from hdnas.search import relax
from hdnas.search.architect import ARCH_LOSSES, Architect
from hdnas.search.derive import derive, derive_within_budget, in_band
from hdnas.search.supernet import SuperNet


class SearchError(RunError):
    """The search cannot start or cannot go on (bad budget, non-finite loss, mismatched resume)."""


@dataclass
class SearchOptions:
    epochs: int = 10
    steps_per_epoch: int = 32
    warmup_epochs: int = 2  # weights only, so α does not lock onto the ops that train fastest
    order: int = 1  # 1: first-order DARTS; 2: unrolled, finite-difference Hessian-vector product
    arch_loss: str = "val"  # "train+val": the arch step's data term adds the training batch (reference DLSR)
    w_optimizer: str = "adam"
    w_lr: float = 1e-3
    w_lr_min: float = 1e-5
    w_momentum: float = 0.9  # SGD only
    w_weight_decay: float = 0.0
    grad_clip: float = 5.0
    a_lr: float = 3e-3
    a_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    a_weight_decay: float = 1e-3
    unrolled_lr: Optional[float] = None  # ξ of the virtual step; default w_lr
    budget: Optional[str] = None  # Multi-Adds at 1280×720 output, e.g. "18G"; None: no penalty
    # Latency of the derived net on this CPU (torch eager, channels-last, torch's threads) at 1280×720
    # output, e.g. "120ms", from the measured latency model (hdnas.core.latency); alone or beside budget.
    # When set, the final derivation lands in its band (not the Multi-Adds one).
    latency_budget: Optional[str] = None
    penalty_weight: float = 1.0
    # Which architecture the penalty prices (hdnas.search.relax): "argmax", the genotype that would be
    # derived now (exact cost, straight-through gradient); "gumbel", a hard Gumbel-softmax sample at τ;
    # "expected", the soft mixture softmax(α/τ) (averages ops that argmax will drop, so the derived
    # net can land far from the budget).
    penalty_on: str = "argmax"
    # No penalty within |log(cost / budget)| <= log(1 + margin): inside that band the data term alone
    # chooses, and the argmax cycles across the budget less (measured: README, search methods).
    penalty_margin: float = 0.05
    entropy_weight: float = 0.0  # + weight · mean entropy of softmax(α): pushes the op choices to one-hot
    # τ, annealed geometrically from tau_start to tau_end over the architecture epochs: the softmax
    # temperature of "expected" (as τ falls it approaches the derived architecture) and the Gumbel
    # temperature of "gumbel".
    penalty_tau_start: float = 1.0
    penalty_tau_end: float = 0.1
    fused: bool = True  # fused mixed ops (same mathematics, faster)
    # Last resort, off by default: swap the fewest, least likely ops after the search to land in the
    # band; the swaps are listed in the genotype's provenance (budget_swaps).
    budget_derivation: bool = False
    # Near the budget the argmax can cycle across it (one op flip moves a ×4 net by up to 24 %). With
    # this on, a search whose last argmax is outside the band ends on the α, β of its last architecture
    # step whose argmax was inside it (the step is in the provenance: arch_from_step).
    keep_in_band: bool = True
    derive_tolerance: float = 0.10  # the band: exact Multi-Adds within ±tolerance of the budget
    val_every: int = 1  # epochs

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"search.epochs: expected at least 1, got {self.epochs}")
        if self.steps_per_epoch < 1:
            raise ConfigError(f"search.steps_per_epoch: expected at least 1, got {self.steps_per_epoch}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(
                f"search.warmup_epochs: expected 0..{self.epochs - 1} (fewer than search.epochs), got {self.warmup_epochs}"
            )
        if self.order not in (1, 2):
            raise ConfigError(f"search.order: expected 1 or 2, got {self.order}")
        if self.arch_loss not in ARCH_LOSSES or (self.arch_loss != "val" and self.order != 1):
            raise ConfigError(f"search.arch_loss: expected one of {ARCH_LOSSES} ('train+val' with search.order 1), "
                              f"got '{self.arch_loss}' with order {self.order}")
        if self.w_optimizer not in ("adam", "sgd"):
            raise ConfigError(f"search.w_optimizer: expected 'adam' or 'sgd', got '{self.w_optimizer}'")
        if len(self.a_betas) != 2:
            raise ConfigError(f"search.a_betas: expected two numbers, got {self.a_betas}")
        if not (0 < self.penalty_tau_end <= self.penalty_tau_start):
            raise ConfigError(
                f"search.penalty_tau_end: expected 0 < tau_end <= tau_start ({self.penalty_tau_start}), "
                f"got {self.penalty_tau_end}"
            )
        if self.penalty_on not in relax.PENALTY_ON:
            raise ConfigError(f"search.penalty_on: expected one of {', '.join(relax.PENALTY_ON)}, got '{self.penalty_on}'")
        if not 0 <= self.penalty_margin < 1:
            raise ConfigError(f"search.penalty_margin: expected a fraction in [0, 1), got {self.penalty_margin}")
        if self.entropy_weight < 0:
            raise ConfigError(f"search.entropy_weight: expected >= 0, got {self.entropy_weight}")
        if not 0 < self.derive_tolerance < 1:
            raise ConfigError(f"search.derive_tolerance: expected a fraction in (0, 1), got {self.derive_tolerance}")
        if self.budget is not None:
            b = parse_count(self.budget, "search.budget")
            if b <= 0:
                raise ConfigError(f"search.budget: expected a positive Multi-Adds count, got {self.budget}")

        if self.latency_budget is not None:
            latency.parse_duration_ms(self.latency_budget, "search.latency_budget")

    @property
    def latency_budget_ms(self) -> float | None:
        return None if self.latency_budget is None else latency.parse_duration_ms(self.latency_budget, "search.latency_budget")

    @property
    def budget_macs(self) -> float | None:
        return None if self.budget is None else parse_count(self.budget, "search.budget")


@dataclass
class SearchConfig:
    name: str = ""  # run folder runs/<name>/; empty: derived from scale, space, budget, seed
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    runs_dir: str = "runs"
    space: SearchSpace = field(default_factory=SearchSpace)
    data: DataConfig = field(default_factory=lambda: DataConfig(val_fraction=0.2, val_max_images=8))
    search: SearchOptions = field(default_factory=SearchOptions)

    def run_name(self) -> str:
        if self.name:
            return self.name
        budget = f"_b{self.search.budget}" if self.search.budget else ""
        budget += f"_lat{self.search.latency_budget}" if self.search.latency_budget else ""
        return f"search_x{self.space.scale}_{self.space.name}{budget}_s{self.seed}"


def load_search_config(
    config: str | os.PathLike | None = None,
    space: str | os.PathLike | None = None,
    overrides: list[str] | dict = (),
) -> SearchConfig:
    """defaults <- ``--space`` file <- ``--config`` file (its ``space`` may name a space YAML) <- overrides."""
    return load_config(SearchConfig, [None if space is None else {"space": space}, config], overrides)


# ------------------------------------------------------------------------------------------------


class SearchData:
    """Three disjoint image sets: weights half, architecture half, validation.

    Images are decoded once; patches are cut per step from generators the caller seeds, so the
    batches of step t are the same whether the run was resumed or not.
    """

    def __init__(self, cfg: DataConfig, scale: int, seed: int):
        self.scale = scale
        (w, a), val = build_data(cfg, scale, seed, parts=2)
        self.val = val
        self.halves = dict(zip("wa", patch_datasets([w, a], cfg)))
        self.description = (
            f"{w.name}: {len(w)} images for weights, {len(a)} for the architecture, {len(val)} for validation"
        )
        self._bicubic: float | None = None

    def sample(self, half: str, batch: int, generator: torch.Generator):
        return self.halves[half].sample_batch(batch, generator)

    def val_pairs(self):
        for im in self.val:
            yield im.lr.float().div(255.0), im.hr.float().div(255.0)

    def bicubic_psnr(self) -> float:
        """The bar a search must clear: bicubic upscaling on the same validation images."""
        if self._bicubic is None:
            vals = [float(psnr_y(imresize(lr, scale=self.scale).clamp(0, 1), hr, self.scale)) for lr, hr in self.val_pairs()]
            self._bicubic = sum(vals) / max(len(vals), 1)
        return self._bicubic


def _cosine(step: int, total: int, lr: float, lr_min: float) -> float:
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


@dataclass
class SearchResult:
    genotype: Any
    run_dir: Path
    val_psnr: float
    bicubic_psnr: float
    history: list[dict]
    argmax_macs: int | None = None  # exact cost of the plain argmax genotype (before any budget swaps)
    argmax_latency_ms: float | None = None  # its predicted latency, when a latency budget was set
    arch_from_step: int | None = None  # keep_in_band: the architecture step whose α, β were derived (None: the last)
    last_argmax_macs: int | None = None  # the argmax of the last α, β (differs only with arch_from_step)
    last_argmax_latency_ms: float | None = None
    swaps: list[str] = field(default_factory=list)


class Searcher(Run):
    """Builds the supernet, data and optimisers from a config and runs the bilevel loop."""

    kind = "search"
    checkpoint_format = "hdnas-search-checkpoint/1"
    Error = SearchError
    elsewhere = "name=<new name>"

    def __init__(self, cfg: SearchConfig, dist_ctx: DistContext | None = None, progress: bool = True, log: bool = True):
        super().__init__(cfg, Path(cfg.runs_dir) / cfg.run_name(), "checkpoint.pt", dist_ctx=dist_ctx,
                         progress=progress, log=log)
        opts = cfg.search
        # budget check before any data loading or training
        self.budget = opts.budget_macs
        lo, hi = cost.cost_bounds(cfg.space, HR_SIZE)
        self.bounds = (lo, hi)
        if self.budget is not None and not lo <= self.budget <= hi:
            raise SearchError(
                f"search.budget {format_count(self.budget)} is outside what this space can reach at ×{cfg.space.scale} "
                f"({format_count(lo)} .. {format_count(hi)} Multi-Adds at 1280×720 output)"
            )
        self.latency_budget = opts.latency_budget_ms
        self.latency: latency.LatencyModel | None = None
        if self.latency_budget is not None:  # measured (or read from the cache) before any data loading
            self.latency = latency.latency_model(cfg.space, progress=progress and self.dist.is_main)
            lo, hi = (v * self.latency.factor for v in cost.table_bounds(cfg.space, self.latency.table(cfg.space)))
            if not lo <= self.latency_budget <= hi:
                raise SearchError(
                    f"search.latency_budget {self.latency_budget:g} ms is outside what this space can reach at "
                    f"×{cfg.space.scale} on this CPU ({lo:.1f} .. {hi:.1f} ms predicted at 1280×720 output)"
                )
        self.model = SuperNet(cfg.space, fused=opts.fused).to(self.device)
        self.data = SearchData(cfg.data, cfg.space.scale, cfg.seed)
        w_params = list(self.model.weight_parameters())
        if opts.w_optimizer == "adam":
            self.w_opt = torch.optim.Adam(w_params, lr=opts.w_lr, weight_decay=opts.w_weight_decay)
        else:
            self.w_opt = torch.optim.SGD(w_params, lr=opts.w_lr, momentum=opts.w_momentum, weight_decay=opts.w_weight_decay)
        space = cfg.space
        self.architect = Architect(
            self.model,
            cost_fn=lambda: cost.expected_macs(space, self.penalty_probs(), HR_SIZE),
            budget=self.budget,
            lr=opts.a_lr,
            betas=opts.a_betas,
            weight_decay=opts.a_weight_decay,
            penalty_weight=opts.penalty_weight,
            order=opts.order,
            unrolled_lr=opts.unrolled_lr if opts.unrolled_lr is not None else opts.w_lr,
            w_weight_decay=opts.w_weight_decay,
            dist_ctx=self.dist,
            latency_fn=None if self.latency is None else (
                lambda: self.latency.expected(space, self.penalty_probs()).to(self.device)),
            latency_budget=self.latency_budget,
            penalty_margin=opts.penalty_margin,
            regularizer=None if opts.entropy_weight == 0 else (
                lambda: opts.entropy_weight * relax.entropy(self.model.arch_probs())),
            arch_loss=opts.arch_loss,
        )
        self._arch_step = 0  # the step whose generator draws the penalty's Gumbel sample
        self.in_band: dict | None = None  # {"step", "alpha", "inputs", "fusion"}: the last step whose argmax met the budgets
        self.total_steps = opts.epochs * opts.steps_per_epoch
        self.penalty_tau = opts.penalty_tau_start
        self.epoch = 0

    # -- state (the scaffold adds format, config, RNG and history) --------------------------------
    @property
    def position(self) -> int:
        return self.epoch * self.cfg.search.steps_per_epoch

    def loop_state(self) -> dict:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "w_optimizer": self.w_opt.state_dict(),
            "architect": self.architect.state_dict(),
            "in_band": self.in_band,
        }

    def load_loop_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_optimizer"])
        self.architect.load_state_dict(state["architect"])
        self.epoch = int(state["epoch"])
        self.in_band = state.get("in_band")

    # -- the band ---------------------------------------------------------------------------------
    def argmax_costs(self, geno) -> dict[str, float]:
        """The exact Multi-Adds and, with a latency budget, the predicted ms of a derived genotype."""
        costs = {"macs": float(cost.count(geno, HR_SIZE).macs)}
        if self.latency is not None:
            costs["ms"] = float(self.latency.predict(geno))
        return costs

    def in_band_now(self, geno) -> bool:
        """Every budget set is met by ``geno`` within ±search.derive_tolerance."""
        tol, costs = self.cfg.search.derive_tolerance, self.argmax_costs(geno)
        pairs = [(costs["macs"], self.budget), (costs.get("ms"), self.latency_budget)]
        return all(in_band(c, b, tol) for c, b in pairs if b is not None)

    def _remember_if_in_band(self, step: int) -> None:
        if (self.budget is None and self.latency_budget is None) or not self.cfg.search.keep_in_band:
            return
        if self.in_band_now(derive(self.model, self.cfg.space)):
            with torch.no_grad():
                p = self.model.arch_probs()
            self.in_band = {"step": step, "alpha": p.alpha, "inputs": list(p.inputs), "fusion": p.fusion}

    def final_probs(self, last) -> tuple[ArchProbs, int | None]:
        """α, β probabilities the search ends on: the last ones (whose argmax is ``last``), or
        (keep_in_band, when ``last`` misses the band) those of the last step in the band."""
        if self.in_band is None or self.in_band_now(last):
            return self.model.arch_probs(), None
        snap = self.in_band
        return ArchProbs(alpha=snap["alpha"], inputs=snap["inputs"], fusion=snap["fusion"]), int(snap["step"])

    # -- loop -----------------------------------------------------------------------------------
    def _batch(self, step: int, half: str) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr = self.data.sample(half, self.cfg.data.batch, self.generator(step, 0 if half == "w" else 1))
        sl = self.dist.shard(self.cfg.data.batch)
        return lr[sl].to(self.device), hr[sl].to(self.device)

    def penalty_probs(self):
        """What the penalty prices at the current architecture step. A Gumbel draw comes from the step's
        own generator, so the Multi-Adds and the latency terms price the same sample, and a resumed
        search draws what an uninterrupted one would have."""
        gen = self.generator(self._arch_step, 2) if self.cfg.search.penalty_on == "gumbel" else None
        return relax.penalty_probs(self.cfg.search.penalty_on, self.model.arch_probs, self.cfg.space,
                                   self.penalty_tau, gen)

    def tau_at(self, epoch: int) -> float:
        """Penalty temperature of an epoch: a function of the epoch alone, so resumes replay it exactly."""
        opts = self.cfg.search
        span = opts.epochs - opts.warmup_epochs - 1
        t = 1.0 if span <= 0 else min(max((epoch - opts.warmup_epochs) / span, 0.0), 1.0)
        return opts.penalty_tau_start * (opts.penalty_tau_end / opts.penalty_tau_start) ** t

    def _weight_step(self, step: int) -> float:
        opts = self.cfg.search
        lr_now = _cosine(step, self.total_steps, opts.w_lr, opts.w_lr_min)
        for group in self.w_opt.param_groups:
            group["lr"] = lr_now
        lr, hr = self._batch(step, "w")
        loss = F.l1_loss(self.model(lr), hr)
        params = list(self.model.weight_parameters())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        self.dist.all_reduce_mean(grads)
        for p, g in zip(params, grads):
            p.grad = g
        if opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        self.w_opt.step()
        self.w_opt.zero_grad(set_to_none=True)
        return self.dist.all_reduce_scalar(float(loss.detach()))

    def run(self, stop_after_epoch: int | None = None, on_epoch: Callable[[int], None] | None = None) -> SearchResult | None:
        """Run (or continue) the search; ``stop_after_epoch`` ends early, as a kill would (tests)."""
        opts = self.cfg.search
        val_psnr = self.history[-1]["val_psnr"] if self.history else float("nan")
        with self.session(self.total_steps, self.position) as bar:
            while self.epoch < opts.epochs:
                epoch = self.epoch
                t0 = time.time()
                sums = {"w_loss": 0.0, "a_loss": 0.0, "penalty": 0.0}
                expected = expected_ms = float("nan")
                search_arch = epoch >= opts.warmup_epochs
                self.penalty_tau = self.tau_at(epoch)
                self.model.train()
                for i in range(opts.steps_per_epoch):
                    step = epoch * opts.steps_per_epoch + i
                    if search_arch:
                        self._arch_step = step
                        res = self.architect.step(self._batch(step, "w"), self._batch(step, "a"))
                        if not (math.isfinite(res.loss) and math.isfinite(res.penalty)):
                            raise SearchError(
                                f"non-finite architecture loss at step {step} (epoch {epoch}); the last good "
                                f"checkpoint {self.ckpt_path} is kept"
                            )
                        self._remember_if_in_band(step)
                        sums["a_loss"] += res.loss
                        sums["penalty"] += res.penalty
                        expected = res.expected_macs
                        expected_ms = res.expected_latency_ms
                    w_loss = self._weight_step(step)
                    if not math.isfinite(w_loss):
                        raise SearchError(
                            f"non-finite weight loss at step {step} (epoch {epoch}); the last good checkpoint "
                            f"{self.ckpt_path} is kept"
                        )
                    sums["w_loss"] += w_loss
                    post = {"L1": f"{w_loss:.4f}"}
                    if math.isfinite(val_psnr):
                        post["PSNR"] = f"{val_psnr:.2f}"
                    if math.isfinite(expected):
                        post["E[MAdds]"] = format_count(expected)
                    if math.isfinite(expected_ms):
                        post["E[ms]"] = f"{expected_ms:.1f}"
                    bar.advance(step + 1, **post)
                    if self.writer is not None and step % 10 == 0:
                        self.writer.add_scalar("loss/weights_l1", w_loss, step)
                        if search_arch:
                            self.writer.add_scalar("loss/arch_l1", res.loss, step)
                            self.writer.add_scalar("loss/penalty", res.penalty, step)
                n = opts.steps_per_epoch
                with torch.no_grad():
                    expected = float(cost.expected_macs(self.cfg.space, self.model.arch_probs(), HR_SIZE))
                    expected_tau = float(cost.expected_macs(self.cfg.space, self.model.arch_probs(self.penalty_tau), HR_SIZE))
                geno = derive(self.model, self.cfg.space)
                derived = cost.count(geno, HR_SIZE)
                if (epoch + 1) % opts.val_every == 0 or epoch + 1 == opts.epochs:
                    val_psnr = self.validate() if self.dist.is_main else float("nan")
                record = {
                    "epoch": epoch,
                    "w_loss": sums["w_loss"] / n,
                    "a_loss": sums["a_loss"] / n if search_arch else None,
                    "penalty": sums["penalty"] / n if search_arch else None,
                    "expected_macs": expected,
                    "penalty_tau": self.penalty_tau,
                    "expected_macs_tau": expected_tau,
                    "derived_macs": derived.macs,
                    "derived_params": derived.params,
                    "derived_depth": geno.depth(),
                    "expected_latency_ms": expected_ms if self.latency is not None else None,
                    "derived_latency_ms": self.latency.predict(geno) if self.latency is not None else None,
                    "val_psnr": val_psnr,
                    "seconds": time.time() - t0,
                    "ops": [list(c.ops) for c in geno.cells],
                }
                self.history.append(record)
                self._log_epoch(record, geno)
                self.epoch = epoch + 1
                self.save()
                if on_epoch is not None:
                    on_epoch(epoch)
                if stop_after_epoch is not None and epoch >= stop_after_epoch:
                    return None
        return self._result()

    def _result(self) -> SearchResult:
        opts = self.cfg.search
        val = self.history[-1]["val_psnr"] if self.history else float("nan")
        last_geno = derive(self.model, self.cfg.space)
        probs, from_step = self.final_probs(last_geno)
        last = self.argmax_costs(last_geno)
        argmax_ms = None
        if self.latency_budget is not None and opts.budget_derivation:
            res = derive_within_budget(probs, self.cfg.space, self.latency_budget, opts.derive_tolerance, HR_SIZE,
                                       cost=self.latency.predict)
            geno, argmax_ms, swaps = res.genotype, res.argmax_macs, res.swaps
            argmax_macs = cost.count(derive(probs, self.cfg.space), HR_SIZE).macs
        elif self.budget is not None and opts.budget_derivation:
            res = derive_within_budget(probs, self.cfg.space, self.budget, opts.derive_tolerance, HR_SIZE)
            geno, argmax_macs, swaps = res.genotype, res.argmax_macs, res.swaps
        else:
            geno = derive(probs, self.cfg.space)
            argmax_macs, swaps = cost.count(geno, HR_SIZE).macs, []
            if self.latency is not None:
                argmax_ms = self.latency.predict(geno)
        return SearchResult(geno, self.run_dir, val, self.data.bicubic_psnr(), self.history, argmax_macs=argmax_macs,
                            swaps=swaps, argmax_latency_ms=argmax_ms, arch_from_step=from_step,
                            last_argmax_macs=int(last["macs"]), last_argmax_latency_ms=last.get("ms"))

    # -- validation and logging -----------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        """Mean PSNR-Y of the supernet on the validation images (whole images, border = scale)."""
        self.model.eval()
        scale = self.cfg.space.scale
        values = []
        for lr, hr in self.data.val_pairs():
            sr = self.model(lr.unsqueeze(0).to(self.device))[0].clamp(0, 1).cpu()
            values.append(float(psnr_y(sr, hr, scale)))
        self.model.train()
        return sum(values) / max(len(values), 1)

    def _log_epoch(self, record: dict, geno) -> None:
        if self.writer is None:
            return
        w = self.writer
        step = (record["epoch"] + 1) * self.cfg.search.steps_per_epoch
        w.add_scalar("val/psnr_y", record["val_psnr"], step)
        w.add_scalar("cost/expected_madds_G", record["expected_macs"] / 1e9, step)
        w.add_scalar("cost/derived_madds_G", record["derived_macs"] / 1e9, step)
        w.add_scalar("cost/expected_madds_at_tau_G", record["expected_macs_tau"] / 1e9, step)
        w.add_scalar("arch/penalty_tau", record["penalty_tau"], step)
        if self.budget is not None:
            w.add_scalar("cost/budget_G", self.budget / 1e9, step)
        probs = self.model.arch_probs()
        w.add_histogram("arch/alpha", probs.alpha.detach().cpu(), step)
        w.add_histogram("arch/fusion", probs.fusion.detach().cpu(), step)
        with self.logging("the α heat map (arch/alpha_heatmap)"):
            from hdnas.core.plots import alpha_figure  # matplotlib: heavy, and only for this figure

            w.add_figure("arch/alpha_heatmap", alpha_figure(probs, self.cfg.space), step)
        with self.logging("the architecture drawings (arch/derived_*, arch/supernet)"):
            png = render.render_png_bytes(render.render_network(geno))
            if png is not None:
                w.add_image("arch/derived_network", _png_to_chw(png), step)
            for group in render.distinct_cells(geno):
                png = render.render_png_bytes(render.render_cell(geno, group[0]))
                if png is not None:
                    w.add_image(f"arch/derived_cell_{group[0]}", _png_to_chw(png), step)
            png = render.render_png_bytes(render.render_supernet(probs, self.cfg.space))
            if png is not None:
                w.add_image("arch/supernet", _png_to_chw(png), step)
        w.flush()


def _png_to_chw(png: bytes) -> torch.Tensor:
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _machine() -> dict:
    info = machine_info()
    return {k: info[k] for k in ("cpu", "usable_cores", "torch", "torch_threads", "cuda")}


def provenance(cfg: SearchConfig, result: SearchResult, report, command: list[str] | None = None) -> dict:
    """What a reader needs to trust and reproduce a genotype."""
    return {
        "tool": "hdnas search",
        "hdnas_version": __version__,
        "command": " ".join(command if command is not None else sys.argv),
        "config": to_dict(cfg),
        "seed": cfg.seed,
        "data": cfg.data.paths or ["<built-in sample set>"],
        "multi_adds": report.macs,
        "multi_adds_at": "1280x720 output",
        "params": report.params,
        "budget": cfg.search.budget_macs,
        "argmax_multi_adds": result.argmax_macs,
        "latency_budget_ms": cfg.search.latency_budget_ms,
        "argmax_latency_ms": result.argmax_latency_ms,
        "budget_swaps": result.swaps,
        "penalty_on": cfg.search.penalty_on,
        "arch_from_step": result.arch_from_step,
        "search_steps": cfg.search.epochs * cfg.search.steps_per_epoch,
        "last_argmax_multi_adds": result.last_argmax_macs,
        "last_argmax_latency_ms": result.last_argmax_latency_ms,
        "depth": result.genotype.depth(),
        "expected_multi_adds": result.history[-1]["expected_macs"] if result.history else None,
        "val_psnr": result.val_psnr,
        "val_psnr_bicubic": result.bicubic_psnr,
        "val_psnr_note": "supernet (shared weights) on the validation images, PSNR-Y, border = scale",
        "epochs": cfg.search.epochs,
        "search_seconds": round(sum(h["seconds"] for h in result.history), 1),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
    }


@dataclass
class SearchOutcome:
    genotype: Any
    genotype_path: Path | None
    drawings: list[Path]
    drawing_note: str | None
    result: SearchResult


def default_out(cfg: SearchConfig) -> Path:
    """Where a search writes its genotype unless told: its run folder, never the committed ``derived/``."""
    return Path(cfg.runs_dir) / cfg.run_name() / "genotype.json"


def run_search(
    cfg: SearchConfig,
    out: str | os.PathLike | None = None,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
    dist_ctx: DistContext | None = None,
) -> SearchOutcome | None:
    """The whole job behind ``tools/search.py``: search, derive, record provenance, draw.

    ``out`` (default :func:`default_out`, ``runs/<name>/genotype.json``; drawings beside it in
    ``runs/<name>/genotype/``). Every output path is checked before any work starts; an existing
    ``out`` needs ``force``, and the run folder's checkpoint follows the scaffold's rules
    (:meth:`hdnas.core.run.Run.start`: ``--resume`` without one is an error naming it).
    """
    out = check_file(out if out is not None else default_out(cfg), "the genotype (--out)", force,
                     "pass --force to overwrite it or --out to write elsewhere", SearchError)
    drawings_dir = check_folder(out.with_suffix(""), "the drawings", SearchError)
    dist_ctx = dist_ctx or init_distributed(cfg.device)
    searcher = Searcher(cfg, dist_ctx=dist_ctx, progress=progress)
    searcher.start(resume=resume, force=force)
    result = searcher.run()
    if not dist_ctx.is_main:
        return None
    geno = result.genotype
    report = cost.count(geno, HR_SIZE)
    geno.provenance = provenance(cfg, result, report, command)
    if searcher.latency is not None:
        geno.provenance["latency_ms_predicted"] = round(searcher.latency.predict(geno), 2)
        geno.provenance["latency_target"] = latency.Target().describe() + " (batch 1, 1280x720 output)"
    geno.save(out, force=True)
    drawings: list[Path] = []
    note = None
    try:
        written = render.write_drawings(geno, drawings_dir)
        drawings, note = written.paths, written.message
    except Exception as exc:  # noqa: BLE001 - the genotype is saved; drawing is a bonus, and the note says why not
        note = f"drawings not written: {exc}"
    return SearchOutcome(geno, out, drawings, note, result)
