"""How far a cached teacher target is from the teacher's own forward on the patch.

``teacher.cache`` crops the teacher's SR of the whole training image (rounded to uint8) at each patch's
window. A patch forward sees other context (zero padding at the patch border, ESA's pooled mask over
the patch only), so the two differ; this measures by how much, for one trained net as its own teacher::

    python benchmarks/teacher_cache_gap.py --checkpoint runs/benchmark/ablation/x4_b_13000_s0/last.pt \\
        --data ../shared/data/T91 ../shared/data/BSD200 --json benchmarks/teacher_cache_gap_2026-12-01.json

Mean |Δ| (on [0, 1]) over random LR patches: ``all`` the whole patch, ``interior`` away from its border
by ``border`` LR pixels, ``rounding`` the uint8 rounding alone; and the net's L1 error against HR on the
same patches, for scale.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hdnas.core.config import DataConfig
from hdnas.core.inference import upscale
from hdnas.core.run import build_data
from hdnas.core.weights import load_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--patch", type=int, default=24, help="LR patch size (the retraining default)")
    ap.add_argument("--border", type=int, default=4, help="LR pixels left out at each side for 'interior'")
    ap.add_argument("--every", type=int, default=13, help="every n-th training image")
    ap.add_argument("--per-image", type=int, default=4, help="patches per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    net, geno = load_model(args.checkpoint)
    net.eval()
    s, p, b = geno.scale, args.patch, args.border
    (train,), _ = build_data(DataConfig(paths=args.data), s, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    sums = {"all": 0.0, "interior": 0.0, "rounding": 0.0, "net_l1_error": 0.0}
    n = 0
    with torch.no_grad():
        for i in range(0, len(train), args.every):
            im = train[i]
            lr = im.lr[None].float() / 255
            hr = im.hr[None].float() / 255
            whole = upscale(net, lr, scale=s)
            h, w = lr.shape[-2:]
            if h < p or w < p:
                continue
            for _ in range(args.per_image):
                y = int(torch.randint(0, h - p + 1, (1,), generator=gen))
                x = int(torch.randint(0, w - p + 1, (1,), generator=gen))
                out = net(lr[..., y:y + p, x:x + p])
                crop = whole[..., s * y:s * (y + p), s * x:s * (x + p)]
                d = (out - crop).abs()
                sums["all"] += d.mean().item()
                sums["interior"] += d[..., s * b:-s * b, s * b:-s * b].mean().item()
                sums["rounding"] += (crop - (crop * 255).round().clamp(0, 255) / 255).abs().mean().item()
                sums["net_l1_error"] += (out - hr[..., s * y:s * (y + p), s * x:s * (x + p)]).abs().mean().item()
                n += 1
    result = {"checkpoint": args.checkpoint, "data": args.data, "patch": p, "border": b, "patches": n,
              "seed": args.seed, "mean_abs": {k: round(v / n, 5) for k, v in sums.items()}}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
