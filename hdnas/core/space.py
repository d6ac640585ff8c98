"""Search spaces: which operations, how many cells and refinement steps, which network-level choices.

A space is one small dataclass loaded from ``search_spaces/*.yaml``. The backbone is fixed
(stem conv -> N information-distillation cells -> fusion -> conv + long skip -> upsampler); the
space says what is searched inside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from hdnas.core.config import ConfigError, load_config
from hdnas.core.ops import DEFAULT_OPS, OPS

UPSAMPLERS = ("pixelshuffle", "pixelshuffle_bicubic")
SCALES = (2, 3, 4)
INPUT_MERGES = ("sum", "concat")


@dataclass
class SearchSpace:
    """Defaults describe the small space that searches comfortably on 2 CPU cores."""

    name: str = "default"
    scale: int = 4
    channels: int = 32  # C: width of every cell; distilled branches have C // 2
    cells: int = 4  # N information-distillation cells
    steps: int = 3  # K refinement steps (= mixed ops) per cell
    ops: list[str] = field(default_factory=lambda: list(DEFAULT_OPS))
    esa: bool = True  # enhanced spatial attention at the end of each cell
    shared_alpha: bool = False  # one α for all cells (reference code) or one per cell
    cell_inputs: int = 1  # k: earlier outputs kept per cell when deriving
    fusion_cells: int = 3  # m: cell outputs kept for the final fusion when deriving
    upsampler: str = "pixelshuffle_bicubic"  # plain "pixelshuffle" or with a global bicubic image skip
    # The choices below default to this project's supernet; dlsr.yaml sets the reference code's
    # (Huang et al. 2021, DawnHH/DLSR-PyTorch), where they differ.
    stem_input: bool = True  # cells 2..N may read the stem; false: cell i > 1 reads cells 1..i-1 only
    input_merge: str = "sum"  # "sum": Σ softmax(β)·input; "concat": 1×1 conv + LeakyReLU over the β-weighted concat
    search_fusion: bool = True  # β over the final fusion's cells; false: all cells, unweighted (fusion_cells = cells)
    op_bias: bool = True  # the candidate ops' convs have biases
    rgb_range: float = 1.0  # pixel values inside the net: images in [0, 1] are multiplied by this (reference: 255)
    mean_shift: bool = True  # subtract the DIV2K RGB mean before the stem, add it back at the end

    def validate(self) -> None:
        if self.scale not in SCALES:
            raise ConfigError(f"space.scale: expected one of {SCALES}, got {self.scale}")
        if self.channels < 4 or self.channels % 4:
            raise ConfigError(f"space.channels: expected a multiple of 4 that is at least 4, got {self.channels}")
        if self.cells < 1:
            raise ConfigError(f"space.cells: expected at least 1, got {self.cells}")
        if self.steps < 1:
            raise ConfigError(f"space.steps: expected at least 1, got {self.steps}")
        if not self.ops:
            raise ConfigError("space.ops: expected at least one operation")
        for i, op in enumerate(self.ops):
            if op not in OPS:
                raise ConfigError(f"space.ops[{i}]: unknown operation '{op}' (registered: {', '.join(OPS)})")
        if len(set(self.ops)) != len(self.ops):
            raise ConfigError("space.ops: an operation is listed twice")
        if not 1 <= self.cell_inputs:
            raise ConfigError(f"space.cell_inputs: expected at least 1, got {self.cell_inputs}")
        if not 1 <= self.fusion_cells <= self.cells:
            raise ConfigError(f"space.fusion_cells: expected 1..{self.cells} (space.cells), got {self.fusion_cells}")
        if self.upsampler not in UPSAMPLERS:
            raise ConfigError(f"space.upsampler: expected one of {UPSAMPLERS}, got '{self.upsampler}'")
        if self.input_merge not in INPUT_MERGES:
            raise ConfigError(f"space.input_merge: expected one of {INPUT_MERGES}, got '{self.input_merge}'")
        if not self.search_fusion and self.fusion_cells != self.cells:
            raise ConfigError(f"space.fusion_cells: an unsearched fusion (space.search_fusion: false) takes all "
                              f"{self.cells} cells, got {self.fusion_cells}")
        if not self.rgb_range > 0:
            raise ConfigError(f"space.rgb_range: expected a positive number (1 or 255), got {self.rgb_range}")

    def input_candidates(self, cell: int) -> list[int]:
        """The earlier outputs cell ``cell`` (1-based) chooses its inputs from (0 = stem, j = cell j)."""
        if cell == 1 or self.stem_input:
            return list(range(cell))
        return list(range(1, cell))

    def inputs_kept(self, cell: int) -> int:
        """How many inputs cell ``cell`` (1-based) keeps: at most its number of candidates."""
        return min(self.cell_inputs, len(self.input_candidates(cell)))


def load_space(
    path: str | os.PathLike | None = None,
    scale: int | None = None,
    overrides: Sequence[str] | Mapping = (),
) -> SearchSpace:
    """Space from a YAML file (fields at top level), then ``scale``, then ``key=value`` overrides."""
    return load_config(SearchSpace, [path, None if scale is None else {"scale": scale}], overrides)


@dataclass
class ArchProbs:
    """Softmax-normalised architecture weights of a supernet; what derivation, cost and drawings read.

    ``alpha``: (cells or 1 when shared, steps, ops) — op probabilities per refinement step.
    ``inputs``: one 1-D tensor per cell; cell i (1-based) has i entries over outputs 0..i-1 (0 = stem),
    0 for an output that is not among its candidates (:meth:`SearchSpace.input_candidates`).
    ``fusion``: (cells,) — weights over cell outputs for the final fusion (1/N each when it is not searched).
    Entries are torch tensors (differentiable) or anything indexable the same way (numpy, lists).
    """

    alpha: object
    inputs: list
    fusion: object
