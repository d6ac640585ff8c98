"""What every reference net reports about its cost, whether it is a genotype or a plain module."""

from __future__ import annotations

from dataclasses import dataclass

from hdnas.core.cost import HR_SIZE, lr_size_for

__all__ = ["HR_SIZE", "ModelCost", "lr_size_for", "num_params"]


@dataclass(frozen=True)
class ModelCost:
    """Exact cost of one network at an HR output of ``hr_size`` (height, width).

    ``macs`` follows :mod:`hdnas.core.cost`'s convention (convolutions, bilinear upsampling, and the
    feature-map multiplications fvcore skips, which are ``extras``), so that
    ``macs == fvcore_macs(module) + extras`` for every reference net. ``paper_macs`` is the figure
    under the convention the original paper used, where that differs (FSRCNN's deconvolution).
    """

    macs: int
    params: int
    lr_size: tuple[int, int]
    extras: int = 0
    paper_macs: int | None = None
    note: str = ""


def num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())
