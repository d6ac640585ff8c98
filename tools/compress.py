#!/usr/bin/env python
"""Compress a trained net: ``python tools/compress.py --checkpoint CK --rate R --minutes M --data DIRS --out DIR``.

Methods (``--method``):
  drc      dual regression compression: per-layer channel numbers searched bilevel on L1 + 0.1·dual under
           a Multi-Adds target, channels chosen by gradient × weight saliency, surgery, fine-tuning with
           the unpruned net as teacher (default)
  l1       baseline: L1-norm filter pruning at the given widths, same fine-tuning
  scratch  baseline: the pruned genotype trained from scratch
  iterative  DIPNet: rounds of L1-norm pruning by --step-rate of every layer's channels, each fine-tuned
           with the unpruned net as teacher, until the PSNR on the held-out training images falls more
           than --tolerance dB below the unpruned net's; keeps the last round within it (no --rate)

The rate R in (0, 1) is the share of channels pruned: the Multi-Adds target is every prunable layer at
(1 − R) of its width; DRC redistributes that cost. --widths G (l1, scratch) takes the widths of a
genotype JSON instead, e.g. a DRC run's genotype.json, to compare at the same widths.

Examples:
  python tools/compress.py --checkpoint runs/x4/best.pt --rate 0.3 --minutes 30 --data ../shared/data/T91 --out runs/x4_drc30
  python tools/compress.py --checkpoint runs/x4/best.pt --method l1 --widths runs/x4_drc30/genotype.json --minutes 30 --data ../shared/data/T91 --out runs/x4_l1
  python tools/compress.py --checkpoint runs/x4/best.pt --method iterative --step-rate 0.1 --tolerance 0.05 --minutes 30 --data ../shared/data/T91 --out runs/x4_iter
  python tools/compress.py ... drc.steps=400 train.steps=2000      # config overrides (key=value)

Writes DIR/best.pt (load with tools/evaluate.py and tools/export.py), DIR/genotype.json (tools/summary.py,
tools/render.py); for drc, l1 and scratch DIR/last.pt, for drc DIR/search/ (the channel search's checkpoint
and logs), for iterative DIR/round<r>/ (each round's fine-tuning).
The logic lives in hdnas.compress.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The checkout this tool lives in comes first, so a tool always runs the library beside it
# (not another checkout's editable install).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdnas.core.config import as_overrides, split_command_line  # noqa: E402
from hdnas.core.errors import show_warnings_plainly  # noqa: E402
from hdnas.core.run import run_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the trained net (best.pt / last.pt of tools/retrain.py)")
    p.add_argument("--rate", help="share of channels pruned, in (0, 1) (default 0.3)")
    p.add_argument("--minutes", help="total wall-clock budget: channel search + fine-tuning")
    p.add_argument("--data", nargs="+", metavar="DIR", help="training folders (default: built-in sample set)")
    p.add_argument("--val-data", nargs="+", metavar="DIR", help="validation folders (default: held-out images)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", choices=("drc", "l1", "scratch", "iterative"), help="default drc")
    p.add_argument("--step-rate", help="iterative: share of each layer's channels cut per round (default 0.1)")
    p.add_argument("--tolerance", help="iterative: dB the held-out PSNR may fall below the unpruned net's "
                                       "(default 0.05)")
    p.add_argument("--genotype", help="fail unless the checkpoint is for this genotype JSON (required for a bare "
                                      "state dict)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="fail unless the checkpoint is for this scale")
    p.add_argument("--widths", metavar="GENOTYPE", help="l1 / scratch: prune to this genotype's widths")
    p.add_argument("--config", help="config YAML (sections: drc, train, loss, data)")
    p.add_argument("--resume", action="store_true", help="continue the channel search and the fine-tuning")
    p.add_argument("--force", action="store_true", help="start over in a folder that has checkpoints")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. drc.steps=300")
    argv = list(sys.argv[1:] if argv is None else argv)
    argv_options, overrides = split_command_line(argv)
    args = p.parse_intermixed_args(argv_options)
    show_warnings_plainly()

    from hdnas.compress.job import load_compress_config, run_compress
    from hdnas.core.genotype import load_genotype

    extra = overrides + list(args.overrides) + as_overrides({
        "rate": args.rate, "minutes": args.minutes, "method": args.method, "seed": args.seed,
        "iterative.step_rate": args.step_rate, "iterative.tolerance": args.tolerance,
        "data.paths": args.data, "data.val_paths": args.val_data})
    def job():
        cfg = load_compress_config(args.config, extra)
        genotype = load_genotype(args.genotype) if args.genotype else None
        return cfg, run_compress(cfg, args.checkpoint, args.out, genotype=genotype, scale=args.scale,
                                 widths_from=args.widths, resume=args.resume, force=args.force,
                                 progress=not args.no_progress)

    done, code = run_job(job)
    if done is None:
        return code
    cfg, res = done
    from hdnas.core.config import format_count

    it = res.iterative
    print(f"method     {res.method}" + (f" at rate {cfg.rate:g}" if it is None else
                                        f", step rate {cfg.iterative.step_rate:g}, tolerance {cfg.iterative.tolerance:g} dB"))
    if it is not None:
        print(f"unpruned   held-out PSNR-Y {it.reference_psnr:.3f} dB")
        for r in it.rounds:
            print(f"round {r.index:<4} {format_count(r.macs)} Multi-Adds, {r.steps} steps; held-out PSNR-Y "
                  f"{r.val_psnr:.3f} dB ({-r.drop:+.3f}): {'kept' if r.kept else 'over the tolerance'}")
        print(f"kept       round {it.kept_round} ({it.stopped})" if it.kept_round else
              f"kept       the unpruned net ({it.stopped})")
    if res.search is not None:
        s = res.search
        print(f"search     {s.step} steps in {s.seconds:.0f} s ({s.stopped}); E[Multi-Adds] {format_count(s.expected_macs)}"
              + (f"; moved into the band: {', '.join(s.moves)}" if s.moves else ""))
    print("widths     " + "  ".join(f"{k} {v}" for k, v in res.widths.items()))
    target = "" if res.target_macs is None else f" (target {format_count(res.target_macs)})"
    print(f"Multi-Adds {format_count(res.macs_before)} -> {format_count(res.macs)}{target}")
    print(f"params     {format_count(res.params_before)} -> {format_count(res.params)}")
    t = res.train
    if t is not None:
        if t.start_psnr is not None:
            print(f"surgery    validation PSNR-Y {t.start_psnr:.2f} dB before fine-tuning")
        print(f"fine-tune  {t.step} steps ({t.stopped}); validation PSNR-Y {t.val_psnr:.2f} dB (best {t.best_psnr:.2f} dB); "
              f"bicubic {t.bicubic_psnr:.2f} dB")
    print(f"wrote      {res.out / 'best.pt'}  {res.out / 'genotype.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
