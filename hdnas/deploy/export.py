"""ONNX and TorchScript export of trained nets, each checked against PyTorch on random inputs.

Both exports trace the net. ``hdnas.core.blocks.ESA`` reads its input size as Python ints (to size its
pooling window and its bilinear resize), which a trace would freeze to the sample's size; so the
exported copy swaps every ESA for :class:`TraceableESA`, the same layers and weights with the size
taken from the tensor (recorded as a dynamic shape). Its pooling window is ESA's full 7×7, which
``ESA`` itself clamps only for tiny inputs: exported nets with ESA need LR inputs of at least
:data:`MIN_SIDE_ESA` pixels per side (nets without ESA take any size).

The ONNX graph has dynamic batch, height and width. The check runs onnxruntime (extra ``onnx``) on
two random inputs of different sizes and reports the largest absolute difference from PyTorch.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from hdnas.core.adaptive import AdaptiveNet
from hdnas.core.atomic import atomic_path
from hdnas.core.blocks import ESA, ESA_POOL_KERNEL, ESA_POOL_STRIDE
from hdnas.core.errors import HdnasError

#: Smallest LR side an exported ESA net accepts: ESA's stride-2 conv must leave a 7×7 pooling window.
MIN_SIDE_ESA = 2 * (ESA_POOL_KERNEL - 1) + 3
ONNX_OPSET = 17


class ExportError(HdnasError):
    """Export failed or its output differs from PyTorch's."""


class TraceableESA(nn.Module):
    """ESA with its input size read from the tensor, so traces keep height and width dynamic."""

    def __init__(self, esa: ESA):
        super().__init__()
        self.esa = esa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.esa
        c1_ = e.reduce(x)
        c1 = e.down(c1_)
        v = F.max_pool2d(c1, kernel_size=ESA_POOL_KERNEL, stride=ESA_POOL_STRIDE)
        v = F.relu(e.conv_max(v))
        c3 = F.relu(e.conv3(v))
        c3 = e.conv3_(c3)
        c3 = F.interpolate(c3, size=x.shape[-2:], mode="bilinear", align_corners=False)
        m = torch.sigmoid(e.expand(c3 + e.conv_f(c1_)))
        return x * m


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode, contiguous, with every ESA made traceable."""
    out = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    if isinstance(out, AdaptiveNet):  # its tiles path is data-dependent: trace the dense gating
        out.execution = "dense"  # gates multiply in the graph; the desired depth is the module's ``depth``
    for module in list(out.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, ESA):
                setattr(module, name, TraceableESA(child))
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def min_side(model: nn.Module) -> int:
    return MIN_SIDE_ESA if any(isinstance(m, ESA) for m in model.modules()) else 1


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Run ``write(tmp)`` then move the file into place, so a failed export leaves no half file."""
    with atomic_path(path) as tmp:
        write(str(tmp))
    return Path(path)


def _sample(size: tuple[int, int], seed: int, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def export_onnx(model: nn.Module, path: str | os.PathLike, sample_size: tuple[int, int] = (32, 32),
                opset: int = ONNX_OPSET) -> Path:
    """``lr`` (N, 3, h, w) -> ``sr`` (N, 3, s·h, s·w), with N, h and w dynamic."""
    net = exportable(model)
    x = _sample(sample_size, 0)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
            torch.onnx.export(
                net, (x,), tmp, dynamo=False, opset_version=opset, input_names=["lr"], output_names=["sr"],
                dynamic_axes={"lr": {0: "batch", 2: "height", 3: "width"},
                              "sr": {0: "batch", 2: "sr_height", 3: "sr_width"}},
            )

    return _atomic(path, write)


def export_torchscript(model: nn.Module, path: str | os.PathLike, sample_size: tuple[int, int] = (32, 32)) -> Path:
    """A traced TorchScript module (``torch.jit.load`` it; no hdnas needed to run it)."""
    net = exportable(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, _sample(sample_size, 0), check_trace=False)
    return _atomic(path, lambda tmp: torch.jit.save(traced, tmp))


def check_sizes(model: nn.Module, sample_size: tuple[int, int] = (32, 32)) -> list[tuple[int, int, int]]:
    """(batch, h, w) inputs a check runs: the traced size and a different, odd one (dynamic shapes)."""
    lo = max(min_side(model), 8)
    return [(1, *sample_size), (2, max(lo, sample_size[0] + 7), max(lo, sample_size[1] - 5))]


@torch.no_grad()
def check_onnx(path: str | os.PathLike, model: nn.Module, sample_size: tuple[int, int] = (32, 32)) -> float:
    """Largest |onnxruntime − PyTorch| over :func:`check_sizes` random inputs."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("onnxruntime is not installed (pip install -e '.[onnx]')") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    net = copy.deepcopy(model).eval()
    worst = 0.0
    for i, (n, h, w) in enumerate(check_sizes(model, sample_size)):
        x = _sample((h, w), 1 + i, n)
        got = torch.from_numpy(session.run(None, {"lr": x.numpy()})[0])
        ref = net(x)
        if got.shape != ref.shape:
            raise ExportError(
                f"{path}: ONNX output {tuple(got.shape)} for input {tuple(x.shape)}, PyTorch {tuple(ref.shape)}"
            )
        worst = max(worst, float((got - ref).abs().max()))
    return worst


@torch.no_grad()
def check_torchscript(path: str | os.PathLike, model: nn.Module, sample_size: tuple[int, int] = (32, 32)) -> float:
    loaded = torch.jit.load(str(path), map_location="cpu")
    net = copy.deepcopy(model).eval()
    worst = 0.0
    for i, (n, h, w) in enumerate(check_sizes(model, sample_size)):
        x = _sample((h, w), 1 + i, n)
        got, ref = loaded(x), net(x)
        if got.shape != ref.shape:
            raise ExportError(
                f"{path}: TorchScript output {tuple(got.shape)} for {tuple(x.shape)}, PyTorch {tuple(ref.shape)}"
            )
        worst = max(worst, float((got - ref).abs().max()))
    return worst


@dataclass
class ExportReport:
    onnx: Path | None = None
    onnx_max_diff: float | None = None
    torchscript: Path | None = None
    torchscript_max_diff: float | None = None
    min_side: int = 1


def export_model(
    model: nn.Module,
    onnx: str | os.PathLike | None = None,
    torchscript: str | os.PathLike | None = None,
    sample_size: tuple[int, int] = (32, 32),
    tolerance: float = 1e-4,
    depth: float | None = None,
) -> ExportReport:
    """Export to the formats asked for and check each; raises :class:`ExportError` past ``tolerance``.

    ``depth``: the desired depth an adaptive (AdaDSR) net is exported at, a constant of the graph
    (default: the top of its trained range). The exported graph computes every gated step densely.
    """
    model = model.cpu().eval()
    if depth is not None:
        if not isinstance(model, AdaptiveNet):
            raise ExportError("--depth: the net has no depth adapter (not an adaptive checkpoint)")
        model = copy.deepcopy(model)
        model.depth = float(depth)
    lo = min_side(model)
    if min(sample_size) < lo:
        raise ExportError(f"sample size {sample_size}: a net with ESA needs LR inputs of at least {lo}×{lo}")
    report = ExportReport(min_side=lo)
    if onnx is not None:
        report.onnx = export_onnx(model, onnx, sample_size)
        report.onnx_max_diff = check_onnx(report.onnx, model, sample_size)
    if torchscript is not None:
        report.torchscript = export_torchscript(model, torchscript, sample_size)
        report.torchscript_max_diff = check_torchscript(report.torchscript, model, sample_size)
    for name, diff in (("ONNX", report.onnx_max_diff), ("TorchScript", report.torchscript_max_diff)):
        if diff is not None and not diff <= tolerance:
            raise ExportError(f"{name} output differs from PyTorch by {diff:.3g} (tolerance {tolerance:g})")
    return report
