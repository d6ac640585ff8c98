"""The architecture step of the bilevel search: α, β move on held-out data under a Multi-Adds and/or latency budget.

As in DARTS, the architecture minimises the validation loss of the weights the inner problem would
give. First order treats the current weights as optimal; second order unrolls one virtual SGD step
w' = w − ξ·∇w L_train(w, a) and differentiates through it, with the Hessian-vector product taken by
central finite differences (two extra gradient evaluations instead of second derivatives).
``arch_loss="train+val"`` is the reference DLSR code's first-order step: the data term adds the
loss on the weights' training batch to the held-out one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from hdnas.core.distributed import DistContext


def budget_penalty(expected: torch.Tensor, budget: float, margin: float = 0.0) -> torch.Tensor:
    """(log(E / B))²: symmetric in ratio, zero at the budget, gradient pulls E toward B from both sides.

    Working in log-ratio makes the pull independent of the network's absolute size, so one weight
    serves ×2 nets of 30G and ×4 nets of 5G alike. ``margin`` > 0 makes it zero within
    |log(E / B)| ≤ log(1 + margin): inside that band the data term alone chooses.
    """
    r = torch.log(expected / budget)
    if margin > 0:
        r = torch.relu(r.abs() - math.log1p(margin))
    return r**2


#: The architecture step's data term: the held-out batch (DARTS), or the training batch too (reference DLSR).
ARCH_LOSSES = ("val", "train+val")


@dataclass
class ArchStepResult:
    loss: float  # data term on the architecture batch
    penalty: float
    expected_macs: float
    expected_latency_ms: float = float("nan")


class Architect:
    """Owns the architecture optimiser and computes (hyper)gradients for α, β."""

    def __init__(
        self,
        model: nn.Module,
        cost_fn: Callable[[], torch.Tensor] | None,
        budget: float | None,
        lr: float = 3e-4,
        betas: Sequence[float] = (0.5, 0.999),
        weight_decay: float = 1e-3,
        penalty_weight: float = 1.0,
        order: int = 1,
        unrolled_lr: float = 1e-3,
        w_weight_decay: float = 0.0,
        dist_ctx: DistContext | None = None,
        hvp_eps: float = 0.01,
        latency_fn: Callable[[], torch.Tensor] | None = None,
        latency_budget: float | None = None,
        loss_fn: Callable[[object, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        penalty_margin: float = 0.0,
        regularizer: Callable[[], torch.Tensor] | None = None,
        arch_loss: str = "val",
    ):
        if order not in (1, 2):
            raise ValueError(f"search.order: expected 1 or 2, got {order}")
        if arch_loss not in ARCH_LOSSES or (arch_loss != "val" and order != 1):
            raise ValueError(f"search.arch_loss: expected one of {ARCH_LOSSES} ('train+val' with order 1), got "
                             f"'{arch_loss}' with order {order}")
        self.arch_loss = arch_loss
        self.model = model
        self.cost_fn = cost_fn
        self.budget = budget
        self.latency_fn = latency_fn  # E[latency] in ms under the current α, β
        self.latency_budget = latency_budget  # ms; penalised like the Multi-Adds budget, beside it or alone
        self.penalty_weight = penalty_weight
        self.penalty_margin = penalty_margin  # the budget_penalty band
        self.regularizer = regularizer  # added to the penalty (e.g. an entropy term on α, β)
        # the data term from (model output, LR, HR); default L1(model(LR), HR). Channel pruning passes
        # the dual-regression objective, its model returning (SR, D(SR)).
        self.loss_fn = loss_fn
        self.order = order
        self.xi = unrolled_lr
        self.w_weight_decay = w_weight_decay
        self.dist = dist_ctx or DistContext()
        self.hvp_eps = hvp_eps  # finite-difference radius in weight space, relative to ‖∇w' L_val‖ (DARTS: 0.01)
        self.arch_params = list(model.arch_parameters())
        self.weight_params = list(model.weight_parameters())
        names = {id(p): n for n, p in model.named_parameters()}
        self.weight_names = [names[id(p)] for p in self.weight_params]
        self.optimizer = torch.optim.Adam(self.arch_params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)

    # -- pieces -------------------------------------------------------------------------------
    def penalty(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """λ·(penalty(E[Multi-Adds]) + penalty(E[latency])) over the budgets set, E[Multi-Adds] and E[latency]."""
        pen = torch.zeros((), device=self.arch_params[0].device)
        expected = latency = None
        for fn, budget, slot in ((self.cost_fn, self.budget, 0), (self.latency_fn, self.latency_budget, 1)):
            if fn is None:
                continue
            value = fn()
            if slot == 0:
                expected = value
            else:
                latency = value
            if budget is not None:
                pen = pen + self.penalty_weight * budget_penalty(value, budget, self.penalty_margin)
        if self.regularizer is not None:
            pen = pen + self.regularizer()
        return pen, expected, latency

    def _loss(self, lr: torch.Tensor, hr: torch.Tensor, weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if weights is None:
            sr = self.model(lr)
        else:
            sr = functional_call(self.model, dict(zip(self.weight_names, weights)), (lr,))
        return F.l1_loss(sr, hr) if self.loss_fn is None else self.loss_fn(sr, lr, hr)

    # -- steps --------------------------------------------------------------------------------
    def hypergradient(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]):
        """Gradients of (data loss + penalty) w.r.t. α, β; returns (grads, data loss, penalty, E, E[latency])."""
        pen, expected, latency = self.penalty()
        if self.order == 1:
            loss = self._loss(*val)
            if self.arch_loss == "train+val":
                loss = loss + self._loss(*train)
            grads = list(torch.autograd.grad(loss, self.arch_params, allow_unused=True))
        else:
            loss, grads = self._second_order(train, val)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.arch_params)]
        self.dist.all_reduce_mean(grads)
        if pen.requires_grad:
            pgrads = torch.autograd.grad(pen, self.arch_params, allow_unused=True)
            grads = [g if pg is None else g + pg for g, pg in zip(grads, pgrads)]
        return (grads, loss.detach(), pen.detach(), None if expected is None else expected.detach(),
                None if latency is None else latency.detach())

    def _second_order(self, train, val):
        w = [p.detach() for p in self.weight_params]
        # ∇w L_train(w, a), averaged over processes so every rank builds the same virtual step
        loss_t = self._loss(*train)
        gw = list(torch.autograd.grad(loss_t, self.weight_params, allow_unused=True))
        gw = [torch.zeros_like(p) if g is None else g for g, p in zip(gw, w)]
        self.dist.all_reduce_mean(gw)
        w_virtual = [(p - self.xi * (g + self.w_weight_decay * p)).requires_grad_(True) for p, g in zip(w, gw)]
        loss_v = self._loss(*val, weights=w_virtual)
        g_all = torch.autograd.grad(loss_v, self.arch_params + w_virtual, allow_unused=True)
        n = len(self.arch_params)
        g_direct = [torch.zeros_like(p) if g is None else g for g, p in zip(g_all[:n], self.arch_params)]
        dw = [torch.zeros_like(p) if g is None else g for g, p in zip(g_all[n:], w)]
        self.dist.all_reduce_mean(dw)
        # Hessian-vector product ∇²_{a,w} L_train · dw by central differences
        norm = torch.sqrt(sum((d.double() ** 2).sum() for d in dw)).item()
        eps = self.hvp_eps / norm if norm > 0 else 0.0
        if eps == 0.0:
            return loss_v, g_direct
        g_plus = self._arch_grad_at(train, [p + eps * d for p, d in zip(w, dw)])
        g_minus = self._arch_grad_at(train, [p - eps * d for p, d in zip(w, dw)])
        hvp = [(gp - gm) / (2 * eps) for gp, gm in zip(g_plus, g_minus)]
        # per-process terms; the caller averages g_direct − ξ·hvp across processes (it is linear)
        grads = [gd - self.xi * h for gd, h in zip(g_direct, hvp)]
        return loss_v, grads

    def _arch_grad_at(self, batch, weights):
        loss = self._loss(*batch, weights=weights)
        g = torch.autograd.grad(loss, self.arch_params, allow_unused=True)
        return [torch.zeros_like(p) if x is None else x for x, p in zip(g, self.arch_params)]

    def step(self, train, val) -> ArchStepResult:
        grads, loss, pen, expected, latency = self.hypergradient(train, val)
        for p, g in zip(self.arch_params, grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return ArchStepResult(
            loss=self.dist.all_reduce_scalar(float(loss)),
            penalty=float(pen),
            expected_macs=float("nan") if expected is None else float(expected),
            expected_latency_ms=float("nan") if latency is None else float(latency),
        )

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

