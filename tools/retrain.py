#!/usr/bin/env python
"""Train a found genotype into an upscaler: ``python tools/retrain.py --genotype derived/x4.json``.

Examples:
  python tools/retrain.py --genotype derived/x4.json                       # built-in photos, CPU defaults
  python tools/retrain.py --genotype derived/x4.json --minutes 30          # fixed wall-clock budget
  python tools/retrain.py --genotype derived/x2.json --config search_spaces/retrain_div2k.yaml --data /data/DIV2K
  python tools/retrain.py --genotype derived/x4.json --resume              # continue a killed run
  python tools/retrain.py --genotype derived/x4.json loss.importance.enabled=true teacher.weights=runs/big/best.pt
  python tools/retrain.py --genotype derived/x4.json reparam.enabled=true   # DIPNet branches, saved folded
  torchrun --nproc_per_node=2 tools/retrain.py --genotype derived/x4.json  # data-parallel, same global batch

Writes best.pt and last.pt (atomic, weights_only-loadable) and TensorBoard logs to --out
(default runs/<name>/). The logic lives in hdnas.train.trainer.
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
    p.add_argument("--genotype", help="genotype JSON to train (or 'genotype' in --config)")
    p.add_argument("--config", help="run config YAML (sections: data, train, loss, ema, teacher, adaptive, reparam)")
    p.add_argument("--data", nargs="+", metavar="DIR",
                   help="training folders or DIV2K roots (default: built-in sample set)")
    p.add_argument("--val-data", nargs="+", metavar="DIR", help="validation folders (default: the source's val split)")
    p.add_argument("--minutes", type=float, help="wall-clock budget; the run stops, validates and saves last.pt")
    p.add_argument("--out", help="run folder (default: runs/<name>/)")
    p.add_argument("--resume", action="store_true", help="continue from <run folder>/last.pt")
    p.add_argument("--force", action="store_true", help="start over in a run folder that has a checkpoint")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to TensorBoard)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.steps=500 loss.dual.weight=0.2")
    argv = list(sys.argv[1:] if argv is None else argv)
    argv_options, overrides = split_command_line(argv)
    args = p.parse_intermixed_args(argv_options)
    show_warnings_plainly()

    from hdnas.train.trainer import load_retrain_config, run_retrain

    extra = overrides + list(args.overrides) + as_overrides({
        "genotype": args.genotype or None, "data.paths": args.data, "data.val_paths": args.val_data,
        "train.minutes": args.minutes, "seed": args.seed})
    def job():
        cfg = load_retrain_config(args.config, extra)
        return cfg, run_retrain(cfg, out=args.out, resume=args.resume, force=args.force, progress=not args.no_progress)

    done, code = run_job(job)
    if done is None or done[1] is None:
        return code
    cfg, result = done
    budget = f"stopped at the {cfg.train.minutes or 0:g}-minute budget"
    why = {"done": "finished", "time": budget}.get(result.stopped, "stopped")
    print(f"{why} at step {result.step}/{cfg.train.steps} "
          f"after {result.seconds:.0f} s")
    print(f"validation PSNR-Y {result.val_psnr:.2f} dB, SSIM-Y {result.val_ssim:.4f} (best {result.best_psnr:.2f} dB "
          f"at step {result.best_step}); bicubic {result.bicubic_psnr:.2f} dB")
    print(f"checkpoints {result.run_dir / 'best.pt'}  {result.run_dir / 'last.pt'}")
    print(f"logs        tensorboard --logdir {result.run_dir / 'tb'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
