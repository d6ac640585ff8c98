#!/usr/bin/env python
"""Score a model on SR benchmark folders: Y-PSNR / Y-SSIM per dataset and scale.

    python tools/evaluate.py --model bicubic --scale 2 3 4 --data ../shared/data/Set5 ../shared/data/Set14
    python tools/evaluate.py --model bicubic --scale 4 --data DIR --json out/bicubic.json

Without --data the built-in sample set's validation images are used.  ``--model bicubic-y`` is the
Y-channel protocol the published bicubic rows were made with (see hdnas.core.evaluation).
All logic lives in hdnas.core.evaluation; this file parses arguments and prints.

Trained nets (the scale is the genotype's):

    python tools/evaluate.py --checkpoint runs/retrain_x4_x4_s0/best.pt --data ../shared/data/Set5 --json out.json
    python tools/evaluate.py --genotype derived/x4.json --weights weights.pt --data DIR --save-images out/sr

AdaDSR nets (an adaptive checkpoint): PSNR, Multi-Adds, latency and the depth map's spread and
correlation with local detail at each desired depth, and a picture of one image's depth maps:

    python tools/evaluate.py --checkpoint runs/ada/best.pt --data DIR --depth 2 4 6 --json s.json --depth-image baboon

Images are processed whole, or in overlapping tiles when they do not fit in memory (or with
--tile); tiling is exact for nets without ESA (see hdnas.core.inference).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The checkout this tool lives in comes first, so a tool always runs the library beside it
# (not another checkout's editable install).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdnas.core.errors import HdnasError, show_warnings_plainly

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
    p.add_argument("--scale", type=_scale, nargs="+",
                   help="scale(s), e.g. 2 3 4 (default: 4, or the trained net's scale)")
    p.add_argument("--checkpoint", metavar="PATH", help="evaluate a trained net from a retrain checkpoint")
    p.add_argument("--genotype", metavar="G", help="genotype JSON (with --weights; checked against --checkpoint)")
    p.add_argument("--weights", metavar="W", help="weights for --genotype: a checkpoint or a bare state dict")
    p.add_argument("--raw", action="store_true", help="use a checkpoint's raw weights instead of its EMA weights")
    p.add_argument("--tile", type=int, metavar="N", help="LR tile side (default: whole images, tiles if out of memory)")
    p.add_argument("--overlap", type=int, metavar="N", help="tile overlap in LR pixels (default: the receptive field)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--save-images", metavar="DIR", help="write SR images to DIR/<dataset>/x<scale>/<name>.png")
    p.add_argument("--data", nargs="+", metavar="DIR", help="image folder(s); default: built-in sample val set")
    p.add_argument("--split", default="val", choices=("train", "val"), help="DIV2K split to use (default: val)")
    p.add_argument("--json", metavar="OUT", help="also write results to this JSON file (atomically)")
    p.add_argument("--per-image", action="store_true", help="print per-image figures too")
    a = p.add_argument_group("AdaDSR depth (adaptive checkpoints)")
    a.add_argument("--depth", type=float, nargs="+", metavar="D",
                   help="desired depth(s): PSNR, exact Multi-Adds and CPU latency at each (tiles execution)")
    a.add_argument("--compare", metavar="CKPT", help="with --depth: a non-adaptive checkpoint measured the same way")
    a.add_argument("--plot", metavar="PNG", help="with --depth: PSNR against Multi-Adds and against latency")
    a.add_argument("--repeats", type=int, default=3, help="with --depth: timed forwards per image (median)")
    a.add_argument("--depth-image", metavar="NAME",
                   help="with --depth: picture the depth map at each depth beside this image's LR (e.g. baboon)")
    a.add_argument("--depth-png", metavar="PNG",
                   help="where --depth-image goes (default: depthmap_<NAME>.png beside --plot, --json, or here)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    show_warnings_plainly()
    try:
        from hdnas.core.data import build_dataset
        from hdnas.core.atomic import atomic_write_json
        from hdnas.core.evaluation import bicubic_model, evaluate_bicubic_y, evaluate_model, format_table

        net, label = _trained_net(args)
        if args.depth:
            return _depth_sweep(net, args)
        scales = args.scale or ([net.scale] if net is not None else [4])
        if net is not None and scales != [net.scale]:
            raise HdnasError(f"--scale {' '.join(map(str, scales))}: the net is for x{net.scale}")
        results = []
        for folder in args.data or [None]:
            for scale in scales:
                dataset = build_dataset([folder] if folder else None, scale, args.split)
                if net is not None:
                    res = evaluate_model(_net_fn(net, args, dataset), dataset, scale, device=_device(args.device))
                elif args.model == "bicubic-y":
                    res = evaluate_bicubic_y(dataset)
                else:
                    res = evaluate_model(_saving(bicubic_model(scale), args, dataset), dataset, scale)
                results.append(res)
                if args.per_image:
                    for r in res["per_image"]:
                        print(f"  {res['dataset']} x{scale} {r['name']}: {r['psnr']:.4f} dB  {r['ssim']:.4f}")
        print(format_table(results))
        if args.json:
            summary = [{k: r[k] for k in ("dataset", "scale", "psnr", "ssim", "images")} for r in results]
            atomic_write_json(args.json, {"model": label or args.model, "results": summary})
    except (HdnasError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _depth_sweep(net, args: argparse.Namespace) -> int:
    from hdnas.core.adaptive import AdaptiveNet
    from hdnas.deploy.depth import depth_picture, depth_sweep
    from hdnas.core.data import build_dataset
    from hdnas.core.atomic import atomic_write_json
    from hdnas.core.plots import save_depth_sweep_png
    from hdnas.core.weights import load_model

    if not isinstance(net, AdaptiveNet):
        raise HdnasError("--depth needs an adaptive checkpoint (retrained with adaptive.enabled=true)")
    sets = {}
    for folder in args.data or [None]:
        ds = build_dataset([folder] if folder else None, net.scale, args.split)
        sets[ds.name] = ds
    if args.depth_image:  # before the sweep: a wrong name fails at once
        found = [im for ds in sets.values() for im in ds if im.name == args.depth_image]
        if not found:
            names = ", ".join(im.name for ds in sets.values() for im in ds)
            raise HdnasError(f"--depth-image {args.depth_image}: no such image (have: {names})")
        where = Path(args.plot or args.json or "x").parent
        png = args.depth_png or where / f"depthmap_{args.depth_image}.png"
        title = f"AdaDSR depth map: {args.depth_image}"
        print(f"depth map {depth_picture(net.cpu(), found[0].lr, list(args.depth), png, title)}")
        net.to(_device(args.device))
    baseline = load_model(args.compare)[0] if args.compare else None
    device = _device(args.device)
    sweep = depth_sweep(net, sets, list(args.depth), baseline=baseline, repeats=args.repeats, device=device, log=print)
    sweep.update(checkpoint=args.checkpoint or args.weights, compare=args.compare)
    if args.json:
        atomic_write_json(args.json, sweep)
    if args.plot:
        title = f"AdaDSR x{net.scale}: {Path(args.checkpoint or args.weights).parent.name}"
        print(f"plot {save_depth_sweep_png(sweep, args.plot, title)}")
    return 0


def _device(name: str):
    from hdnas.core.distributed import resolve_device

    return resolve_device(name)


def _trained_net(args: argparse.Namespace):
    """(net on its device, label for the JSON) for --checkpoint / --genotype --weights; (None, None) otherwise."""
    if args.genotype and not (args.weights or args.checkpoint):
        raise HdnasError("--genotype needs --weights (or --checkpoint)")
    if args.weights and args.checkpoint:
        raise HdnasError("pass --checkpoint or --weights, not both")
    path = args.checkpoint or args.weights
    if path is None:
        return None, None
    from hdnas.core.genotype import load_genotype
    from hdnas.core.weights import load_model

    geno = load_genotype(args.genotype) if args.genotype else None
    net, _ = load_model(path, geno, prefer_ema=not args.raw)
    return net.to(_device(args.device)), f"checkpoint:{path}"


def _saving(model_fn, args: argparse.Namespace, dataset):
    """``model_fn`` that also writes each SR image (uint8, as scored) when --save-images is given.

    evaluate_model calls the model once per image, in dataset order, so outputs pair with names.
    """
    if not args.save_images:
        return model_fn
    import torch
    from PIL import Image

    from hdnas.core.metrics import to_levels

    folder = Path(args.save_images) / dataset.name / f"x{dataset.scale}"
    folder.mkdir(parents=True, exist_ok=True)
    names = iter(dataset.names)

    def run(lr):
        sr = model_fn(lr)
        img = to_levels(sr[0] if sr.dim() == 4 else sr).to("cpu", torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(img).save(folder / f"{next(names)}.png")
        return sr

    return run


def _net_fn(net, args: argparse.Namespace, dataset):
    from hdnas.core.inference import upscale

    return _saving(lambda lr: upscale(net, lr, tile=args.tile, overlap=args.overlap), args, dataset)


if __name__ == "__main__":
    sys.exit(main())
