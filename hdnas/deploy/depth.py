"""AdaDSR at inference: quality, exact Multi-Adds and latency of one adaptive net across desired depths."""

from __future__ import annotations

import torch
import torch.nn as nn

from hdnas.core.adaptive import AdaptiveNet, cost_at_depth
from hdnas.core.cost import count
from hdnas.core.evaluation import evaluate_model
from hdnas.core.timing import time_fn


# ------------------------------------------------------------------------------------ depth sweep
def measure(net: nn.Module, datasets: dict, depth: float | None = None, *, warmup: int = 1, repeats: int = 3,
            device: torch.device | str = "cpu") -> dict:
    """PSNR/SSIM-Y, exact Multi-Adds and median CPU latency per image of ``net`` on each dataset.

    An :class:`AdaptiveNet` runs at desired depth ``depth`` with the tiles execution and is counted
    by :func:`cost_at_depth` on each image's own depth map; a plain net by :func:`hdnas.core.cost.count`
    at the image's size. Latency: the forward alone (no metric), median of ``repeats`` after
    ``warmup``, per image, then averaged over the set.
    """
    adaptive = isinstance(net, AdaptiveNet)
    net = net.eval().to(device)
    if adaptive:
        net.depth = depth
    out: dict = {"depth": depth, "sets": {}}
    with torch.no_grad():
        for name, ds in datasets.items():
            res = evaluate_model(net, ds, device=device)
            macs, ms, plain = [], [], []
            for im in ds:
                lr = im.lr[None].float().div_(255.0).to(device)
                if adaptive:
                    stem = net.stem(net.sub_mean(lr))
                    c = cost_at_depth(net, net.depth_map(stem, depth).cpu())
                    macs.append(c.macs)
                    plain.append(c.plain)
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
    return out


def depth_sweep(net: AdaptiveNet, datasets: dict, depths: list[float], *, baseline: nn.Module | None = None,
                warmup: int = 1, repeats: int = 3, device: torch.device | str = "cpu", log=None) -> dict:
    """:func:`measure` at each desired depth, plus the non-adaptive ``baseline`` when given."""
    records = []
    for d in depths:
        rec = measure(net, datasets, d, warmup=warmup, repeats=repeats, device=device)
        records.append(rec)
        if log is not None:
            log(f"d={d:g}: " + ", ".join(f"{n} {v['psnr']:.2f} dB {v['macs_per_image'] / 1e9:.2f}G "
                                         f"{v['latency_ms_per_image']:.0f} ms" for n, v in rec["sets"].items()))
    base = None
    if baseline is not None:
        base = measure(baseline, datasets, None, warmup=warmup, repeats=repeats, device=device)
        if log is not None:
            log("baseline: " + ", ".join(f"{n} {v['psnr']:.2f} dB {v['macs_per_image'] / 1e9:.2f}G "
                                         f"{v['latency_ms_per_image']:.0f} ms" for n, v in base["sets"].items()))
    return {"depths": records, "baseline": base, "tile": net.cfg.tile, "groups": net.cfg.groups,
            "threads": torch.get_num_threads()}
