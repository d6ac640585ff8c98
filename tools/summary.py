#!/usr/bin/env python
"""Check a genotype and summarise it: ``python tools/summary.py derived/x4.json [--json]``.

Prints scale, channels, parameters, Multi-Adds at 1280×720 output (ours and fvcore's, which skips
the element-wise ESA gates), the predicted latency on this CPU (``latency_ms``, hdnas.core.latency), each cell's ops and inputs, the fusion and which cells are live.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

# The checkout this tool lives in comes first, so a tool always runs the library beside it
# (not another checkout's editable install).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdnas.core.errors import HdnasError, show_warnings_plainly  # noqa: E402

def _name(j: int) -> str:
    return "stem" if j == 0 else f"cell {j}"


def print_text(info: dict[str, Any]) -> None:
    from hdnas.core.config import format_count
    from hdnas.core.ops import OPS
    from hdnas.core.summary import provenance_line, widths_text

    (hh, hw), (lh, lw) = info["hr_size"], info["lr_size"]
    print(f"genotype   {info['file']}")
    print(f"scale      ×{info['scale']}   channels {info['channels']}   {len(info['cells'])} cells × "
          f"{info['steps']} steps   ESA {'on' if info['esa'] else 'off'}   upsampler {info['upsampler']}")
    print(f"params     {format_count(info['params'])} ({info['params']:,})")
    print(f"Multi-Adds {format_count(info['macs'])} ({info['macs']:,}) at {hw}×{hh} output (LR {lw}×{lh})")
    if "macs_fvcore" in info:
        extra = info["macs_not_in_fvcore"]
        print(f"  fvcore   {format_count(info['macs_fvcore'])} ({info['macs_fvcore']:,}); "
              f"+ {format_count(extra)} element-wise ESA gates it skips = "
              f"{format_count(info['macs_fvcore'] + extra)}")
    elif "fvcore_unavailable" in info or "fvcore_skipped" in info:
        print(f"  fvcore   not checked: {info.get('fvcore_unavailable') or info['fvcore_skipped']}")
    if "latency_ms" in info:
        print(f"latency    {info['latency_ms']:.1f} ms predicted ({info['latency_target']}; "
              f"sum of parts {info['latency_ms_sum_of_parts']:.1f} ms)")
    elif "latency_skipped" in info:
        print(f"latency    not predicted: {info['latency_skipped']}")
    print(f"{'cells':<6}{'Multi-Adds':>10} {'params':>7}")
    width = max(len(", ".join(map(_name, c["inputs"]))) for c in info["cells"])
    for c in info["cells"]:
        ops = ", ".join(OPS[o].label for o in c["ops"])
        part = info["parts"].get(f"cell{c['cell']}")
        state = f"{format_count(part['macs']):>10} {format_count(part['params']):>7}" if part else f"{'dead':>18}"
        inputs = ", ".join(map(_name, c["inputs"]))
        print(f"  {c['cell']:>2}  {state}  in: {inputs:<{width}}  ops: {ops}")
        if "widths" in c:
            print(f"{'':<26}widths: {widths_text(c['widths'])}")
    fusion_width = f"   width {info['fusion_width']}" if "fusion_width" in info else ""
    print(f"fusion     {', '.join(map(_name, info['fusion']))}{fusion_width}")
    dead = info["dead_cells"]
    print(f"live cells {', '.join(map(str, info['live_cells']))}" + (f"   dead (not built): {', '.join(map(str, dead))}"
                                                                    if dead else "   dead: none")
          + f"   depth {info['depth']} (longest chain of live cells)")
    prov = info["provenance"]
    if prov:
        print("provenance " + provenance_line(prov))
        if prov.get("command"):
            print(f"  command  {prov['command']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("genotype", help="genotype JSON (e.g. derived/x4.json)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="fail unless the genotype is for this scale")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--no-latency", action="store_true", help="skip the predicted latency (its table is measured "
                                                              "on first use, under a minute, then cached)")
    p.add_argument("--no-fvcore", action="store_true", help="skip fvcore's cross-check (it builds and traces the net)")
    args = p.parse_args(argv)
    show_warnings_plainly()

    from hdnas.core.genotype import load_genotype
    from hdnas.core.summary import summarise

    try:
        geno = load_genotype(args.genotype, scale=args.scale)
        info = summarise(geno, args.genotype, fvcore=not args.no_fvcore, latency_ms=not args.no_latency)
    except HdnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        print_text(info)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `summary.py ... | head`: the reader left; not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
