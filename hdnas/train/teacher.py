"""The frozen teacher of retraining: which net it is, and what its outputs cost.

A teacher serves ``loss.distill`` (its SR output), ``loss.feature_distill`` (its cell features) and
importance learning (round 0 starts from its per-pixel error). It is any trained net:

* ``teacher.weights=runs/big/best.pt``: an hdnas retrain checkpoint (its genotype is read from it);
  the two-stage recipe retrains a wider genotype first and hands its ``best.pt`` on;
* ``teacher.weights=W teacher.genotype=G``: a bare state dict and the genotype it was trained for;
* ``teacher.model=NAME teacher.weights=W``: a zoo net (:mod:`hdnas.zoo`) with trained weights;
* ``teacher.model=bicubic``: parameter-free, needs no weights.

A zoo net with parameters and no weights is refused: an untrained teacher teaches noise.

**Cost.** By default the teacher runs once per step on the batch's LR patches (a forward, no
backward). With ``teacher.cache`` it runs once per training image before the first step
(:class:`TeacherOutputs`), and each step crops the teacher's output at the patch's window, flipped
as the patch is: no teacher forward per step. The cached output is the teacher's SR of the *whole*
image rounded to uint8 (what the teacher would save as a picture), so it differs from a patch
forward near patch borders (zero padding there) and in ESA's pooled mask, which sees the whole
image: a target the student cannot reach from the patch. For the 13,000-step ×4 base it is 0.0065
from the net's own patch forward (mean |Δ| over 24×24 LR patches; 0.0046 away from the borders,
0.0011 from rounding; ``benchmarks/teacher_cache_gap.py``), a sixth of its L1 error, so a net
distilled from its own cache drifts off it; hence off by default. It needs as much memory as the
HR training images. Feature distillation reads the teacher's features, which are not cached, so
with ``loss.feature_distill`` the teacher runs every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from hdnas.core.config import ConfigError
from hdnas.core.data import SRImageSet, to_uint8
from hdnas.core.errors import HdnasError
from hdnas.core.genotype import load_genotype
from hdnas.core.inference import upscale
from hdnas.core.network import DerivedNet
from hdnas.core.run import RunError
from hdnas.core.weights import load_model, load_weights
from hdnas.zoo import build_reference


@dataclass
class TeacherConfig:
    """A frozen teacher for ``loss.distill``, ``loss.feature_distill`` and importance round 0 (see the
    module docstring for the forms it takes)."""

    genotype: Optional[str] = None
    weights: Optional[str] = None
    model: Optional[str] = None  # a zoo reference name (bicubic alone; others with weights)
    cache: bool = False  # True: teacher SR of each training image once, cropped per step (biased: see above)


class TeacherError(RunError):
    """The teacher cannot be built: a missing or unreadable file, weights that do not fit, another scale."""


def build_teacher(cfg: TeacherConfig, scale: int) -> nn.Module | None:
    """The teacher ``cfg`` describes, frozen and in eval mode on the CPU; None when it names none.

    Every failure names the config field and the file.
    """
    if cfg.genotype and not cfg.weights:
        raise ConfigError(f"teacher.genotype={cfg.genotype} without teacher.weights: an untrained teacher "
                          "teaches nothing; give the state dict it was trained to (teacher.weights=FILE)")
    if cfg.genotype and cfg.model:
        raise ConfigError("teacher: give a genotype (teacher.genotype) or a zoo net (teacher.model), not both")
    if cfg.model:
        try:
            net = build_reference(cfg.model, scale)
        except ConfigError as exc:
            raise ConfigError(f"teacher.model: {exc}") from None
        if cfg.weights:
            if not any(True for _ in net.parameters()):
                raise ConfigError(f"teacher.model={cfg.model} has no parameters; drop teacher.weights")
            net = _load(cfg.weights, net)
        elif any(True for _ in net.parameters()):
            raise ConfigError(f"teacher.model={cfg.model} is a net with parameters but no teacher.weights: an "
                              "untrained teacher teaches noise; give its trained weights (teacher.weights=FILE), "
                              "or teacher.model=bicubic")
    elif cfg.weights:
        genotype = None
        if cfg.genotype:
            try:
                genotype = load_genotype(cfg.genotype)
            except HdnasError as exc:
                raise ConfigError(f"teacher.genotype: {exc}") from None
        net = _load(cfg.weights, None, genotype)
    else:
        return None
    net_scale = getattr(net, "scale", scale)
    if net_scale != scale:
        raise TeacherError(f"teacher {cfg.weights or cfg.model} is for ×{net_scale}, the student is ×{scale}")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _load(path: str, net: nn.Module | None, genotype=None) -> nn.Module:
    """``net`` (or the net of a retrain checkpoint / ``genotype``) with the weights in ``path``."""
    try:
        if net is None:
            return load_model(path, genotype)[0]
        if isinstance(net, DerivedNet):  # a zoo net written as a genotype: the checkpoint must match it
            return load_model(path, net.genotype)[0]
        return load_weights(net, path)
    except HdnasError as exc:
        raise TeacherError(f"teacher.weights: {exc}") from None


class TeacherOutputs:
    """The teacher's SR of every image of a training set, computed once, as uint8 images.

    ``outputs[i]`` is HR-sized ``(3, sH, sW)`` for ``images[i]``;
    :meth:`hdnas.core.data.PatchDataset.sample_batch_with` crops it at each patch's window.
    ``seconds`` is what computing them took: the whole teacher cost of a run that uses them.
    """

    def __init__(self, teacher: nn.Module, images: SRImageSet, device: str | torch.device = "cpu",
                 tile: int | None = None):
        t0 = time.perf_counter()
        was = teacher.training
        teacher.eval()
        self.outputs: list[torch.Tensor] = []
        try:
            for im in images:
                lr = im.lr[None].float().div(255.0).to(device)
                sr = upscale(teacher, lr, tile=tile, scale=images.scale)
                self.outputs.append(to_uint8(sr[0].float().cpu(), max_value=1.0))
        finally:
            teacher.train(was)
        self.images = len(images)
        self.scale = images.scale
        self.seconds = time.perf_counter() - t0

    def __len__(self) -> int:
        return len(self.outputs)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.outputs[i]

    def check(self, images: SRImageSet) -> None:
        """Refuse outputs made for another image set (a wrong count or size would crop the wrong pixels)."""
        if len(images) != len(self.outputs) or any(
            tuple(o.shape[-2:]) != tuple(im.hr.shape[-2:]) for o, im in zip(self.outputs, images)
        ):
            raise TeacherError("cached teacher outputs do not match the training images (another data set?)")


__all__ = ["TeacherConfig", "TeacherError", "TeacherOutputs", "build_teacher"]
