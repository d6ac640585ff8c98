"""Whole-image and tiled inference, and the receptive field that makes tiling exact.

Tiling splits the LR image into a grid of *cores*, runs the net on each core grown by ``overlap``
LR pixels on every side (clipped at the image border) and keeps only the core's output. A core
pixel is then computed from exactly the inputs the whole-image forward uses, provided every pixel
it depends on lies inside the grown tile — i.e. ``overlap ≥`` the receptive-field radius — and
the net is translation-equivariant with zero padding at the image border (tiles touching the
border pad at the same place as the whole image). Then tiled == whole up to float reassociation
(tested within 1e-5).

ESA breaks the second condition: its mask is computed on a grid (stride-2 conv, 7×7/3 max pool)
anchored at the tile's corner and bilinearly resized to the tile's size, so the mask a pixel gets
depends on where the tile starts and how big it is, whatever the overlap. For genotypes with
``esa: true`` tiling is therefore an approximation (close: the mask is smooth and low-resolution,
and with the default overlap every pixel still sees the whole mask window); identity is claimed
and tested only for ``esa: false``. :func:`upscale` processes images whole whenever they fit, and
tiles only when asked or when the whole image runs out of memory.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from hdnas.core.genotype import Genotype
from hdnas.core.ops import get_op

#: Radius (input pixels) that ESA's mask branch reads from, as a bound: stride-2 3×3 conv and 7×7/3
#: pool span 15 pixels at stride 6; three 3×3 convs at stride 6 add 18 on each side; bilinear
#: resizing takes two neighbouring mask samples and its grid drifts from the pool grid by up to one
#: sample (6 pixels) on the images the bound is meant for. Not exact: ESA is not translation-equivariant.
ESA_RADIUS_BOUND = 15 + 18 + 12

DEFAULT_TILE = 256  # LR pixels per tile side when a whole image does not fit


@dataclass(frozen=True)
class ReceptiveField:
    """``radius``: LR pixels on each side an output pixel can depend on (for HR pixel (y, x), around
    LR pixel (y // s, x // s)). ``exact``: tiling with ``overlap ≥ radius`` reproduces the whole image."""

    radius: int
    exact: bool


def receptive_field(genotype: Genotype) -> ReceptiveField:
    """Receptive field of ``DerivedNet(genotype)``, from its layers (see :mod:`hdnas.core.network`).

    Stem 3×3 (1), each live cell ``Σ op radii + 1`` (radii from the op registry) (its last 3×3 distillation conv is the longest
    branch; the 1×1s add nothing) on top of its deepest input, fusion 1×1, body 3×3 (+1, or the stem
    through the long skip), upsampler 3×3 (+1); pixel shuffle adds nothing at LR resolution.
    With ESA, each cell adds :data:`ESA_RADIUS_BOUND` and the result is a bound, not exact.
    """
    esa = ESA_RADIUS_BOUND if genotype.esa else 0
    r = {0: 1}
    for i in genotype.build_order():
        cell = genotype.cells[i - 1]
        r[i] = max(r[j] for j in cell.inputs) + sum(get_op(op).radius for op in cell.ops) + 1 + esa
    fused = max(r[j] for j in genotype.fusion)
    body = max(fused + 1, r[0])
    return ReceptiveField(radius=body + 1, exact=not genotype.esa)


def _splits(n: int, tile: int) -> list[tuple[int, int]]:
    """``n`` pixels in ``ceil(n / tile)`` nearly equal cores (no sliver at the end)."""
    k = max(1, math.ceil(n / tile))
    edges = [round(i * n / k) for i in range(k + 1)]
    return [(edges[i], edges[i + 1]) for i in range(k)]


def _genotype_of(model: nn.Module) -> Genotype | None:
    geno = getattr(model, "genotype", None)
    return geno if isinstance(geno, Genotype) else None


def default_overlap(model: nn.Module) -> int:
    geno = _genotype_of(model)
    if geno is None:
        raise ValueError("upscale: the model has no genotype to compute its receptive field from; pass overlap=")
    return receptive_field(geno).radius


def tiled_forward(model: nn.Module, lr: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """The net on overlapping tiles, stitched; ``tile``: core side (LR), ``overlap``: margin (LR)."""
    if tile < 1 or overlap < 0:
        raise ValueError(f"upscale: tile must be >= 1 and overlap >= 0, got tile={tile}, overlap={overlap}")
    n, _, h, w = lr.shape
    out: torch.Tensor | None = None
    for y0, y1 in _splits(h, tile):
        for x0, x1 in _splits(w, tile):
            ya, yb = max(y0 - overlap, 0), min(y1 + overlap, h)
            xa, xb = max(x0 - overlap, 0), min(x1 + overlap, w)
            sr = model(lr[:, :, ya:yb, xa:xb])
            if out is None:
                out = sr.new_empty(n, sr.shape[1], h * scale, w * scale)
            out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = sr[
                :, :, (y0 - ya) * scale : (y1 - ya) * scale, (x0 - xa) * scale : (x1 - xa) * scale
            ]
    assert out is not None
    return out


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def upscale(
    model: nn.Module,
    lr: torch.Tensor,
    tile: int | None = None,
    overlap: int | None = None,
    scale: int | None = None,
) -> torch.Tensor:
    """SR of an LR batch ``(N, 3, h, w)`` in [0, 1], whole or in tiles.

    ``tile=None``: the whole image, falling back to :data:`DEFAULT_TILE` tiles if that runs out of
    memory. ``overlap=None``: the receptive-field radius of the model's genotype (exact for nets
    without ESA; see the module docstring). ``scale``: default the model's ``scale`` attribute.
    """
    with torch.no_grad():
        return _upscale(model, lr, tile, overlap, int(scale if scale is not None else getattr(model, "scale")))


def _upscale(model: nn.Module, lr: torch.Tensor, tile: int | None, overlap: int | None, s: int) -> torch.Tensor:
    h, w = lr.shape[-2:]
    if tile is None:
        try:
            return model(lr)
        except (RuntimeError, MemoryError) as exc:
            if not _is_oom(exc) and not isinstance(exc, MemoryError):
                raise
            if lr.is_cuda:
                torch.cuda.empty_cache()
            tile = DEFAULT_TILE
    if h <= tile and w <= tile:
        return model(lr)
    ov = default_overlap(model) if overlap is None else int(overlap)
    geno = _genotype_of(model)
    if geno is not None and geno.esa:
        warnings.warn(
            "tiled inference of a net with ESA is approximate: ESA's pooled mask depends on the tile "
            "(identity holds only for esa: false genotypes)",
            stacklevel=3,
        )
    return tiled_forward(model, lr, s, tile, ov)
