#!/usr/bin/env python
"""Export a trained upscaler to ONNX (dynamic height and width) and/or TorchScript, checked against PyTorch.

Examples:
  python tools/export.py --checkpoint runs/retrain_x4_x4_s0/best.pt --onnx x4.onnx
  python tools/export.py --checkpoint best.pt --onnx x4.onnx --torchscript x4.pt
  python tools/export.py --checkpoint weights.pt --genotype derived/x4.json --onnx x4.onnx   # bare state dict

Input: float32 RGB in [0, 1], (N, 3, h, w); output (N, 3, s·h, s·w). The logic lives in hdnas.deploy.export.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The checkout this tool lives in comes first, so a tool always runs the library beside it
# (not another checkout's editable install).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdnas.core.errors import HdnasError, show_warnings_plainly  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="retrain checkpoint (best.pt / last.pt) or a bare state dict")
    p.add_argument("--genotype", help="genotype JSON (required for a bare state dict; checked against a checkpoint)")
    p.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX model")
    p.add_argument("--torchscript", metavar="OUT.pt", help="write a traced TorchScript model")
    p.add_argument("--raw", action="store_true", help="export the raw weights, not the EMA weights")
    p.add_argument("--sample", type=int, nargs=2, default=[32, 32], metavar=("H", "W"), help="LR size to trace with")
    p.add_argument("--depth", type=float, metavar="D", help="adaptive nets: the desired depth to export at")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |exported − PyTorch| (default 1e-4)")
    args = p.parse_args(argv)
    show_warnings_plainly()
    if not args.onnx and not args.torchscript:
        p.error("nothing to do: pass --onnx and/or --torchscript")
    try:
        from hdnas.deploy.export import export_model
        from hdnas.core.genotype import load_genotype
        from hdnas.core.weights import load_model

        geno = load_genotype(args.genotype) if args.genotype else None
        net, geno = load_model(args.checkpoint, geno, prefer_ema=not args.raw)
        report = export_model(net, args.onnx, args.torchscript, tuple(args.sample), args.tolerance,
                              depth=args.depth)
    except HdnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report.onnx is not None:
        print(f"ONNX         {report.onnx}  max |ONNX − PyTorch| = {report.onnx_max_diff:.3g}")
    if report.torchscript is not None:
        print(f"TorchScript  {report.torchscript}  max |TorchScript − PyTorch| = {report.torchscript_max_diff:.3g}")
    print(f"×{geno.scale}; input (N, 3, h, w) float in [0, 1]"
          + (f", h and w at least {report.min_side}" if report.min_side > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
