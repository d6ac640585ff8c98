#!/usr/bin/env python
"""Score a model on SR benchmark folders: Y-PSNR / Y-SSIM per dataset and scale.

    python tools/evaluate.py --model bicubic --scale 2 3 4 --data ../shared/data/Set5 ../shared/data/Set14
    python tools/evaluate.py --model bicubic --scale 4 --data DIR --json out/bicubic.json

Without --data the built-in sample set's validation images are used.  ``--model bicubic-y`` is the
Y-channel protocol the published bicubic rows were made with (see hdnas.evaluation).
All logic lives in hdnas.evaluation; this file parses arguments and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import hdnas  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hdnas.errors import HdnasError

MODELS = ("bicubic", "bicubic-y")


def _scale(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer scale such as 2, 3 or 4, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"scale must be at least 2, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Evaluate an SR model (Y-PSNR/SSIM, border = scale).")
    p.add_argument("--model", default="bicubic", choices=MODELS, help="model to evaluate (default: bicubic)")
    p.add_argument("--scale", type=_scale, nargs="+", default=[4], help="scale(s), e.g. 2 3 4 (default: 4)")
    p.add_argument("--data", nargs="+", metavar="DIR", help="image folder(s); default: built-in sample val set")
    p.add_argument("--split", default="val", choices=("train", "val"), help="DIV2K split to use (default: val)")
    p.add_argument("--json", metavar="OUT", help="also write results to this JSON file (atomically)")
    p.add_argument("--per-image", action="store_true", help="print per-image figures too")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from hdnas.data import build_dataset
        from hdnas.evaluation import bicubic_model, evaluate_bicubic_y, evaluate_model, format_table, write_json_atomic

        results = []
        for folder in args.data or [None]:
            for scale in args.scale:
                dataset = build_dataset([folder] if folder else None, scale, args.split)
                if args.model == "bicubic-y":
                    res = evaluate_bicubic_y(dataset)
                else:
                    res = evaluate_model(bicubic_model(scale), dataset, scale)
                results.append(res)
                if args.per_image:
                    for r in res["per_image"]:
                        print(f"  {res['dataset']} x{scale} {r['name']}: {r['psnr']:.4f} dB  {r['ssim']:.4f}")
        print(format_table(results))
        if args.json:
            summary = [{k: r[k] for k in ("dataset", "scale", "psnr", "ssim", "images")} for r in results]
            write_json_atomic(args.json, {"model": args.model, "results": summary})
    except (HdnasError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
