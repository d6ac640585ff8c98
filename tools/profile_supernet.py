"""Time one search iteration of the supernet: weight step + architecture step, and peak RSS.

Weight step: forward + L1 + backward into every parameter. Architecture step (first order):
forward on another batch + L1 + gradients w.r.t. α and β only (``torch.autograd.grad``).

    python tools/profile_supernet.py                         # dlsr.yaml, batch 8, 32×32, ×2, fused NHWC
    python tools/profile_supernet.py --plain --nchw          # the literal reference formulation
    python tools/profile_supernet.py --compare               # all four variants, interleaved
    python tools/profile_supernet.py --profile               # + torch.profiler table of one weight step

The machine is shared: each line also reports a probe (a 48-channel 3×3 conv at 320×180 in NHWC,
DESIGN.md's reference) so timings can be read against what the CPU delivered at the time.
``--compare`` switches the same net between variants iteration by iteration, so a change in load
hits all of them alike (peak RSS is then the process's, not a variant's: run variants singly for it).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hdnas.core.space import load_space  # noqa: E402
from hdnas.search.supernet import SuperNet  # noqa: E402

VARIANTS = {  # name -> (fused, channels_last)
    "fused channels_last": (True, True),
    "fused NCHW": (True, False),
    "plain channels_last": (False, True),
    "plain NCHW": (False, False),
}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def probe_gmacs(reps: int = 3) -> float:
    """GMAC/s of a 48-channel 3×3 conv at 320×180 in NHWC right now (best of ``reps``)."""
    x = torch.randn(1, 48, 180, 320).contiguous(memory_format=torch.channels_last)
    w = torch.randn(48, 48, 3, 3)
    F.conv2d(x, w, padding=1)
    return 48 * 48 * 9 * 180 * 320 / min(_timed(lambda: F.conv2d(x, w, padding=1)) for _ in range(reps)) / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="search_spaces/dlsr.yaml")
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
    torch.manual_seed(0)
    space = load_space(args.space, scale=args.scale, overrides=args.overrides)
    net = SuperNet(space)
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

    if args.compare:
        variants = list(VARIANTS)
    else:
        variants = [f"{'plain' if args.plain else 'fused'} {'NCHW' if args.nchw else 'channels_last'}"]
    best: dict[str, tuple[float, float]] = {}
    probes = [probe_gmacs()]
    for it in range(args.warmup + args.iters):
        for name in variants:
            net.fused, net.channels_last = VARIANTS[name]
            w, a = _timed(weight_step), _timed(arch_step)
            if it >= args.warmup:
                bw, ba = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(bw, w), min(ba, a))
    probes.append(probe_gmacs())
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            weight_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{space.name} ×{s}: C={space.channels} N={space.cells} K={space.steps} |ops|={len(space.ops)}, "
        f"batch {b}, LR patch {p}×{p}, {args.threads} threads; best of {args.iters}; "
        f"probe 3×3 conv {min(probes):.0f}–{max(probes):.0f} GMAC/s; peak RSS {rss:.0f} MiB"
    )
    for name, (w, a) in best.items():
        print(f"  {name:20s} weight step {w * 1e3:7.0f} ms   arch step {a * 1e3:7.0f} ms   iteration {(w + a) * 1e3:7.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
