"""Channel surgery: a trained :class:`DerivedNet` with channels removed and the kept weights copied.

The prunable layers are the free widths of the genotype (:mod:`hdnas.core.genotype`, "Widths"),
named per live cell ``i`` (1-based) and step ``k`` (0-based):

* ``cell{i}.distill.{k}`` — the step's distillation 1×1 (its outputs, and the cell fusion's inputs
  that read them);
* ``cell{i}.last`` — the last 3×3 (same);
* ``cell{i}.esa`` — ESA's inner width f: the outputs of its reduce 1×1 and the outputs and inputs of
  every conv up to its expand 1×1, whose inputs are sliced;
* ``cell{i}.ops.{k}`` — the internal width of an op that has one (the registry's ``inner`` names its
  layers);
* ``fusion`` — the network fusion 1×1 (its outputs, and the body conv's inputs).

Exactness: a removed channel's weights are gone, so the pruned net computes what the unpruned net
computes when the removed channels are zero, i.e. with their output weights and biases zeroed — for
every layer above, a zeroed channel stays zero through the activations (LeakyReLU, ReLU, max pool,
bilinear resize of 0 are 0) until the conv that reads it, where it adds nothing. Keeping every
channel reproduces the net exactly.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from hdnas.core.genotype import CellWidths, Genotype
from hdnas.core.network import DerivedNet
from hdnas.core.ops import get_op


def prunable_widths(genotype: Genotype) -> dict[str, int]:
    """Layer name -> its current width, for every prunable layer of the live cells and the fusion."""
    out: dict[str, int] = {}
    for i in genotype.live_cells():
        w = genotype.cell_widths(i)
        for k, d in enumerate(w.distill):
            out[f"cell{i}.distill.{k}"] = d
        out[f"cell{i}.last"] = w.last
        if w.esa is not None:
            out[f"cell{i}.esa"] = w.esa
        for k, m in enumerate(w.ops):
            if m is not None:
                out[f"cell{i}.ops.{k}"] = m
    out["fusion"] = genotype.fusion_channels
    return out


def _check_keep(keep: Mapping[str, Sequence[int]], widths: dict[str, int]) -> dict[str, list[int]]:
    checked = {}
    for name, idx in keep.items():
        if name not in widths:
            raise ValueError(f"surgery: '{name}' is not a prunable layer of this net (prunable: {', '.join(widths)})")
        idx = [int(j) for j in idx]
        n = widths[name]
        if not idx:
            raise ValueError(f"surgery: '{name}' must keep at least one channel")
        if len(set(idx)) != len(idx) or not all(0 <= j < n for j in idx):
            raise ValueError(f"surgery: '{name}': expected distinct channel indices in 0..{n - 1}, got {idx}")
        checked[name] = sorted(idx)
    return checked


def pruned_genotype(genotype: Genotype, keep: Mapping[str, Sequence[int]]) -> Genotype:
    """The genotype with the widths that ``keep`` leaves (format version 2). Cells with no pruned layer
    keep what they recorded (nothing, if they recorded nothing)."""
    keep = _check_keep(keep, prunable_widths(genotype))
    out = copy.deepcopy(genotype)
    for i in genotype.live_cells():
        prefix = f"cell{i}."
        if not any(name.startswith(prefix) for name in keep):
            continue
        w = genotype.cell_widths(i)

        def n(name: str, width: int, prefix: str = prefix) -> int:
            return len(keep[prefix + name]) if prefix + name in keep else width

        out.cells[i - 1].widths = CellWidths(
            distill=[n(f"distill.{k}", d) for k, d in enumerate(w.distill)],
            last=n("last", w.last),
            esa=None if w.esa is None else n("esa", w.esa),
            ops=[None if m is None else n(f"ops.{k}", m) for k, m in enumerate(w.ops)],
        )
    if "fusion" in keep:
        out.fusion_width = len(keep["fusion"])
    return out


@torch.no_grad()
def _copy(dst: nn.Conv2d, src: nn.Conv2d, out_idx: list[int] | None = None, in_idx: list[int] | None = None) -> None:
    """``dst``'s weights = ``src``'s at output channels ``out_idx`` and input channels ``in_idx`` (None: all).
    A depthwise conv's input channels are its output channels, so only ``out_idx`` applies to it."""
    w = src.weight
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None and src.groups == 1:
        w = w[:, in_idx]
    dst.weight.copy_(w)
    if src.bias is not None:
        dst.bias.copy_(src.bias if out_idx is None else src.bias[out_idx])


def prune(net: DerivedNet, keep: Mapping[str, Sequence[int]]) -> DerivedNet:
    """A new :class:`DerivedNet` with only the ``keep``-listed channels of each named layer (module
    docstring; layers not named keep all), the kept weights copied; its ``genotype`` records the
    widths (:func:`pruned_genotype`). ``net`` is not changed."""
    if type(net) is not DerivedNet:
        raise TypeError(f"surgery: expected a plain DerivedNet, got {type(net).__name__}")
    geno = net.genotype
    widths = prunable_widths(geno)
    keep = _check_keep(keep, widths)
    sel = {name: keep.get(name, list(range(n))) for name, n in widths.items()}
    p = next(net.parameters())
    new = DerivedNet(pruned_genotype(geno, keep)).to(device=p.device, dtype=p.dtype)
    new.train(net.training)
    src_state = net.state_dict()
    with torch.no_grad():
        for name, t in new.state_dict().items():  # unpruned layers: as they are
            if src_state[name].shape == t.shape:
                t.copy_(src_state[name])
        for i in new.live:
            old, cell, pre = net.cells[f"cell{i}"], new.cells[f"cell{i}"], f"cell{i}."
            concat, offset = [], 0
            for k in range(len(old.distill)):
                s = sel[f"{pre}distill.{k}"]
                _copy(cell.distill[k], old.distill[k], out_idx=s)
                concat += [offset + j for j in s]
                offset += old.distill[k].out_channels
            _copy(cell.last, old.last, out_idx=sel[pre + "last"])
            concat += [offset + j for j in sel[pre + "last"]]
            _copy(cell.fuse, old.fuse, in_idx=concat)
            if old.esa is not None:
                s, e, o = sel[pre + "esa"], cell.esa, old.esa
                _copy(e.reduce, o.reduce, out_idx=s)
                for layer in ("down", "conv_max", "conv3", "conv3_", "conv_f"):
                    _copy(getattr(e, layer), getattr(o, layer), out_idx=s, in_idx=s)
                _copy(e.expand, o.expand, in_idx=s)
            for k, op_name in enumerate(geno.cells[i - 1].ops):
                inner = get_op(op_name).inner
                if inner is None:
                    continue
                s = sel[f"{pre}ops.{k}"]
                _copy(cell.ops[k][inner.out], old.ops[k][inner.out], out_idx=s)
                for j in inner.depthwise:
                    _copy(cell.ops[k][j], old.ops[k][j], out_idx=s)
                _copy(cell.ops[k][inner.into], old.ops[k][inner.into], in_idx=s)
        _copy(new.fusion, net.fusion, out_idx=sel["fusion"])
        _copy(new.body, net.body, in_idx=sel["fusion"])
    return new
