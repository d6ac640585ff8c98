"""Time one search iteration of the supernet: weight step + architecture step, and peak RSS.

Weight step: forward + L1 + backward into every weight. Architecture step (first order): forward on
another batch + L1 + gradients w.r.t. α and β only (``torch.autograd.grad``), as the searcher does.

    python tools/profile_supernet.py --space search_spaces/dlsr.yaml --batch 8 --patch 32 --scale 2
    python tools/profile_supernet.py --plain --nchw          # the reference (slow) path
    python tools/profile_supernet.py --profile               # + torch.profiler table of the weight step
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hdnas.space import load_space  # noqa: E402
from hdnas.supernet import SuperNet  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="search_spaces/dlsr.yaml")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=32, help="LR patch side")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plain", action="store_true", help="reference MixedOp (one call per candidate op)")
    ap.add_argument("--nchw", action="store_true", help="contiguous NCHW instead of channels_last")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of one weight step")
    ap.add_argument("overrides", nargs="*", help="space overrides key=value")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space = load_space(args.space, scale=args.scale, overrides=args.overrides)
    net = SuperNet(space, fused=not args.plain, channels_last=not args.nchw)
    arch = net.arch_parameters()
    s, p, b = args.scale, args.patch, args.batch
    batches = [(torch.rand(b, 3, p, p), torch.rand(b, 3, p * s, p * s)) for _ in range(2)]

    def weight_step() -> None:
        lr, hr = batches[0]
        net.zero_grad(set_to_none=True)
        F.l1_loss(net(lr), hr).backward()

    def arch_step() -> None:
        lr, hr = batches[1]
        torch.autograd.grad(F.l1_loss(net(lr), hr), arch)

    times: dict[str, list[float]] = {"weight": [], "arch": []}
    for it in range(args.warmup + args.iters):
        for name, fn in (("weight", weight_step), ("arch", arch_step)):
            t0 = time.perf_counter()
            fn()
            if it >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            weight_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    w, a = statistics.median(times["weight"]), statistics.median(times["arch"])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mode = f"{'plain' if args.plain else 'fused'} {'NCHW' if args.nchw else 'channels_last'}"
    print(
        f"{space.name} x{s} C={space.channels} N={space.cells} K={space.steps} |ops|={len(space.ops)} "
        f"batch {b} patch {p} threads {args.threads} [{mode}]: weight step {w * 1e3:.0f} ms, "
        f"arch step {a * 1e3:.0f} ms, iteration {(w + a) * 1e3:.0f} ms, peak RSS {rss:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
