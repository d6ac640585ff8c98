#!/usr/bin/env python
"""Profiling aid: the supernet's fused / plain mixed ops and NCHW / channels_last layouts, side by side.

Weight step: forward + L1 + backward into every parameter. Architecture step (first order):
forward on another batch + L1 + gradients w.r.t. α and β only. What ``tools/benchmark.py --suite
search`` does not give: the NCHW layouts, variants interleaved iteration by iteration in one process
(a change in load hits all alike), and a torch.profiler table. For the published figures (the real
searcher and architect, per-configuration peak RSS) use ``tools/benchmark.py --suite search``.

    python tools/profile_supernet.py                         # dlsr space, batch 8, 32×32, ×2, fused NHWC
    python tools/profile_supernet.py --plain --nchw          # the literal reference formulation
    python tools/profile_supernet.py --compare               # all four variants, interleaved
    python tools/profile_supernet.py --profile               # + torch.profiler table of one weight step

Each run also reports the dense-conv throughput (48-channel 3×3 at 320×180, NHWC: the probe of
DESIGN.md's performance notes) before and after, to read the timings against what the CPU delivered.
All logic lives in hdnas.bench.search; this file parses arguments and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hdnas.bench.search import SUPERNET_VARIANTS, compare_supernet_variants  # noqa: E402
from hdnas.core.errors import HdnasError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="dlsr", help="space name or YAML file (default: dlsr)")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=32, help="LR patch side")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations (the best is reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plain", action="store_true", help="reference MixedOp (one call per candidate op)")
    ap.add_argument("--nchw", action="store_true", help="contiguous NCHW instead of channels_last")
    ap.add_argument("--compare", action="store_true", help="time all four variants, interleaved")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of one weight step")
    ap.add_argument("overrides", nargs="*", help="space overrides key=value")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.compare:
        variants = list(SUPERNET_VARIANTS)
    else:
        variants = [f"{'plain' if args.plain else 'fused'} {'NCHW' if args.nchw else 'channels_last'}"]
    try:
        rep = compare_supernet_variants(args.space, args.scale, variants, args.batch, args.patch, args.iters,
                                        args.warmup, args.overrides, profile=args.profile)
    except HdnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if rep.profile_table:
        print(rep.profile_table)
    sp = rep.space
    print(
        f"{sp.name} ×{sp.scale}: C={sp.channels} N={sp.cells} K={sp.steps} |ops|={len(sp.ops)}, "
        f"batch {args.batch}, LR patch {args.patch}×{args.patch}, {rep.threads} threads; best of {args.iters}; "
        f"dense 3×3 conv {min(rep.dense_gmacs):.0f}–{max(rep.dense_gmacs):.0f} GMAC/s; peak RSS {rep.peak_rss_mib:.0f} MiB"
    )
    for name, (w, a) in rep.times.items():
        print(f"  {name:20s} weight step {w * 1e3:7.0f} ms   arch step {a * 1e3:7.0f} ms   iteration {(w + a) * 1e3:7.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
