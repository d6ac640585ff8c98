"""Reference networks and random architectures: what a searched net is compared with.

Registry: name -> :class:`Reference`. Where a reference can be written as a genotype of our space
(``rfdn``, ``imdn_space``) it is, so the same cost model, trainer and exporter serve it; otherwise
it is a plain module with an exact, fvcore-checked cost (``imdn``, ``fsrcnn``) or a fixed function
(``bicubic``).

    >>> from hdnas.zoo import build_reference, reference_cost
    >>> net = build_reference("rfdn", scale=4)          # a DerivedNet
    >>> reference_cost("imdn", 4).params                 # 715176
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from hdnas.core.cost import HR_SIZE, count
from hdnas.core.errors import ConfigError
from hdnas.core.genotype import Genotype
from hdnas.core.network import DerivedNet
from hdnas.zoo.bicubic import Bicubic, bicubic_cost
from hdnas.zoo.common import ModelCost, num_params
from hdnas.zoo.fsrcnn import FSRCNN, YChannelSR, build_fsrcnn, fsrcnn_cost
from hdnas.zoo.imdn import IMDN, imdn_cost, imdn_space_genotype
from hdnas.zoo.rfdn import rfdn_channels_for_macs, rfdn_for_macs, rfdn_genotype
from hdnas.zoo.sampler import SamplerError, genotype_macs_fast, random_genotypes

__all__ = [
    "REFERENCES",
    "Reference",
    "ModelCost",
    "Bicubic",
    "FSRCNN",
    "IMDN",
    "YChannelSR",
    "SamplerError",
    "build_fsrcnn",
    "build_reference",
    "genotype_cost",
    "genotype_macs_fast",
    "imdn_space_genotype",
    "list_references",
    "num_params",
    "random_genotypes",
    "reference_cost",
    "rfdn_channels_for_macs",
    "rfdn_for_macs",
    "rfdn_genotype",
]


@dataclass(frozen=True)
class Reference:
    """One reference net; ``cost`` is exact (== fvcore + extras)."""

    name: str
    summary: str
    build: Callable[..., nn.Module]  # (scale, **kw)
    cost: Callable[..., ModelCost]  # (scale, hr_size, **kw)


def genotype_cost(genotype: Genotype, hr_size: tuple[int, int] = HR_SIZE) -> ModelCost:
    report = count(genotype, hr_size)
    return ModelCost(macs=report.macs, params=report.params, lr_size=report.lr_size, extras=report.extras,
                     note="extras: ESA gates (see hdnas.core.cost)" if report.extras else "")


def _from_genotype(make: Callable[..., Genotype]) -> tuple[Callable[..., nn.Module], Callable[..., ModelCost]]:
    def build(scale: int, **kw) -> nn.Module:
        return DerivedNet(make(scale, **kw))

    def cost(scale: int, hr_size: tuple[int, int] = HR_SIZE, **kw) -> ModelCost:
        return genotype_cost(make(scale, **kw), hr_size)

    return build, cost


_rfdn_build, _rfdn_cost = _from_genotype(rfdn_genotype)
_imdn_space_build, _imdn_space_cost = _from_genotype(imdn_space_genotype)

REFERENCES: dict[str, Reference] = {
    r.name: r
    for r in (
        Reference(
            "rfdn",
            "RFDN-style genotype: conv_3x3 refinement, chain, all cells fused, ESA (C=48, 6 cells; channels=... to resize)",
            _rfdn_build,
            _rfdn_cost,
        ),
        Reference(
            "imdn",
            "IMDN, faithful plain module: channel-split distillation, CCA (C=64, 6 blocks)",
            lambda scale, **kw: IMDN(scale, **kw),
            imdn_cost,
        ),
        Reference(
            "imdn_space",
            "IMDN approximated in our space: conv_3x3, C=64, 6 cells, chain, all fused, no ESA (CCA inexpressible)",
            _imdn_space_build,
            _imdn_space_cost,
        ),
        Reference(
            "fsrcnn",
            "FSRCNN(56, 12, 4) on Y with PReLU and a 9x9 deconvolution; chroma by bicubic",
            lambda scale, **kw: build_fsrcnn(scale, **kw),
            fsrcnn_cost,
        ),
        Reference(
            "bicubic",
            "MATLAB bicubic upscaling (no parameters; 0 Multi-Adds by convention)",
            lambda scale, **kw: Bicubic(scale),
            lambda scale, hr_size=HR_SIZE, **kw: bicubic_cost(scale, hr_size),
        ),
    )
}


def list_references() -> list[str]:
    return list(REFERENCES)


def _get(name: str) -> Reference:
    try:
        return REFERENCES[name]
    except KeyError:
        raise ConfigError(f"unknown reference net '{name}' (known: {', '.join(REFERENCES)})") from None


def build_reference(name: str, scale: int, **kw) -> nn.Module:
    """The reference net ``name`` at ×``scale`` as an ``nn.Module`` (LR RGB in [0, 1] -> SR RGB)."""
    return _get(name).build(scale, **kw)


def reference_cost(name: str, scale: int, hr_size: tuple[int, int] = HR_SIZE, **kw) -> ModelCost:
    """Exact Multi-Adds and parameters of ``build_reference(name, scale, **kw)`` at an HR output of ``hr_size``."""
    return _get(name).cost(scale, hr_size, **kw)
