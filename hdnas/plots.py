"""Matplotlib figures for logs and reports (headless: the Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hdnas.ops import OPS  # noqa: E402
from hdnas.space import ArchProbs, SearchSpace  # noqa: E402


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def alpha_figure(probs: ArchProbs, space: SearchSpace):
    """One heat-map row per (cell, step), one column per candidate op; β of each cell and the fusion beside."""
    alpha = _np(probs.alpha)  # (cells or 1, steps, ops)
    rows = alpha.reshape(-1, alpha.shape[-1])
    labels = [f"{'all' if alpha.shape[0] == 1 else f'c{c + 1}'} s{s + 1}" for c in range(alpha.shape[0]) for s in range(alpha.shape[1])]
    n = space.cells
    beta = np.full((n + 1, n + 1), np.nan)
    for i, p in enumerate(probs.inputs, start=1):
        beta[i - 1, : len(_np(p))] = _np(p)
    beta[n, 1:] = _np(probs.fusion)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.5 * rows.shape[1] + 0.4 * n, 1 + 0.28 * len(rows)),
                             gridspec_kw={"width_ratios": [rows.shape[1], n + 1]})
    ax = axes[0]
    im = ax.imshow(rows, cmap="viridis", vmin=0, vmax=max(rows.max(), 1e-6), aspect="auto")
    ax.set_xticks(range(rows.shape[1]), [OPS[o].label for o in space.ops], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title("α: op probability per step", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax = axes[1]
    im = ax.imshow(beta, cmap="magma", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(n + 1), ["stem"] + [f"c{j}" for j in range(1, n + 1)], rotation=60, fontsize=7)
    ax.set_yticks(range(n + 1), [f"→c{i}" for i in range(1, n + 1)] + ["fusion"], fontsize=7)
    ax.set_title("β: input / fusion weights", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig
