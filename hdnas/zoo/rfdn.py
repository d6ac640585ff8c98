"""RFDN (Liu et al., 2020) expressed as a genotype of our space.

Our cell *is* RFDN's residual feature distillation block: per step a 1×1 distillation to C/2 and a
shallow residual block ``lrelu(conv3×3(x) + x)``; a 3×3 to C/2 after the last step; a 1×1 fusion of
the distilled parts; ESA. RFDN chains its blocks (block i reads block i−1) and fuses all of them,
then conv 3×3 + long skip + pixel-shuffle upsampler — our backbone. The only difference is our
fixed RGB mean shift (additions only: no parameters, no Multi-Adds).

Paper: C = 48, 6 blocks, ≈0.55M parameters at ×4. ``rfdn_for_macs`` keeps the depth and picks
the width, so that RFDN can be compared with a searched net at equal Multi-Adds.
"""

from __future__ import annotations

from hdnas.core.cost import HR_SIZE, count
from hdnas.core.errors import ConfigError
from hdnas.core.genotype import CellGenotype, Genotype

__all__ = ["RFDN_CHANNELS", "RFDN_CELLS", "rfdn_genotype", "rfdn_channels_for_macs", "rfdn_for_macs"]

RFDN_CHANNELS = 48
RFDN_CELLS = 6
RFDN_STEPS = 3  # three shallow residual blocks per RFDB


def rfdn_genotype(
    scale: int, channels: int = RFDN_CHANNELS, cells: int = RFDN_CELLS, steps: int = RFDN_STEPS, esa: bool = True,
    upsampler: str = "pixelshuffle",
) -> Genotype:
    """RFDN-style genotype: conv_3x3 everywhere, chain connections, every cell fused, ESA on.

    ``upsampler``: RFDN's own tail is ``pixelshuffle``; comparisons inside one space give it the
    searched genotype's tail (e.g. the bicubic skip), so only the cells differ."""
    geno = Genotype(
        upsampler=upsampler,
        scale=scale,
        channels=channels,
        cells=[CellGenotype(ops=["conv_3x3"] * steps, inputs=[i - 1]) for i in range(1, cells + 1)],
        fusion=list(range(1, cells + 1)),
        esa=esa,
        provenance={
            "tool": "hdnas.zoo",
            "reference": "rfdn",
            "note": f"RFDN-style reference (C={channels}, {cells} blocks), not a search result",
        },
    )
    geno.validate()
    return geno


def rfdn_channels_for_macs(
    scale: int,
    target_macs: float,
    cells: int = RFDN_CELLS,
    steps: int = RFDN_STEPS,
    hr_size: tuple[int, int] = HR_SIZE,
    max_channels: int = 512,
    upsampler: str = "pixelshuffle",
) -> int:
    """The width (a multiple of 4, as the cell's C/2 and ESA's C/4 need) whose Multi-Adds are closest to the target.

    Multi-Adds grow monotonically with the width, so the nearest multiple of 4 is found by scanning.
    """
    if target_macs <= 0:
        raise ConfigError(f"rfdn_for_macs: target Multi-Adds must be positive, got {target_macs}")
    best, best_err = 4, float("inf")
    for c in range(4, max_channels + 1, 4):
        macs = count(rfdn_genotype(scale, c, cells, steps, upsampler=upsampler), hr_size).macs
        err = abs(macs - target_macs)
        if err < best_err:
            best, best_err = c, err
        if macs > target_macs:
            break
    return best


def rfdn_for_macs(
    scale: int, target_macs: float, cells: int = RFDN_CELLS, steps: int = RFDN_STEPS, hr_size: tuple[int, int] = HR_SIZE,
    upsampler: str = "pixelshuffle",
) -> Genotype:
    """RFDN-style genotype at RFDN's depth whose width brings its Multi-Adds nearest ``target_macs``."""
    c = rfdn_channels_for_macs(scale, target_macs, cells, steps, hr_size, upsampler=upsampler)
    geno = rfdn_genotype(scale, c, cells, steps, upsampler=upsampler)
    geno.provenance["target_macs"] = int(target_macs)
    return geno
