"""Dual regression compression (DRC; Guo et al., 2022): how many channels each layer keeps, and which.

Steps (the job that chains them is :func:`hdnas.compress.job.run_compress`):

1. **Channel-number search** (:class:`ChannelSearch`, a :class:`hdnas.core.run.Run`). Every prunable
   layer l of :func:`hdnas.core.surgery.prunable_widths` gets candidate widths
   ``round((1 − rate)·C_l·f)`` for f in ``drc.factors`` (multiples of ``drc.round_to``, at least one
   multiple, at most ``C_l``). They are mixed by softmax(α_l) over width masks: channel c of the
   layer is scaled by ``Σ_j p_lj·[rank_l(c) < w_lj]``, ranks by saliency (step 2), so candidate j
   keeps exactly the ``w_lj`` channels that selection would keep. At one-hot α the masked net *is*
   the pruned net (the masks act on every conv that produces the layer's channels, as in
   :mod:`hdnas.core.surgery`'s exactness note). α moves bilevel — the search engine's
   :class:`~hdnas.search.architect.Architect`, first or second order — on the dual-regression
   objective L1(SR, HR) + λ·L1(D(SR), LR) of an architecture batch, the weights (net and D) on
   another; its penalty pulls the expected Multi-Adds to the target.
2. **Channel selection** (:func:`saliency`, :func:`select_channels`). A channel's saliency is
   |gradient × weight| of the dual-regression loss summed over the filters that produce it (the
   first-order change of the loss when the channel is removed), averaged over seeded batches;
   each layer keeps its most salient channels.
3. **Surgery**: :func:`hdnas.core.surgery.prune` on the unpruned trained net.
4. **Fine-tuning** with the unpruned net as teacher: :func:`hdnas.compress.prune.finetune`.

Expected Multi-Adds. The exact count (:func:`hdnas.core.cost.count`) of a genotype is a sum of
terms each of which reads at most one prunable width (the cell fusion's input is the *sum* of its
distillation widths), so E[Multi-Adds] = base + Σ_l Σ_j p_lj·Δ_lj, with Δ_lj the exact change of
the count when layer l alone is at width w_lj. At one-hot α it equals ``count`` of the pruned
genotype exactly (tested), and it is differentiable in α.

Target. ``rate`` is DRC's channel pruning rate p: the target is the exact Multi-Adds of every
prunable layer cut to ``(1 − p)·C_l`` (:func:`uniform_widths`) — the search spends that cost
where the dual-regression loss needs it most. (The trunk width is tied by the residuals and not
prunable, so a fixed share of the Multi-Adds is out of reach; a target of (1 − p) × the whole
count would often be unreachable.)
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from hdnas.core.cost import count
from hdnas.core.distributed import DistContext
from hdnas.core.genotype import Genotype
from hdnas.core.network import DerivedNet
from hdnas.core.ops import get_op
from hdnas.core.run import Run
from hdnas.core.surgery import prunable_widths, pruned_genotype
from hdnas.compress.config import CompressConfig, CompressError
from hdnas.search.architect import Architect
from hdnas.search.engine import SearchData
from hdnas.train.dual import DualModel


# ------------------------------------------------------------------------------------------ widths


def _round(x: float, full: int, multiple: int) -> int:
    return int(min(full, max(min(multiple, full), multiple * round(x / multiple))))


def uniform_widths(genotype: Genotype, rate: float, round_to: int = 4) -> dict[str, int]:
    """Every prunable layer at ``(1 − rate)·C_l``, rounded to ``round_to`` (the target's widths)."""
    return {name: _round((1 - rate) * c, c, round_to) for name, c in prunable_widths(genotype).items()}


def candidate_widths(genotype: Genotype, rate: float, factors, round_to: int = 4) -> dict[str, list[int]]:
    """Layer -> its sorted distinct candidate widths ``(1 − rate)·C_l·f``."""
    return {name: sorted({_round((1 - rate) * c * f, c, round_to) for f in factors})
            for name, c in prunable_widths(genotype).items()}


def widths_genotype(genotype: Genotype, widths: dict[str, int]) -> Genotype:
    """The genotype at ``widths`` (the first channels of each layer; only the widths matter)."""
    return pruned_genotype(genotype, {name: range(w) for name, w in widths.items()})


def layer_modules(net: DerivedNet, name: str) -> list[nn.Conv2d]:
    """The convs whose outputs carry layer ``name``'s channels (its producer first): zeroing a channel
    of all of them removes it (:mod:`hdnas.core.surgery`)."""
    if name == "fusion":
        return [net.fusion]
    cell_name, kind, *k = name.split(".")
    cell = net.cells[cell_name]
    if kind == "distill":
        return [cell.distill[int(k[0])]]
    if kind == "last":
        return [cell.last]
    if kind == "esa":
        e = cell.esa
        return [e.reduce, e.down, e.conv_max, e.conv3, e.conv3_, e.conv_f]
    op_name = net.genotype.cells[int(cell_name[4:]) - 1].ops[int(k[0])]
    inner = get_op(op_name).inner
    op = cell.ops[int(k[0])]
    return [op[inner.out], *(op[j] for j in inner.depthwise)]


class ChannelGates:
    """Forward hooks that scale the channels of every prunable layer by ``gate_fn(name)`` (a (C_l,) tensor)."""

    def __init__(self, net: DerivedNet, gate_fn: Callable[[str], torch.Tensor], names):
        self.handles = []
        for name in names:
            for conv in layer_modules(net, name):
                self.handles.append(conv.register_forward_hook(
                    lambda mod, inp, out, name=name: out * gate_fn(name).to(out.dtype).view(1, -1, 1, 1)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def dual_loss(sr: torch.Tensor, dual_sr: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor,
              weight: float) -> torch.Tensor:
    """L1(SR, HR) + weight·L1(D(SR), LR): DRN's dual-regression objective."""
    return F.l1_loss(sr, hr) + weight * F.l1_loss(dual_sr, lr)


# ---------------------------------------------------------------------------------------- saliency


def saliency(net: DerivedNet, dual: nn.Module, batches, dual_weight: float = 0.1) -> dict[str, torch.Tensor]:
    """Layer -> per-channel |gradient × weight| of the dual-regression loss, averaged over ``batches``.

    Computed as the gradient of a gate g = 1 on each channel (the gate scales the channel's filters
    and biases, so ∂L/∂g = Σ w·∂L/∂w over them): the first-order change of the loss when the channel
    is removed. ``net`` and ``dual`` are not changed (their gradients are not touched).
    """
    names = list(prunable_widths(net.genotype))
    p = next(net.parameters())
    gates = {name: torch.ones(c, dtype=p.dtype, device=p.device, requires_grad=True)
             for name, c in prunable_widths(net.genotype).items()}
    hooks = ChannelGates(net, gates.__getitem__, names)
    total = {name: torch.zeros(g.shape, dtype=torch.float64, device=p.device) for name, g in gates.items()}
    was = net.training
    net.eval()
    try:
        n = 0
        for lr, hr in batches:
            sr = net(lr)
            loss = dual_loss(sr, dual(sr), lr, hr, dual_weight)
            grads = torch.autograd.grad(loss, [gates[k] for k in names])
            for k, g in zip(names, grads):
                total[k] += g.detach().double().abs()
            n += 1
    finally:
        hooks.remove()
        net.train(was)
    return {k: (v / max(n, 1)).float() for k, v in total.items()}


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Channel indices, most salient first (ties: lower index first, so the order is deterministic)."""
    return torch.tensor(sorted(range(len(scores)), key=lambda c: (-float(scores[c]), c)), dtype=torch.long)


def select_channels(scores: dict[str, torch.Tensor], widths: dict[str, int]) -> dict[str, list[int]]:
    """Layer -> the ``widths[layer]`` most salient channels (sorted indices), for :func:`~hdnas.core.surgery.prune`."""
    return {name: sorted(ranking(scores[name])[:w].tolist()) for name, w in widths.items()}


# ---------------------------------------------------------------------------------- the search net


def load_dual_state(dual: nn.Module, state: dict | None, features: int) -> None:
    """Load the source run's dual model into ``dual`` (nothing when it had none); a clear error when
    ``loss.dual.features`` differs from the source run's."""
    if state is None:
        return
    try:
        dual.load_state_dict(state)
    except RuntimeError:
        raise CompressError(f"the source checkpoint's dual model does not fit loss.dual.features={features}; "
                            f"set it to the source run's value") from None


class ChannelSearchNet(nn.Module):
    """A trained :class:`DerivedNet` whose prunable layers are softmax(α)-mixtures of width masks, and
    the dual model D. ``forward(lr)`` returns (SR, D(SR)). Weight parameters: the net's and D's;
    architecture parameters: one α per layer (what :class:`Architect` reads)."""

    def __init__(self, net: DerivedNet, dual: nn.Module, candidates: dict[str, list[int]],
                 scores: dict[str, torch.Tensor], hr_size: tuple[int, int] | None = None):
        super().__init__()
        self.net = net
        self.dual = dual
        self.names = list(candidates)
        self.candidates = {k: list(v) for k, v in candidates.items()}
        self.alphas = nn.ParameterList(nn.Parameter(torch.zeros(len(candidates[k]))) for k in self.names)
        genotype = net.genotype
        kw = {} if hr_size is None else {"hr_size": hr_size}
        self.base_macs = count(genotype, **kw).macs
        full = prunable_widths(genotype)
        for i, name in enumerate(self.names):
            order = ranking(scores[name])
            masks = torch.zeros(len(candidates[name]), full[name])
            for j, w in enumerate(candidates[name]):
                masks[j, order[:w]] = 1.0
            self.register_buffer(f"masks{i}", masks)
            deltas = [count(widths_genotype(genotype, {name: w}), **kw).macs - self.base_macs
                      for w in candidates[name]]
            self.register_buffer(f"deltas{i}", torch.tensor(deltas, dtype=torch.float64))
        self._index = {k: i for i, k in enumerate(self.names)}
        self._gates = ChannelGates(net, self.mask, self.names)

    def arch_parameters(self):
        return list(self.alphas)

    def weight_parameters(self):
        return list(self.net.parameters()) + list(self.dual.parameters())

    def probs(self, name: str) -> torch.Tensor:
        return F.softmax(self.alphas[self._index[name]], dim=0)

    def mask(self, name: str) -> torch.Tensor:
        i = self._index[name]
        return self.probs(name) @ getattr(self, f"masks{i}")

    def forward(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sr = self.net(lr)
        return sr, self.dual(sr)

    def expected_macs(self, probs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """E[Multi-Adds] under softmax(α) (or the given per-layer ``probs``), float64, differentiable."""
        total = torch.tensor(float(self.base_macs), dtype=torch.float64, device=self.alphas[0].device)
        for i, name in enumerate(self.names):
            p = self.probs(name) if probs is None else probs[name]
            total = total + (p.double() * getattr(self, f"deltas{i}")).sum()
        return total

    def argmax_widths(self) -> dict[str, int]:
        return {k: self.candidates[k][int(self.probs(k).argmax())] for k in self.names}


# -------------------------------------------------------------------------------------- derivation


def widths_within_budget(model: ChannelSearchNet, target: float, tolerance: float) -> tuple[dict[str, int], list[str]]:
    """The argmax widths, then single-layer moves to the neighbouring candidate until the exact
    Multi-Adds are within ±tolerance of ``target``: each move takes the layer with the most
    probability on that side of its current width. Returns (widths, the moves made)."""
    genotype = model.net.genotype
    idx = {k: int(model.probs(k).argmax()) for k in model.names}
    moves: list[str] = []

    def macs() -> int:
        return count(widths_genotype(genotype, {k: model.candidates[k][j] for k, j in idx.items()})).macs

    for _ in range(sum(len(v) for v in model.candidates.values())):
        now = macs()
        if abs(now - target) <= tolerance * target:
            break
        down = now > target
        best, best_mass = None, -1.0
        for k in model.names:
            j, p = idx[k], model.probs(k).detach()
            if (down and j == 0) or (not down and j == len(p) - 1):
                continue
            mass = float(p[:j].sum() if down else p[j + 1:].sum())
            if mass > best_mass:
                best, best_mass = k, mass
        if best is None:
            break
        old = model.candidates[best][idx[best]]
        idx[best] += -1 if down else 1
        moves.append(f"{best}: {old}->{model.candidates[best][idx[best]]}")
    return {k: model.candidates[k][j] for k, j in idx.items()}, moves


# ----------------------------------------------------------------------------------------- the loop


@dataclass
class ChannelSearchResult:
    widths: dict[str, int]
    target_macs: int
    macs: int  # exact, at ``widths``
    expected_macs: float  # under the final softmax(α)
    moves: list[str]
    probs: dict[str, list[float]]
    step: int
    seconds: float
    stopped: str  # done | time | max_steps


class ChannelSearch(Run):
    """Step 1 of DRC on the run scaffold: α bilevel with the :class:`Architect`, weights and D on the other half."""

    kind = "channel search"
    checkpoint_format = "hdnas-drc-checkpoint/1"
    Error = CompressError
    elsewhere = "--out <another folder>"

    def __init__(self, cfg: CompressConfig, net: DerivedNet, run_dir: str | os.PathLike, *,
                 dual_state: dict | None = None, data: SearchData | None = None,
                 dist_ctx: DistContext | None = None, progress: bool = True, log: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(cfg, run_dir, "checkpoint.pt", dist_ctx=dist_ctx, progress=progress, log=log)
        self.clock = clock
        opts = cfg.drc
        genotype = net.genotype
        self.genotype = genotype
        self.target = count(widths_genotype(genotype, uniform_widths(genotype, cfg.rate, opts.round_to))).macs
        self.data = data or SearchData(cfg.data, genotype.scale, cfg.seed)
        net = copy.deepcopy(net).to(self.device).train()
        for p in net.parameters():
            p.requires_grad_(True)
        dual = DualModel(genotype.scale, cfg.loss.dual.features)
        load_dual_state(dual, dual_state, cfg.loss.dual.features)
        dual = dual.to(self.device)
        self.scores = saliency(net, dual, [self._batch(b, "a", stream=2) for b in range(opts.saliency_batches)],
                               opts.dual_weight)
        candidates = candidate_widths(genotype, cfg.rate, opts.factors, opts.round_to)
        self.model = ChannelSearchNet(net, dual, candidates, self.scores).to(self.device)
        self.w_opt = torch.optim.Adam(self.model.weight_parameters(), lr=opts.w_lr)
        weight = opts.dual_weight
        self.architect = Architect(
            self.model, cost_fn=self.model.expected_macs, budget=float(self.target), lr=opts.a_lr,
            betas=opts.a_betas, weight_decay=opts.a_weight_decay, penalty_weight=opts.penalty_weight,
            order=opts.order, unrolled_lr=opts.w_lr, dist_ctx=self.dist,
            loss_fn=lambda out, lr, hr: dual_loss(out[0], out[1], lr, hr, weight))
        self.step = 0
        self.elapsed = 0.0

    # -- state -----------------------------------------------------------------------------------
    @property
    def position(self) -> int:
        return self.step

    def loop_state(self) -> dict:
        return {"genotype": self.genotype.to_dict(), "step": self.step, "elapsed": self.elapsed,
                "model": self.model.state_dict(), "w_optimizer": self.w_opt.state_dict(),
                "architect": self.architect.state_dict(), "saliency": dict(self.scores)}

    def check_checkpoint(self, state: dict, where) -> None:
        if state.get("genotype") != self.genotype.to_dict():
            raise CompressError(f"{where}: this channel search was for another net (its genotype differs)")

    def load_loop_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_optimizer"])
        self.architect.load_state_dict(state["architect"])
        self.scores = dict(state["saliency"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])

    # -- steps -----------------------------------------------------------------------------------
    def _batch(self, step: int, half: str, stream: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        stream = (0 if half == "w" else 1) if stream is None else stream
        lr, hr = self.data.sample(half, self.cfg.data.batch, self.generator(step, stream))
        sl = self.dist.shard(self.cfg.data.batch)
        return lr[sl].to(self.device), hr[sl].to(self.device)

    def _weight_step(self, step: int) -> float:
        lr, hr = self._batch(step, "w")
        sr, dsr = self.model(lr)
        loss = dual_loss(sr, dsr, lr, hr, self.cfg.drc.dual_weight)
        params = self.model.weight_parameters()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        self.dist.all_reduce_mean(grads)
        for p, g in zip(params, grads):
            p.grad = g
        self.w_opt.step()
        self.w_opt.zero_grad(set_to_none=True)
        return self.dist.all_reduce_scalar(float(loss.detach()))

    def budget_seconds(self) -> float | None:
        m = self.cfg.minutes
        return None if m is None else m * 60.0 * self.cfg.drc.search_fraction

    def run(self, max_steps: int | None = None) -> ChannelSearchResult:
        opts = self.cfg.drc
        budget = self.budget_seconds()
        started = self.clock()
        stop = "done"
        with self.session(opts.steps, self.step, minutes=None if budget is None else budget / 60.0,
                          seconds=self.elapsed, clock=self.clock) as bar:
            while self.step < opts.steps:
                if max_steps is not None and self.step >= max_steps:
                    stop = "max_steps"
                    break
                if budget is not None and self.elapsed + self.clock() - started >= budget:
                    stop = "time"
                    break
                step = self.step
                self.model.train()
                res = self.architect.step(self._batch(step, "w"), self._batch(step, "a"))
                w_loss = self._weight_step(step)
                if not (math.isfinite(res.loss) and math.isfinite(w_loss)):
                    raise CompressError(f"non-finite loss in the channel search at step {step}; the last good "
                                        f"checkpoint {self.ckpt_path} is kept")
                self.step += 1
                record = {"step": self.step, "a_loss": res.loss, "w_loss": w_loss, "penalty": res.penalty,
                          "expected_macs": res.expected_macs}
                if self.step % opts.log_every == 0:
                    self.history.append(record)
                    self._log(record)
                bar.advance(self.step, loss=f"{w_loss:.4f}", E=f"{res.expected_macs / 1e9:.3f}G",
                            target=f"{self.target / 1e9:.3f}G")
                if self.step % opts.save_every == 0:
                    self.elapsed += self.clock() - started
                    started = self.clock()
                    self.save()
            self.elapsed += self.clock() - started
            self.save()
        return self.result(stop)

    def _log(self, record: dict) -> None:
        if self.writer is None:
            return
        with self.logging("the channel-search scalars"):
            for k, v in record.items():
                if k != "step":
                    self.writer.add_scalar(f"drc/{k}", v, self.step)
            for name in self.model.names:
                expected = float((self.model.probs(name).detach() * torch.tensor(
                    self.model.candidates[name], dtype=torch.float32, device=self.device)).sum())
                self.writer.add_scalar(f"width/{name}", expected, self.step)

    @torch.no_grad()
    def result(self, stop: str = "done") -> ChannelSearchResult:
        widths, moves = widths_within_budget(self.model, self.target, self.cfg.drc.tolerance)
        return ChannelSearchResult(
            widths=widths, target_macs=int(self.target), macs=count(widths_genotype(self.genotype, widths)).macs,
            expected_macs=float(self.model.expected_macs()), moves=moves,
            probs={k: [round(float(x), 4) for x in self.model.probs(k)] for k in self.model.names},
            step=self.step, seconds=self.elapsed, stopped=stop)


def search_run_dir(out: str | os.PathLike) -> Path:
    return Path(out) / "search"
