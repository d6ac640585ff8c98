"""Loading any trained net: a retrain checkpoint (plain or adaptive) or a bare state dict plus its genotype.

Evaluate, export, teachers and compression all load nets; none of them should need the trainer.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from hdnas.core.adaptive import AdaptiveConfig, AdaptiveNet
from hdnas.core.config import from_dict
from hdnas.core.errors import WeightsError
from hdnas.core.genotype import Genotype
from hdnas.core.network import DerivedNet
from hdnas.core.run import load_checkpoint


CHECKPOINT_FORMAT = "hdnas-retrain-checkpoint/1"


def genotype_mismatch(saved: dict, genotype: Genotype) -> str | None:
    """Why weights saved for genotype ``saved`` (its dict) cannot load into ``genotype``; None if they can."""
    if saved.get("scale") != genotype.scale:
        return f"checkpoint is for ×{saved.get('scale')}, genotype is ×{genotype.scale}"
    if saved.get("channels") != genotype.channels:
        return f"checkpoint has {saved.get('channels')} channels, genotype {genotype.channels}"
    cells = saved.get("cells", [])
    if len(cells) != len(genotype.cells):
        return f"checkpoint has {len(cells)} cells, genotype {len(genotype.cells)}"
    for i, (a, b) in enumerate(zip(cells, genotype.cells)):
        for key, mine in (("ops", b.ops), ("inputs", b.inputs)):
            if list(a.get(key, [])) != list(mine):
                return f"cells[{i}].{key} differ: checkpoint {list(a.get(key, []))}, genotype {list(mine)}"
    if list(saved.get("fusion", [])) != list(genotype.fusion):
        return f"fusion differs: checkpoint {saved.get('fusion')}, genotype {genotype.fusion}"
    if saved.get("esa", True) != genotype.esa:
        return f"esa differs: checkpoint {saved.get('esa', True)}, genotype {genotype.esa}"
    if saved.get("upsampler", "pixelshuffle") != genotype.upsampler:
        return f"upsampler differs: checkpoint {saved.get('upsampler')}, genotype {genotype.upsampler}"
    return None


def load_model(
    path: str | os.PathLike,
    genotype: Genotype | None = None,
    prefer_ema: bool = True,
    map_location: str | torch.device = "cpu",
) -> tuple[DerivedNet, Genotype]:
    """A trained net (an :class:`AdaptiveNet` for an adaptive run) from a retrain checkpoint (or a bare state dict plus ``genotype``), in eval mode.

    The EMA weights are used when the checkpoint has them and ``prefer_ema`` (they are what
    validation scored). A ``genotype`` given with a checkpoint must match the one recorded in it.
    """
    state = load_checkpoint(path, map_location=map_location)
    net: nn.Module | None = None
    if state.get("format") == CHECKPOINT_FORMAT:
        saved = state["genotype"]
        if genotype is not None:
            why = genotype_mismatch(saved, genotype)
            if why is not None:
                raise WeightsError(f"{path}: {why}")
        else:
            genotype = Genotype.from_dict(saved)
        if state.get("adaptive"):
            net = AdaptiveNet(genotype, from_dict(AdaptiveConfig, state["adaptive"]))
    elif genotype is None:
        raise WeightsError(f"{path}: a bare state dict; pass the genotype it was trained for")
    if net is None:
        net = DerivedNet(genotype)
    load_weights(net, path, prefer_ema, map_location, state=state)
    return net.eval(), genotype


def trained_weights(state: dict, prefer_ema: bool = True) -> dict:
    """The net's state dict inside a loaded file: a retrain checkpoint's EMA (when ``prefer_ema`` and
    present) or ``model`` weights, ``{"model": state dict}``, or a bare state dict."""
    if state.get("format") == CHECKPOINT_FORMAT:
        return state["ema"]["model"] if prefer_ema and state.get("ema") else state["model"]
    return state["model"] if isinstance(state.get("model"), dict) else state


def load_weights(
    net: nn.Module,
    path: str | os.PathLike,
    prefer_ema: bool = True,
    map_location: str | torch.device = "cpu",
    *,
    state: dict | None = None,
) -> nn.Module:
    """Load the weights in ``path`` (any form :func:`trained_weights` reads) into ``net``, any module
    (a zoo net too); a :class:`WeightsError` naming the file when they do not fit."""
    if state is None:
        state = load_checkpoint(path, map_location=map_location)
    weights = trained_weights(state, prefer_ema)
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        what = "the genotype" if isinstance(net, DerivedNet) else f"a {type(net).__name__}"
        raise WeightsError(f"{path}: weights do not fit {what}: {_misfit(net, weights, exc)}") from None
    return net


def load_backbone(net: AdaptiveNet, path: str | os.PathLike, prefer_ema: bool = True,
                  map_location: str | torch.device = "cpu") -> list[str]:
    """Start an adaptive net from a trained net of the same genotype (AdaDSR fine-tunes its adapter on a
    trained backbone): a plain retrain checkpoint fills everything but the adapter, an adaptive one
    the adapter too. Returns the keys left as they were (the adapter's, for a plain checkpoint); a
    :class:`WeightsError` naming the file for another genotype or any other misfit."""
    state = load_checkpoint(path, map_location=map_location)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a retrain checkpoint (adaptive.init needs one, with its genotype)")
    why = genotype_mismatch(state["genotype"], net.genotype)
    if why is not None:
        raise WeightsError(f"{path}: {why}")
    weights = trained_weights(state, prefer_ema)
    own = net.state_dict()
    extra = [k for k in weights if k not in own]
    missing = [k for k in own if k not in weights]
    if extra or any(not k.startswith("adapter.") for k in missing):
        raise WeightsError(f"{path}: weights do not fit the adaptive net's backbone: "
                           f"{_misfit(net, weights, RuntimeError(''))}")
    try:
        net.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: weights do not fit the adaptive net's backbone: {_misfit(net, weights, exc)}") from None
    return missing


def _misfit(net: nn.Module, weights: dict, exc: RuntimeError) -> str:
    """The first concrete reason a state dict does not load: a missing or unexpected key, or a shape."""
    own = net.state_dict()
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    if missing or extra:
        parts = [f"{len(missing)} missing (first '{missing[0]}')" if missing else "",
                 f"{len(extra)} unexpected (first '{extra[0]}')" if extra else ""]
        return "keys: " + ", ".join(p for p in parts if p)
    lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
    return lines[0] if lines else str(exc).splitlines()[0]
