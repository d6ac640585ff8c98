"""AdaDSR at inference: quality, exact Multi-Adds and latency of one adaptive net across desired depths,
and whether its depth map follows the image (spread within an image, correlation with local detail)."""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from hdnas.core.adaptive import AdaptiveNet, cost_at_depth
from hdnas.core.cost import count
from hdnas.core.evaluation import bicubic_model, evaluate_model
from hdnas.core.plots import save_depth_maps_png
from hdnas.core.timing import time_fn


# ------------------------------------------------------------------------ depth map against content
def block_detail(lr: torch.Tensor, hr: torch.Tensor, scale: int, tile: int) -> torch.Tensor:
    """(nh, nw): the mean absolute error of bicubic upscaling in each ``tile × tile`` LR block's HR area,
    the local detail a content-adaptive net should spend depth on (flat regions: small, edges and
    texture: large). ``lr``/``hr``: uint8 (3, h, w) and (3, h·s, w·s)."""
    bic = bicubic_model(scale)(lr[None].float().div(255.0))
    err = (bic - hr[None].float().div(255.0)).abs().mean(dim=1, keepdim=True)
    return F.avg_pool2d(err, tile * scale, ceil_mode=True)[0, 0]


def block_depths(depth_map: torch.Tensor, tile: int) -> torch.Tensor:
    """(nh, nw): one image's (1, G, h, w) depth map averaged over each block and over the G maps (with
    ``groups=cell``, the mean number of open steps per cell)."""
    return F.avg_pool2d(depth_map.float(), tile, ceil_mode=True).mean(dim=1)[0]


def depth_statistics(depths: torch.Tensor, detail: torch.Tensor) -> tuple[float, float | None]:
    """(std of the block depths within the image, Pearson r of block depth with block detail); r is
    None where either does not vary (a uniform map says nothing about content)."""
    x, y = depths.reshape(-1).double(), detail.reshape(-1).double()
    std = float(x.std(unbiased=False))
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    if x.numel() < 2 or den <= 1e-12 * max(1.0, float(x.abs().max()) ** 2):
        return std, None
    return std, float((xc * yc).sum()) / den


def depth_picture(net: AdaptiveNet, lr: torch.Tensor, depths: list[float], path: str | os.PathLike,
                  title: str = "") -> str | os.PathLike:
    """A PNG of the LR image (uint8 (3, h, w)) beside the net's depth map at each desired depth."""
    x = lr[None].float().div(255.0)
    maps = []
    with torch.no_grad():
        stem = net.stem(net.sub_mean(x))
        for d in depths:
            maps.append(net.depth_map(stem, d).mean(dim=1)[0])
    return save_depth_maps_png(lr, maps, depths, float(net.depth_bounds()[1]), path, title)


# ------------------------------------------------------------------------------------ depth sweep
def measure(net: nn.Module, datasets: dict, depth: float | None = None, *, warmup: int = 1, repeats: int = 3,
            device: torch.device | str = "cpu") -> dict:
    """PSNR/SSIM-Y, exact Multi-Adds and median CPU latency per image of ``net`` on each dataset.

    An :class:`AdaptiveNet` runs at desired depth ``depth`` with the tiles execution and is counted
    by :func:`cost_at_depth` on each image's own depth map; a plain net by :func:`hdnas.core.cost.count`
    at the image's size. Latency: the forward alone (no metric), median of ``repeats`` after
    ``warmup``, per image, then averaged over the set. For an adaptive net also, per set: ``depth_std``
    (mean over images of the std of block depths within the image), ``depth_detail_corr`` (mean over
    the images where the map varies of the Pearson r of block depth with :func:`block_detail`;
    None where none varies) and ``depth_detail_corr_images`` (how many images that mean covers).
    """
    adaptive = isinstance(net, AdaptiveNet)
    net = net.eval().to(device)
    if adaptive:
        net.depth = depth
    out: dict = {"depth": depth, "sets": {}}
    with torch.no_grad():
        for name, ds in datasets.items():
            res = evaluate_model(net, ds, device=device)
            macs, ms, plain, stds, corrs = [], [], [], [], []
            for im in ds:
                lr = im.lr[None].float().div_(255.0).to(device)
                if adaptive:
                    stem = net.stem(net.sub_mean(lr))
                    dmap = net.depth_map(stem, depth).cpu()
                    c = cost_at_depth(net, dmap)
                    macs.append(c.macs)
                    plain.append(c.plain)
                    std, r = depth_statistics(block_depths(dmap, net.cfg.tile),
                                              block_detail(im.lr, im.hr, net.scale, net.cfg.tile))
                    stds.append(std)
                    if r is not None:
                        corrs.append(r)
                else:
                    h, w = lr.shape[-2:]
                    s = net.scale
                    macs.append(count(net.genotype, hr_size=(h * s, w * s)).macs)
                    plain.append(macs[-1])
                ms.append(1000.0 * time_fn(lambda: net(lr), warmup, repeats).median)
            n = len(ds)
            out["sets"][name] = {"psnr": res["psnr"], "ssim": res["ssim"], "images": n,
                                 "macs_per_image": sum(macs) / n, "macs_fraction": sum(macs) / sum(plain),
                                 "latency_ms_per_image": sum(ms) / n}
            if adaptive:
                out["sets"][name].update(depth_std=sum(stds) / n,
                                         depth_detail_corr=sum(corrs) / len(corrs) if corrs else None,
                                         depth_detail_corr_images=len(corrs))
    return out


def _line(sets: dict) -> str:
    parts = []
    for n, v in sets.items():
        text = f"{n} {v['psnr']:.2f} dB {v['macs_per_image'] / 1e9:.2f}G {v['latency_ms_per_image']:.0f} ms"
        if "depth_std" in v:
            r = v["depth_detail_corr"]
            text += f" (map std {v['depth_std']:.2f}, r(detail) {'n/a' if r is None else f'{r:+.2f}'})"
        parts.append(text)
    return ", ".join(parts)


def depth_sweep(net: AdaptiveNet, datasets: dict, depths: list[float], *, baseline: nn.Module | None = None,
                warmup: int = 1, repeats: int = 3, device: torch.device | str = "cpu", log=None) -> dict:
    """:func:`measure` at each desired depth, plus the non-adaptive ``baseline`` when given."""
    records = []
    for d in depths:
        rec = measure(net, datasets, d, warmup=warmup, repeats=repeats, device=device)
        records.append(rec)
        if log is not None:
            log(f"d={d:g}: " + _line(rec["sets"]))
    base = None
    if baseline is not None:
        base = measure(baseline, datasets, None, warmup=warmup, repeats=repeats, device=device)
        if log is not None:
            log("baseline: " + _line(base["sets"]))
    return {"depths": records, "baseline": base, "tile": net.cfg.tile, "groups": net.cfg.groups,
            "threads": torch.get_num_threads()}
