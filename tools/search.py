#!/usr/bin/env python
"""Search an SR architecture under a Multi-Adds and/or latency budget: ``python tools/search.py --scale 4``.

Examples:
  python tools/search.py --scale 4                                  # built-in data, default space (CPU, minutes)
                                                                    #   -> runs/<name>/genotype.json (printed)
  python tools/search.py --scale 4 --budget 10G --out derived/x4_10G.json
  python tools/search.py --scale 4 --latency-budget 120ms           # this CPU's measured latency model
  python tools/search.py --scale 2 --config search_spaces/dlsr_div2k.yaml --data /data/DIV2K   # paper scale (GPU)
  torchrun --nproc_per_node=2 tools/search.py --scale 4             # data-parallel (gloo on CPU, NCCL on GPU)
  python tools/search.py --scale 4 --resume                         # continue a killed run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The checkout this tool lives in comes first, so a tool always runs the library beside it
# (not another checkout's editable install).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdnas.core.config import as_overrides, format_count, split_command_line  # noqa: E402
from hdnas.core.errors import show_warnings_plainly  # noqa: E402
from hdnas.core.run import run_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="upscaling factor (default: the space's, 4)")
    p.add_argument("--space", help="search-space YAML (default: the built-in default space = search_spaces/default.yaml)")
    p.add_argument("--config", help="run config YAML (sections: data, search; top-level name, seed, device)")
    p.add_argument("--data", nargs="+", metavar="DIR", help="HR image folders or DIV2K roots (default: built-in sample set)")
    p.add_argument("--val-data", nargs="+", metavar="DIR", help="validation folders (default: held-out training images)")
    p.add_argument("--budget", help="Multi-Adds budget at 1280x720 output, e.g. 18G")
    p.add_argument("--latency-budget", help="latency budget on this CPU at 1280x720 output, e.g. 120ms "
                                            "(measured latency model; alone or beside --budget)")
    p.add_argument("--out", help="genotype JSON to write (default: runs/<name>/genotype.json, drawings beside it)")
    p.add_argument("--force", action="store_true", help="overwrite --out and start over an existing run")
    p.add_argument("--resume", action="store_true", help="continue from runs/<name>/checkpoint.pt")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to TensorBoard)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. search.epochs=20 space.channels=48")
    argv = list(sys.argv[1:] if argv is None else argv)
    argv_options, overrides = split_command_line(argv, glue=("--budget", "--latency-budget"))
    args = p.parse_intermixed_args(argv_options)
    show_warnings_plainly()

    from hdnas.search.engine import load_search_config, run_search

    extra = overrides + list(args.overrides) + as_overrides({
        "space.scale": args.scale, "data.paths": args.data, "data.val_paths": args.val_data,
        "search.budget": args.budget, "search.latency_budget": args.latency_budget, "seed": args.seed})
    def job():
        cfg = load_search_config(args.config, args.space, extra)
        return run_search(cfg, args.out, force=args.force, resume=args.resume, progress=not args.no_progress,
                          command=["python", "tools/search.py", *argv])

    outcome, code = run_job(job)
    if outcome is None:
        return code
    g, prov = outcome.genotype, outcome.genotype.provenance
    print(f"genotype  {outcome.genotype_path}  (×{g.scale}, {len(g.cells)} cells × {g.steps} steps, {g.channels} channels)")
    for i, cell in enumerate(g.cells, start=1):
        live = "" if i in g.live_cells() else "  (dead: not computed)"
        print(f"  cell {i}: inputs {cell.inputs}  ops {', '.join(cell.ops)}{live}")
    print(f"  fusion: cells {g.fusion}   depth {g.depth()} (longest chain of live cells)")
    budget = prov.get("budget")
    lat_budget = prov.get("latency_budget_ms")
    print(f"Multi-Adds {format_count(prov['multi_adds'])} at 1280x720 output"
          + (f" (budget {format_count(budget)}, {100 * (prov['multi_adds'] / budget - 1):+.1f}%)" if budget else "")
          + f"   params {format_count(prov['params'])}")
    if prov.get("arch_from_step") is not None:
        last = format_count(prov["last_argmax_multi_adds"]) + (
            f", {prov['last_argmax_latency_ms']:.1f} ms" if prov.get("last_argmax_latency_ms") is not None else "")
        print(f"  the last step's argmax ({last}) was outside the ±{100 * prov['config']['search']['derive_tolerance']:.0f}% "
              f"band: derived from step {prov['arch_from_step'] + 1} of {prov['search_steps']}, the last inside it")
    if budget and prov.get("budget_swaps") and not lat_budget:
        print(f"  argmax derivation {format_count(prov['argmax_multi_adds'])} "
              f"({100 * (prov['argmax_multi_adds'] / budget - 1):+.1f}%); {len(prov['budget_swaps'])} op swap(s) "
              f"to land within ±{100 * prov['config']['search']['derive_tolerance']:.0f}%: " + "; ".join(prov["budget_swaps"]))
    if prov.get("latency_ms_predicted") is not None:
        print(f"latency   {prov['latency_ms_predicted']:.1f} ms predicted ({prov['latency_target']})"
              + (f" (budget {lat_budget:g} ms, {100 * (prov['latency_ms_predicted'] / lat_budget - 1):+.1f}%)"
                 if lat_budget else ""))
        if prov.get("budget_swaps") and prov.get("argmax_latency_ms") is not None:
            print(f"  argmax derivation {prov['argmax_latency_ms']:.1f} ms; {len(prov['budget_swaps'])} op swap(s): "
                  + "; ".join(prov["budget_swaps"]))
    print(f"validation PSNR-Y {prov['val_psnr']:.2f} dB (supernet)  vs bicubic {prov['val_psnr_bicubic']:.2f} dB")
    if outcome.drawings:
        print("drawings  " + "  ".join(str(d) for d in outcome.drawings if str(d).endswith(".png")))
    if outcome.drawing_note:
        print(outcome.drawing_note)
    print(f"run folder {outcome.result.run_dir}  (tensorboard --logdir {outcome.result.run_dir / 'tb'})")
    print(f"next      python tools/retrain.py --genotype {outcome.genotype_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
