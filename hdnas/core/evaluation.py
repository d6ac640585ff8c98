"""Evaluating any SR model on image sets: the loop behind ``tools/evaluate.py`` and training validation.

A *model* is any callable ``lr -> sr`` taking a float32 ``(1, 3, h, w)`` LR batch in [0, 1] and
returning ``(1, 3, h*s, w*s)`` (any float range: the metric clamps and rounds to uint8 levels).
``nn.Module``\\ s are put in eval mode for the call and restored afterwards.  Bicubic
upscaling is such a model (:func:`bicubic_model`), so later nets plug in unchanged.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from hdnas.core.data.datasets import SRImageSet
from hdnas.core.data.imresize import imresize, imresize_uint8, to_uint8
from hdnas.core.metrics import psnr_on_levels, psnr_y_batch, rgb_to_y, ssim_on_levels, ssim_y_batch

__all__ = [
    "ModelFn",
    "bicubic_model",
    "evaluate_model",
    "evaluate_bicubic_y",
    "format_table",
]

ModelFn = Callable[[torch.Tensor], torch.Tensor]


def bicubic_model(scale: int, uint8: bool = True) -> ModelFn:
    """Bicubic upscaling by ``scale`` as a model.

    ``uint8=True`` (default) is MATLAB's ``imresize(LR, s, 'bicubic')`` of the uint8 LR image,
    rounding after each 1-D pass as MATLAB does (:func:`~hdnas.core.data.imresize.imresize_uint8`); the
    LR is first rounded to uint8 levels, which is exact for LR that came from uint8 images.
    ``uint8=False`` resizes in float (0.004-0.009 dB higher on Set5).
    """

    def upscale(lr: torch.Tensor) -> torch.Tensor:
        if uint8:
            return imresize_uint8(to_uint8(lr * 255.0), scale=scale).float().div_(255.0)
        return imresize(lr, scale=scale)

    return upscale


def _summary(name: str, scale: int, per_image: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(per_image)
    return {
        "dataset": name,
        "scale": scale,
        "psnr": sum(r["psnr"] for r in per_image) / n,
        "ssim": sum(r["ssim"] for r in per_image) / n,
        "images": n,
        "per_image": per_image,
    }


def evaluate_model(
    model_fn: ModelFn,
    dataset: SRImageSet,
    scale: int | None = None,
    *,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Mean Y-PSNR/SSIM of ``model_fn`` over ``dataset`` (images one at a time, any size).

    Returns ``{"dataset", "scale", "psnr", "ssim", "images", "per_image": [{"name", "psnr",
    "ssim"}]}``.  ``device``: where LR images are sent (the model's device); metrics run where the
    model's output lies.  PSNR is ``inf`` for an image reproduced exactly.
    """
    s = dataset.scale if scale is None else int(scale)
    if s != dataset.scale:
        raise ValueError(f"evaluate_model: dataset {dataset.name} was built for x{dataset.scale}, not x{s}")
    if len(dataset) == 0:
        raise ValueError(f"evaluate_model: dataset {dataset.name} is empty")
    module = model_fn if isinstance(model_fn, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    per_image = []
    try:
        with torch.no_grad():
            for im in dataset:
                lr = im.lr[None].float().div_(255.0)
                if device is not None:
                    lr = lr.to(device)
                sr = model_fn(lr)
                if sr.dim() == 3:
                    sr = sr[None]
                expected = (1, im.hr.shape[0], im.hr.shape[1], im.hr.shape[2])
                if tuple(sr.shape) != expected:
                    raise ValueError(
                        f"evaluate_model: model output for {im.name} has shape {tuple(sr.shape)}, "
                        f"expected {expected} (LR {tuple(lr.shape)} at x{s})"
                    )
                hr = im.hr[None].to(sr.device)
                per_image.append(
                    {
                        "name": im.name,
                        "psnr": float(psnr_y_batch(sr, hr, s)[0]),
                        "ssim": float(ssim_y_batch(sr, hr, s)[0]),
                    }
                )
    finally:
        if module is not None and was_training:
            module.train()
    return _summary(dataset.name, s, per_image)


def evaluate_bicubic_y(dataset: SRImageSet) -> dict[str, Any]:
    """Bicubic baseline under the protocol the *published* bicubic figures were made with.

    SRCNN's evaluation code (Dong et al., 2014), from which papers copy the bicubic rows: the HR is
    converted to Y and rounded to uint8 *before* degradation, the LR is made from Y alone in float
    (not rounded), upscaled in float, then rounded; PSNR/SSIM on those uint8 Y images.  On Set5 it
    reproduces 33.66/30.39/28.42 dB and SSIM 0.9299/0.8682/0.8104 to all printed digits, whereas
    the RGB pipeline that networks are scored with gives +0.01 dB (see ``tests/test_evaluate.py``).
    The set's own LR images are not used.
    """
    s = dataset.scale
    per_image = []
    for im in dataset:
        y = rgb_to_y(im.hr.double() / 255.0)  # (1, H, W), Y in [16, 235]
        assert isinstance(y, torch.Tensor)
        y8 = to_uint8(y)
        h, w = y8.shape[-2:]
        lr = imresize(y8.double() / 255.0, size=(h // s, w // s))
        sr8 = to_uint8(imresize(lr, scale=s) * 255.0)
        per_image.append(
            {
                "name": im.name,
                "psnr": float(psnr_on_levels(sr8.double()[None], y8.double()[None], s)[0]),
                "ssim": float(ssim_on_levels(sr8.double()[None], y8.double()[None], s)[0]),
            }
        )
    return _summary(dataset.name, s, per_image)


def format_table(results: list[dict[str, Any]]) -> str:
    """Results as an aligned text table: dataset, scale, PSNR, SSIM, images."""
    header = ("dataset", "scale", "PSNR (dB)", "SSIM", "images")
    rows = [
        (str(r["dataset"]), f"x{r['scale']}", f"{r['psnr']:.4f}", f"{r['ssim']:.4f}", str(r["images"]))
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
    return "\n".join(lines)

