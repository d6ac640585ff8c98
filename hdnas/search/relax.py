"""Which architecture the budget penalty prices: the soft mixture, the argmax, or a hard sample.

The expected cost under softmax(α, β) averages ops that derivation drops, so a search can meet its
budget in expectation while its argmax lands far off it (a soft mix of a cheap and a dear op is on
budget; the argmax keeps the dear one). Pricing a *discrete* architecture removes that gap: the
penalty's value is the exact cost of one genotype, and its gradient reaches α and β through the
softmax by the straight-through estimator (value of the one-hot choice, gradient of the soft one),
as in GDAS, FBNet and ProxylessNAS.

* ``argmax``: the genotype :func:`hdnas.search.derive.derive` would return now — the penalty is on
  exactly the architecture that will be derived;
* ``gumbel``: a hard Gumbel-softmax sample (Gumbel top-k for a cell's inputs and the fusion), so
  near-tied choices are explored and the penalty is on the cost the distribution actually spreads;
* ``expected``: the soft mixture at temperature τ (the classic differentiable penalty).
"""

from __future__ import annotations

from typing import Callable

import torch

from hdnas.core.cost import indicator_probs
from hdnas.core.space import ArchProbs, SearchSpace
from hdnas.search.derive import derive

PENALTY_ON = ("argmax", "gumbel", "expected")


def _map(probs: ArchProbs, fn) -> ArchProbs:
    return ArchProbs(alpha=fn(probs.alpha, -1), inputs=[fn(p, 0) for p in probs.inputs], fusion=fn(probs.fusion, 0))


def gumbel(probs: ArchProbs, tau: float, generator: torch.Generator) -> ArchProbs:
    """softmax((log p + g) / τ), g ~ Gumbel(0, 1) drawn from ``generator`` (seeded per step, so a resumed
    search draws the same samples). Its argmax / top-k is a sample of the categorical p (top-k: without
    replacement), which is what :func:`straight_through` then picks."""

    def perturb(p: torch.Tensor, dim: int) -> torch.Tensor:
        if p.numel() <= 1:  # cell 1 reads the stem: nothing to choose
            return p
        u = torch.rand(p.shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
        g = (-torch.log(-torch.log(u))).to(device=p.device, dtype=p.dtype)
        return torch.softmax((torch.log(p.clamp_min(1e-30)) + g) / tau, dim=dim)

    return _map(probs, perturb)


def straight_through(soft: ArchProbs, space: SearchSpace) -> ArchProbs:
    """The indicator probabilities of ``derive(soft)`` in value, with the gradient of ``soft``.

    Any additive cost table evaluated on the result (:func:`hdnas.core.cost.expected_cost`) is the
    exact cost of that genotype, and its gradient is the soft mixture's gradient taken at the
    discrete point (dead cells get none: their ops cost nothing there).
    """
    hard = indicator_probs(derive(soft, space), space)

    def st(h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(s).to(torch.float64)
        return h.to(s.device) + (s - s.detach())  # (s − s) is exactly 0: the value is exactly h

    return ArchProbs(
        alpha=st(hard.alpha, soft.alpha),
        inputs=[st(h, s) for h, s in zip(hard.inputs, soft.inputs)],
        fusion=st(hard.fusion, soft.fusion),
    )


def entropy(probs: ArchProbs) -> torch.Tensor:
    """Mean entropy of the op choices (α rows), in nats. Minimised beside the penalty, it drives them
    toward one-hot, so the expected cost of the ops becomes the argmax's. (β is left out: derivation
    keeps the top k inputs and top m fusion cells, whose indicator is not one-hot.)"""
    return -(probs.alpha * torch.log(probs.alpha.clamp_min(1e-30))).sum(-1).mean()


def penalty_probs(kind: str, arch_probs: Callable[[float], ArchProbs], space: SearchSpace, tau: float,
                  generator: torch.Generator | None = None) -> ArchProbs:
    """The probabilities the penalty evaluates its cost tables on, for ``search.penalty_on = kind``;
    ``arch_probs(τ)`` is the supernet's softmax of α/τ and β/τ."""
    if kind == "expected":
        return arch_probs(tau)
    if kind == "argmax":
        return straight_through(arch_probs(1.0), space)
    if kind == "gumbel":
        if generator is None:
            raise ValueError("penalty_on=gumbel needs a generator")
        return straight_through(gumbel(arch_probs(1.0), tau, generator), space)
    raise ValueError(f"search.penalty_on: expected one of {PENALTY_ON}, got '{kind}'")
