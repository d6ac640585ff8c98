"""Matplotlib figures for logs and reports (headless: the Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hdnas.core.atomic import atomic_path  # noqa: E402
from hdnas.core.ops import OPS  # noqa: E402
from hdnas.core.space import ArchProbs, SearchSpace  # noqa: E402


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


def depth_sweep_figure(sweep: dict, title: str = ""):
    """PSNR against Multi-Adds and against latency (one line per test set; the plain net as a star)."""
    recs = sweep["depths"]
    sets = list(recs[0]["sets"]) if recs else []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (key, label, div) in enumerate((("macs_per_image", "Multi-Adds per image (G)", 1e9),
                                           ("latency_ms_per_image", "CPU latency per image (ms)", 1.0))):
        ax = axes[j]
        for n, name in enumerate(sets):
            xs = [r["sets"][name][key] / div for r in recs]
            ys = [r["sets"][name]["psnr"] for r in recs]
            ax.plot(xs, ys, "o-", color=colours[n % len(colours)], label=f"{name} adaptive")
            for r, x, y in zip(recs, xs, ys):
                ax.annotate(f"d={r['depth']:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
            base = (sweep.get("baseline") or {}).get("sets", {}).get(name)
            if base is not None:
                ax.plot([base[key] / div], [base["psnr"]], "*", markersize=13, color=colours[n % len(colours)],
                        label=f"{name} non-adaptive")
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR-Y (dB)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def save_depth_sweep_png(sweep: dict, path, title: str = ""):
    """Write :func:`depth_sweep_figure` as a PNG (atomically)."""
    fig = depth_sweep_figure(sweep, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def save_depth_maps_png(lr, maps: list, depths: list[float], top: float, path, title: str = ""):
    """The LR image (uint8 (3, h, w)) and beside it one AdaDSR depth map (h, w) per desired depth, on one
    colour scale from 0 to ``top`` (every unit open), each titled with its mean and block spread."""
    img = _np(lr).transpose(1, 2, 0) / 255.0
    n = len(maps)
    h, w = img.shape[:2]
    width = 3.2 * (n + 1) * max(0.6, min(1.6, w / h))
    fig, axes = plt.subplots(1, n + 1, figsize=(width, 3.4), constrained_layout=True, squeeze=False)
    axes = axes[0]
    axes[0].imshow(np.clip(img, 0, 1), interpolation="nearest")
    axes[0].set_title("LR", fontsize=9)
    im = None
    for ax, m, d in zip(axes[1:], maps, depths):
        m = _np(m)
        im = ax.imshow(m, cmap="magma", vmin=0, vmax=top, interpolation="nearest")
        ax.set_title(f"d={d:g}: mean {m.mean():.2f}, pixel std {m.std():.2f}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=list(axes[1:]), fraction=0.03, label="open refinement steps D")
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
