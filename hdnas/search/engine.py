"""The bilevel search loop: weights on one half of the data, architecture on the other.

One :class:`SearchConfig` (a YAML file plus ``key=value`` overrides) describes a run. Every epoch
ends with an atomic checkpoint holding the supernet (weights and α, β), both optimisers, the
schedule, RNG states and the history; batches are drawn from generators seeded by
(seed, step), so a resumed run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from hdnas.search.architect import Architect
from hdnas.core.run import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from hdnas.core.config import (
    ConfigError,
    DataConfig,
    first_difference,
    format_count,
    from_dict,
    merge,
    parse_count,
    parse_overrides,
    read_yaml,
    to_dict,
)
from hdnas.core.distributed import DistContext, init_distributed, resolve_device
from hdnas.core.errors import HdnasError
from hdnas.core.space import SearchSpace

HR_SIZE = (720, 1280)  # Multi-Adds are reported for a 1280×720 output, as lightweight-SR papers do


class SearchError(HdnasError):
    """The search cannot start or cannot go on (bad budget, non-finite loss, mismatched resume)."""


@dataclass
class SearchOptions:
    epochs: int = 10
    steps_per_epoch: int = 32
    warmup_epochs: int = 2  # weights only, so α does not lock onto the ops that train fastest
    order: int = 1  # 1: first-order DARTS; 2: unrolled, finite-difference Hessian-vector product
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
    penalty_weight: float = 1.0
    # The penalty's expected cost is taken over softmax(α/τ), τ annealed geometrically from
    # tau_start to tau_end over the architecture epochs: at τ = 1 it averages ops that argmax will
    # drop (L1 can favour the dearest op while cheap ones keep the average at the budget); as τ falls
    # it approaches the cost of the architecture that will actually be derived.
    penalty_tau_start: float = 1.0
    penalty_tau_end: float = 0.1
    fused: bool = True  # fused mixed ops (same mathematics, faster)
    budget_derivation: bool = True  # final derivation swaps the fewest, least likely ops to land in the band
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
        if self.w_optimizer not in ("adam", "sgd"):
            raise ConfigError(f"search.w_optimizer: expected 'adam' or 'sgd', got '{self.w_optimizer}'")
        if len(self.a_betas) != 2:
            raise ConfigError(f"search.a_betas: expected two numbers, got {self.a_betas}")
        if not (0 < self.penalty_tau_end <= self.penalty_tau_start):
            raise ConfigError(
                f"search.penalty_tau_end: expected 0 < tau_end <= tau_start ({self.penalty_tau_start}), "
                f"got {self.penalty_tau_end}"
            )
        if not 0 < self.derive_tolerance < 1:
            raise ConfigError(f"search.derive_tolerance: expected a fraction in (0, 1), got {self.derive_tolerance}")
        if self.budget is not None:
            b = parse_count(self.budget, "search.budget")
            if b <= 0:
                raise ConfigError(f"search.budget: expected a positive Multi-Adds count, got {self.budget}")

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
        return f"search_x{self.space.scale}_{self.space.name}{budget}_s{self.seed}"


def load_search_config(
    config: str | os.PathLike | None = None,
    space: str | os.PathLike | None = None,
    overrides: list[str] | dict = (),
) -> SearchConfig:
    """defaults <- ``--space`` file <- ``--config`` file <- overrides.

    A config's ``space`` may be a mapping of space fields or the path of a space YAML (relative to
    the config file), so one file such as ``dlsr_div2k.yaml`` names a whole paper-scale experiment.
    """
    data: dict = {}
    if space:
        data["space"] = read_yaml(space)
    if config:
        cfg_data = read_yaml(config)
        if isinstance(cfg_data.get("space"), str):
            ref = Path(cfg_data["space"])
            ref = ref if ref.is_absolute() or ref.exists() else Path(config).parent / ref
            cfg_data["space"] = read_yaml(ref)
        data = merge(data, cfg_data)
    extra = parse_overrides(overrides) if not isinstance(overrides, dict) else overrides
    data = merge(data, extra)
    try:
        return from_dict(SearchConfig, data)
    except ConfigError as exc:
        where = config or space
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None


# ------------------------------------------------------------------------------------------------


class SearchData:
    """Three disjoint image sets: weights half, architecture half, validation.

    Images are decoded once; patches are cut per step from generators the caller seeds, so the
    batches of step t are the same whether the run was resumed or not.
    """

    def __init__(self, cfg: DataConfig, scale: int, seed: int):
        from hdnas.core.data import PatchDataset, build_dataset, split_train_val

        self.scale = scale
        images = build_dataset(cfg.paths or None, scale, "train")
        if cfg.val_paths:
            val = build_dataset(cfg.val_paths, scale, "val")
            n_val = 0
        elif not cfg.paths:
            val = build_dataset(None, scale, "val")
            n_val = 0
        else:
            val = None
            n_val = max(1, round(cfg.val_fraction * len(images)))
        parts = split_train_val(list(range(len(images))), n_val=n_val, seed=seed)
        if val is None:
            val = images.subset(parts.val, name=f"{images.name} (held out)")
        self.val = val.subset(range(min(len(val), cfg.val_max_images or len(val))))
        self.halves = {
            "w": PatchDataset(images.subset(parts.weights), cfg.patch, augment=cfg.augment, skip_small=True),
            "a": PatchDataset(images.subset(parts.arch), cfg.patch, augment=cfg.augment, skip_small=True),
        }
        self.description = (
            f"{images.name}: {len(parts.weights)} images for weights, {len(parts.arch)} for the architecture, "
            f"{len(self.val)} for validation"
        )
        self._bicubic: float | None = None

    def sample(self, half: str, batch: int, patch: int, generator: torch.Generator):
        return self.halves[half].sample_batch(batch, generator)

    def val_pairs(self):
        for im in self.val:
            yield im.lr.float().div(255.0), im.hr.float().div(255.0)

    def bicubic_psnr(self) -> float:
        """The bar a search must clear: bicubic upscaling on the same validation images."""
        if self._bicubic is None:
            from hdnas.core.data import imresize
            from hdnas.core.metrics import psnr_y

            vals = [float(psnr_y(imresize(lr, scale=self.scale).clamp(0, 1), hr, self.scale)) for lr, hr in self.val_pairs()]
            self._bicubic = sum(vals) / max(len(vals), 1)
        return self._bicubic


def _cosine(step: int, total: int, lr: float, lr_min: float) -> float:
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def _step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A fresh generator per (seed, step, stream): batches do not depend on what ran before."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 7 + stream) % (2**63 - 1))
    return g


@dataclass
class SearchResult:
    genotype: Any
    run_dir: Path
    val_psnr: float
    bicubic_psnr: float
    history: list[dict]
    argmax_macs: int | None = None  # exact cost of the plain argmax genotype (before any budget swaps)
    swaps: list[str] = field(default_factory=list)


class Searcher:
    """Builds the supernet, data and optimisers from a config and runs the bilevel loop."""

    def __init__(self, cfg: SearchConfig, dist_ctx: DistContext | None = None, progress: bool = True, log: bool = True):
        from hdnas.core import cost
        from hdnas.search.supernet import SuperNet

        self.cfg = cfg
        self.dist = dist_ctx or DistContext()
        self.progress = progress and self.dist.is_main
        self.log = log and self.dist.is_main
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.device = self.dist.device if self.dist.enabled else resolve_device(cfg.device)
        self.run_dir = Path(cfg.runs_dir) / cfg.run_name()
        self.ckpt_path = self.run_dir / "checkpoint.pt"
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
        seed_everything(cfg.seed)
        self.model = SuperNet(cfg.space, fused=opts.fused).to(self.device)
        self.data = SearchData(cfg.data, cfg.space.scale, cfg.seed)
        if cfg.data.batch % self.dist.world_size:
            raise SearchError(f"data.batch {cfg.data.batch} does not split evenly over {self.dist.world_size} processes")
        w_params = list(self.model.weight_parameters())
        if opts.w_optimizer == "adam":
            self.w_opt = torch.optim.Adam(w_params, lr=opts.w_lr, weight_decay=opts.w_weight_decay)
        else:
            self.w_opt = torch.optim.SGD(w_params, lr=opts.w_lr, momentum=opts.w_momentum, weight_decay=opts.w_weight_decay)
        space = cfg.space
        self.architect = Architect(
            self.model,
            cost_fn=lambda: cost.expected_macs(space, self.model.arch_probs(self.penalty_tau), HR_SIZE),
            budget=self.budget,
            lr=opts.a_lr,
            betas=opts.a_betas,
            weight_decay=opts.a_weight_decay,
            penalty_weight=opts.penalty_weight,
            order=opts.order,
            unrolled_lr=opts.unrolled_lr if opts.unrolled_lr is not None else opts.w_lr,
            w_weight_decay=opts.w_weight_decay,
            dist_ctx=self.dist,
        )
        self.total_steps = opts.epochs * opts.steps_per_epoch
        self.penalty_tau = opts.penalty_tau_start
        self.epoch = 0
        self.history: list[dict] = []
        self.writer = None

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": "hdnas-search-checkpoint/1",
            "config": json.dumps(to_dict(self.cfg), sort_keys=True),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "w_optimizer": self.w_opt.state_dict(),
            "architect": self.architect.state_dict(),
            "rng": rng_state(),
            "history": json.dumps(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != "hdnas-search-checkpoint/1":
            raise SearchError(f"{self.ckpt_path}: not an hdnas search checkpoint")
        saved = json.loads(state["config"])
        now = to_dict(self.cfg)
        diff = first_difference(saved, now)
        if diff is not None:
            raise SearchError(
                f"{self.ckpt_path}: --resume with a different config: '{diff[0]}' was {diff[1]!r} in the checkpoint, "
                f"now {diff[2]!r}"
            )
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_optimizer"])
        self.architect.load_state_dict(state["architect"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.history = json.loads(state["history"])

    def resume(self) -> bool:
        """Continue from ``runs/<name>/checkpoint.pt`` if it exists; returns whether it did."""
        if not self.ckpt_path.exists():
            return False
        self.load_state_dict(load_checkpoint(self.ckpt_path, map_location=self.device))
        return True

    def save(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.state_dict(), self.ckpt_path)
        self.dist.barrier()

    # -- loop -----------------------------------------------------------------------------------
    def _batch(self, step: int, half: str) -> tuple[torch.Tensor, torch.Tensor]:
        g = _step_generator(self.cfg.seed, step, 0 if half == "w" else 1)
        lr, hr = self.data.sample(half, self.cfg.data.batch, self.cfg.data.patch, g)
        sl = self.dist.shard(self.cfg.data.batch)
        return lr[sl].to(self.device), hr[sl].to(self.device)

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
        from hdnas.core import cost
        from hdnas.search.derive import derive

        opts = self.cfg.search
        self._open_writer()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.epoch * opts.steps_per_epoch, desc=self.cfg.run_name(),
                       dynamic_ncols=True, leave=True)
        val_psnr = self.history[-1]["val_psnr"] if self.history else float("nan")
        try:
            while self.epoch < opts.epochs:
                epoch = self.epoch
                t0 = time.time()
                sums = {"w_loss": 0.0, "a_loss": 0.0, "penalty": 0.0}
                expected = float("nan")
                search_arch = epoch >= opts.warmup_epochs
                self.penalty_tau = self.tau_at(epoch)
                self.model.train()
                for i in range(opts.steps_per_epoch):
                    step = epoch * opts.steps_per_epoch + i
                    if search_arch:
                        res = self.architect.step(self._batch(step, "w"), self._batch(step, "a"))
                        if not (math.isfinite(res.loss) and math.isfinite(res.penalty)):
                            raise SearchError(
                                f"non-finite architecture loss at step {step} (epoch {epoch}); the last good "
                                f"checkpoint {self.ckpt_path} is kept"
                            )
                        sums["a_loss"] += res.loss
                        sums["penalty"] += res.penalty
                        expected = res.expected_macs
                    w_loss = self._weight_step(step)
                    if not math.isfinite(w_loss):
                        raise SearchError(
                            f"non-finite weight loss at step {step} (epoch {epoch}); the last good checkpoint "
                            f"{self.ckpt_path} is kept"
                        )
                    sums["w_loss"] += w_loss
                    if bar is not None:
                        bar.update(1)
                        post = {"L1": f"{w_loss:.4f}"}
                        if math.isfinite(val_psnr):
                            post["PSNR"] = f"{val_psnr:.2f}"
                        if math.isfinite(expected):
                            post["E[MAdds]"] = format_count(expected)
                        bar.set_postfix(post, refresh=False)
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
        finally:
            if bar is not None:
                bar.close()
            if self.writer is not None:
                self.writer.flush()
        return self._result()

    def _result(self) -> SearchResult:
        from hdnas.core import cost
        from hdnas.search.derive import derive, derive_within_budget

        opts = self.cfg.search
        val = self.history[-1]["val_psnr"] if self.history else float("nan")
        if self.budget is not None and opts.budget_derivation:
            res = derive_within_budget(self.model, self.cfg.space, self.budget, opts.derive_tolerance, HR_SIZE)
            geno, argmax_macs, swaps = res.genotype, res.argmax_macs, res.swaps
        else:
            geno = derive(self.model, self.cfg.space)
            argmax_macs, swaps = cost.count(geno, HR_SIZE).macs, []
        return SearchResult(geno, self.run_dir, val, self.data.bicubic_psnr(), self.history, argmax_macs, swaps)

    # -- validation and logging -----------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        """Mean PSNR-Y of the supernet on the validation images (whole images, border = scale)."""
        from hdnas.core.metrics import psnr_y

        self.model.eval()
        scale = self.cfg.space.scale
        values = []
        for lr, hr in self.data.val_pairs():
            sr = self.model(lr.unsqueeze(0).to(self.device))[0].clamp(0, 1).cpu()
            values.append(float(psnr_y(sr, hr, scale)))
        self.model.train()
        return sum(values) / max(len(values), 1)

    def _open_writer(self) -> None:
        if not self.log or self.writer is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard missing: keep searching, just without logs
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=self.epoch * self.cfg.search.steps_per_epoch)

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
        try:
            from hdnas.core.plots import alpha_figure

            w.add_figure("arch/alpha_heatmap", alpha_figure(probs, self.cfg.space), step)
        except Exception:  # noqa: BLE001 - a plotting problem must not stop a search
            pass
        try:
            from hdnas.core import render

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
        except Exception:  # noqa: BLE001
            pass
        w.flush()


def _png_to_chw(png: bytes):
    import io

    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _machine() -> dict:
    from hdnas.core.machine import machine_info

    info = machine_info()
    return {k: info[k] for k in ("cpu", "usable_cores", "torch", "torch_threads", "cuda")}


def provenance(cfg: SearchConfig, result: SearchResult, report, command: list[str] | None = None) -> dict:
    """What a reader needs to trust and reproduce a genotype."""
    import hdnas

    return {
        "tool": "hdnas search",
        "hdnas_version": hdnas.__version__,
        "command": " ".join(command if command is not None else sys.argv),
        "config": to_dict(cfg),
        "seed": cfg.seed,
        "data": cfg.data.paths or ["<built-in sample set>"],
        "multi_adds": report.macs,
        "multi_adds_at": "1280x720 output",
        "params": report.params,
        "budget": cfg.search.budget_macs,
        "argmax_multi_adds": result.argmax_macs,
        "budget_swaps": result.swaps,
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


def run_search(
    cfg: SearchConfig,
    out: str | os.PathLike,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
    dist_ctx: DistContext | None = None,
) -> SearchOutcome | None:
    """The whole job behind ``tools/search.py``: search, derive, record provenance, draw.

    Refuses to start when ``out`` exists (unless ``force``) or when the run folder already holds a
    checkpoint that ``resume`` was not asked to continue, so no finished work is overwritten by accident.
    """
    from hdnas.core import cost

    out = Path(out)
    if out.exists() and not force:
        raise SearchError(f"{out}: exists; pass --force to overwrite it or --out to write elsewhere")
    dist_ctx = dist_ctx or init_distributed(cfg.device)
    searcher = Searcher(cfg, dist_ctx=dist_ctx, progress=progress)
    if resume:
        searcher.resume()
    elif searcher.ckpt_path.exists() and not force:
        raise SearchError(
            f"{searcher.ckpt_path}: a run with this name has a checkpoint; pass --resume to continue it, "
            f"--force to start over, or name=<new name>"
        )
    result = searcher.run()
    if not dist_ctx.is_main:
        return None
    geno = result.genotype
    report = cost.count(geno, HR_SIZE)
    geno.provenance = provenance(cfg, result, report, command)
    geno.save(out, force=True)
    drawings: list[Path] = []
    note = None
    try:
        from hdnas.core import render

        written = render.write_drawings(geno, out.with_suffix(""))
        drawings, note = written.paths, written.message
    except Exception as exc:  # noqa: BLE001 - the genotype is saved; drawing is a bonus
        note = f"drawings not written: {exc}"
    return SearchOutcome(geno, out, drawings, note, result)
