"""The supernet: every candidate op in every step, every earlier output into every cell.

Architecture parameters (DARTS-style logits, initialised 1e-3·randn):

* ``alpha``: (N, K, |ops|), or (1, K, |ops|) when ``space.shared_alpha`` — op logits per step;
* ``beta_inputs``: one vector per cell with more than one candidate input, over its candidates
  (:meth:`~hdnas.core.space.SearchSpace.input_candidates`: by default cell i has i logits over outputs
  0..i-1 and cell 1, reading the stem only, has none; without ``stem_input`` cells 1 and 2 have none);
* ``beta_fusion``: (N,) — logits over the cells' outputs for the final fusion (absent when the space
  does not search the fusion).

How the space's other choices enter (``search_spaces/dlsr.yaml`` sets the reference code's):
``input_merge`` sums a cell's candidates weighted by softmax(β), or runs a 1×1 conv + LeakyReLU over
their β-weighted concat; ``op_bias`` builds the candidates with or without biases; ``rgb_range`` and
``mean_shift`` set the pixel units (:class:`~hdnas.core.blocks.InputNorm`).

They are registered ``nn.Parameter``s (so ``state_dict`` and DDP see them) and are excluded from
:meth:`SuperNet.weight_parameters`.

Speed (a 2-core CPU is the reference machine): ``SuperNet(space, fused=True, channels_last=True)``
is the default. ``fused`` merges each MixedOp's candidates into fewer kernels with the same
parameters and the same mathematics (see :class:`MixedOp`); ``channels_last`` runs in NHWC, where
the 1×1 and depthwise convs that dominate these cells are several times faster on CPU (and their
backward far faster). ``fused=False, channels_last=False`` is the literal reference formulation;
tests check both give the same outputs and gradients.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hdnas.core.blocks import DistillCell, InputNorm, Upsampler, conv1x1, conv3x3, lrelu
from hdnas.core.ops import BranchLayout, build_op, get_op
from hdnas.core.space import ArchProbs, SearchSpace
from hdnas.search.derive import derive


class _DilatedDepthwise(torch.autograd.Function):
    """Depthwise dilated "same" conv (stride 1, odd k) with a faster CPU backward, same maths.

    PyTorch's CPU backward of dilated depthwise convs is 2–3× slower than it needs to be: here the
    input gradient is the forward conv with the kernel flipped, and the weight gradient is one
    multiply-and-reduce per tap. The ops in ``backward`` are ordinary differentiable torch ops.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
        pad = dilation * (weight.shape[-1] // 2)
        ctx.save_for_backward(x, weight)
        ctx.dilation, ctx.pad = dilation, pad
        return F.conv2d(x, weight, None, 1, pad, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        d, p, c, k = ctx.dilation, ctx.pad, x.shape[1], weight.shape[-1]
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        grad = grad.contiguous(memory_format=fmt)  # often a channel slice of a concat's gradient
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-1, -2), None, 1, p, d, c)
        if ctx.needs_input_grad[1]:
            xp = F.pad(x, (p, p, p, p))
            h, w = grad.shape[-2:]
            taps = [(xp[:, :, i * d : i * d + h, j * d : j * d + w] * grad).sum((0, 2, 3)) for i in range(k) for j in range(k)]
            grad_w = torch.stack(taps, dim=1).view(c, 1, k, k).to(weight.dtype)
        return grad_x, grad_w, None


def dilated_depthwise(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """Bias-free depthwise conv, odd k×k kernel ``weight`` (C, 1, k, k), "same" padding, any dilation."""
    return _DilatedDepthwise.apply(x, weight, dilation)


def _is_depthwise(conv: nn.Module, kernel: int, dilation: int) -> bool:
    """``conv`` is a bias-free depthwise "same" conv, stride 1, with this kernel and dilation."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.bias is None
        and conv.groups == conv.in_channels == conv.out_channels
        and conv.stride == (1, 1)
        and conv.kernel_size == (kernel, kernel)
        and kernel % 2 == 1
        and conv.dilation == (dilation, dilation)
        and conv.padding == (dilation * (kernel // 2),) * 2
    )


def _matches_layout(op: nn.Module, layout: BranchLayout) -> bool:
    """The built op has the layers its registry layout names (else the supernet runs it unfused)."""
    if not isinstance(op, nn.Sequential) or len(op) != layout.pointwise + 1 or not isinstance(op[0], nn.ReLU):
        return False
    pw = op[layout.pointwise]
    if not (isinstance(pw, nn.Conv2d) and pw.kernel_size == (1, 1) and pw.groups == 1):
        return False
    return all(d.index in layout.body and _is_depthwise(op[d.index], d.kernel, d.dilation) for d in layout.depthwise)


class MixedOp(nn.Module):
    """Σ_o w_o · op_o(x) over the candidate ops, with the weights w passed in at call time.

    ``fused=True`` computes the same sum with fewer, larger kernels (same parameter tensors, so a
    plain and a fused MixedOp share state dicts and derived nets can inherit weights):

    * ``conv`` family (plain k×k convs, all linear in x): Σ_o w_o·conv(x, W_o) + b_o is one conv
      whose kernel is Σ_o w_o·pad(W_o) (zero-padded to the largest k) and bias Σ_o w_o·b_o;
    * ops with a registry :class:`~hdnas.core.ops.BranchLayout` (ReLU -> depthwise -> ... ->
      pointwise 1×1: ``sep``, ``dil``): ReLU(x) is computed once, and the α-weighted sum of their
      last pointwise convs is one 1×1 conv over the concatenated body outputs, with weights w_o·P_o
      (biases summed likewise);
    * on CPU, dilated depthwise convs use :func:`dilated_depthwise` (same result, faster backward).

    Measured and rejected (slower on the 2-core CPU): one depthwise conv over all candidates'
    zero-padded kernels (with a channel multiplier or on repeated input: 2–5× slower than separate
    depthwise convs, whose cost is dominated by the backward and grows with k²), and separate
    α-scaled 1×1 convs instead of the concatenation (no gain).
    Anything else (ops registered without a layout, or built unlike their layout) runs as w_o · op_o(x).
    """

    def __init__(self, ops: Sequence[str], c: int, fused: bool = True, bias: bool = True):
        super().__init__()
        self.names = list(ops)
        self.ops = nn.ModuleList(build_op(name, c, c, bias=bias) for name in self.names)
        self.fused = fused
        self._conv: list[int] = []  # indices of plain convs
        self._branch: dict[int, BranchLayout] = {}  # ReLU -> body -> pointwise ops, by their registry layout
        self._fast_dil: dict[int, set[int]] = {}  # per branch op: body indices of dilated depthwise convs
        self._other: list[int] = []
        for i, (name, op) in enumerate(zip(self.names, self.ops)):
            spec = get_op(name)
            if spec.family == "conv" and isinstance(op, nn.Conv2d) and op.groups == 1 and op.stride == (1, 1):
                self._conv.append(i)
            elif spec.layout is not None and _matches_layout(op, spec.layout):
                self._branch[i] = spec.layout
                self._fast_dil[i] = {d.index for d in spec.layout.depthwise if d.dilation > 1}
            else:
                self._other.append(i)
        self._kmax = max((self.ops[i].kernel_size[0] for i in self._conv), default=0)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            out = weights[0] * self.ops[0](x)
            for w, op in zip(weights[1:], self.ops[1:]):
                out = out + w * op(x)
            return out
        out = None
        if self._conv:
            kernel, bias = self._merged_conv(weights)
            out = F.conv2d(x, kernel, bias, padding=self._kmax // 2)
        if self._branch:
            r = F.relu(x)
            cpu = r.device.type == "cpu"  # the custom backward is a CPU fix; GPUs' native kernels are fine
            feats, last = [], []
            for i, layout in self._branch.items():
                op, y = self.ops[i], r
                for j in layout.body:
                    m = op[j]
                    y = dilated_depthwise(y, m.weight, m.dilation[0]) if cpu and j in self._fast_dil[i] else m(y)
                feats.append(y)
                last.append((i, op[layout.pointwise]))
            weight = torch.cat([weights[i] * pw.weight for i, pw in last], dim=1)
            bias = _weighted_sum([(weights[i], pw.bias) for i, pw in last])
            z = F.conv2d(torch.cat(feats, dim=1) if len(feats) > 1 else feats[0], weight, bias)
            out = z if out is None else out + z
        for i in self._other:
            y = weights[i] * self.ops[i](x)
            out = y if out is None else out + y
        return out

    def _merged_conv(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        kernel = None
        for i in self._conv:
            conv = self.ops[i]
            p = (self._kmax - conv.kernel_size[0]) // 2
            k = weights[i] * (F.pad(conv.weight, (p, p, p, p)) if p else conv.weight)
            kernel = k if kernel is None else kernel + k
        return kernel, _weighted_sum([(weights[i], self.ops[i].bias) for i in self._conv])


def _weighted_sum(terms: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor | None:
    """Σ w·b over the biases that exist; None when no op has one (``op_bias: false``)."""
    out = None
    for w, b in terms:
        if b is not None:
            out = w * b if out is None else out + w * b
    return out


class SearchCell(DistillCell):
    """The information-distillation cell with a :class:`MixedOp` at every refinement step."""

    def __init__(self, space: SearchSpace, fused: bool = True):
        c = space.channels
        super().__init__([MixedOp(space.ops, c, fused, space.op_bias) for _ in range(space.steps)], c, space.esa)


class SuperNet(nn.Module):
    """Stem -> N searchable cells (inputs mixed by softmax(β)) -> fusion weighted by m·softmax(β_f) -> tail.

    ``combine``: with ``input_merge: concat``, the 1×1 conv of every cell that has a β (named by cell,
    ``cell<i>``, as in the derived net).
    """

    def __init__(self, space: SearchSpace, fused: bool = True, channels_last: bool = True):
        super().__init__()
        space.validate()
        self.space = space
        self._fused = fused
        self.channels_last = channels_last
        n, k, c = space.cells, space.steps, space.channels
        self.sub_mean = InputNorm(space.rgb_range, space.mean_shift)
        self.stem = conv3x3(3, c)
        self.cells = nn.ModuleList(SearchCell(space, fused) for _ in range(n))
        # cells with a choice of inputs, in order: they own beta_inputs[0], [1], ...
        self.searched_inputs = [i for i in range(1, n + 1) if len(space.input_candidates(i)) > 1]
        self.combine = nn.ModuleDict()
        if space.input_merge == "concat":
            for i in self.searched_inputs:
                self.combine[f"cell{i}"] = conv1x1(len(space.input_candidates(i)) * c, c)
        self.fusion = conv1x1(n * c, c)
        self.body = conv3x3(c, c)
        self.upsampler = Upsampler(c, space.scale, space.upsampler, space.mean_shift, space.rgb_range)
        self.alpha = nn.Parameter(1e-3 * torch.randn(1 if space.shared_alpha else n, k, len(space.ops)))
        self.beta_inputs = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(len(space.input_candidates(i)))) for i in self.searched_inputs)
        self.beta_fusion = nn.Parameter(1e-3 * torch.randn(n)) if space.search_fusion else None

    @property
    def fused(self) -> bool:
        return self._fused

    @fused.setter
    def fused(self, value: bool) -> None:
        """Switch every MixedOp between the fused and the plain path (same parameters, same maths)."""
        self._fused = bool(value)
        for m in self.modules():
            if isinstance(m, MixedOp):
                m.fused = self._fused

    # -- parameter groups -------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        fusion = [] if self.beta_fusion is None else [self.beta_fusion]
        return [self.alpha, *self.beta_inputs, *fusion]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def arch_probs(self, temperature: float = 1.0) -> ArchProbs:
        """Softmax of α/τ and β/τ (differentiable), spread over all earlier outputs (0 where an output is
        not a candidate); a cell with one candidate has the constant 1 there, an unsearched fusion 1/N
        for every cell.

        The forward pass mixes at τ = 1. A lower τ sharpens the distributions toward the choices that
        derivation will make; the search evaluates its budget penalty there (see ``hdnas.search.engine``).
        """
        t = float(temperature)
        like = dict(dtype=self.alpha.dtype, device=self.alpha.device)
        space, betas = self.space, iter(self.beta_inputs)
        inputs = []
        for i in range(1, space.cells + 1):
            cands = space.input_candidates(i)
            if len(cands) == 1:
                p = torch.zeros(i, **like)
                p[cands[0]] = 1.0
            else:
                p = torch.softmax(next(betas) / t, dim=0)
                if len(cands) < i:  # spread over outputs 0..i-1
                    p = torch.cat([torch.zeros(i - len(cands), **like), p])
            inputs.append(p)
        n = space.cells
        fusion = (torch.softmax(self.beta_fusion / t, dim=0) if self.beta_fusion is not None
                  else torch.full((n,), 1.0 / n, **like))
        return ArchProbs(alpha=torch.softmax(self.alpha / t, dim=-1), inputs=inputs, fusion=fusion)

    def genotype(self):
        """The derived architecture under the current α and β (see :func:`hdnas.search.derive.derive`)."""
        return derive(self, self.space)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        probs = self.arch_probs()
        shared = self.space.shared_alpha
        if self.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
        outs = [self.stem(self.sub_mean(lr))]
        for i, cell in enumerate(self.cells, start=1):
            cands = self.space.input_candidates(i)
            if len(cands) == 1:
                x = outs[cands[0]]
            elif f"cell{i}" in self.combine:
                x = lrelu(self._weighted_conv(self.combine[f"cell{i}"], [outs[j] for j in cands], probs.inputs[i - 1][cands]))
            else:
                p = probs.inputs[i - 1]
                x = p[cands[0]] * outs[cands[0]]
                for j in cands[1:]:
                    x = x + p[j] * outs[j]
            outs.append(cell(x, probs.alpha[0 if shared else i - 1]))
        if self.beta_fusion is None:  # the reference: all cells, unweighted
            mixed = self.fusion(torch.cat(outs[1:], dim=1))
        else:
            mixed = self._weighted_conv(self.fusion, outs[1:], self.space.fusion_cells * probs.fusion)
        body = self.body(lrelu(mixed)) + outs[0]
        return self.upsampler(body, lr)

    def _weighted_conv(self, conv: nn.Conv2d, maps: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
        """``conv`` over the concat of ``w[j]·maps[j]``; fused: the weights scale the conv's input columns
        instead of the feature maps (same result, fewer full-size multiplications)."""
        if self.fused:
            scale = w.repeat_interleave(self.space.channels).view(1, -1, 1, 1)
            return F.conv2d(torch.cat(maps, dim=1), conv.weight * scale, conv.bias)
        return conv(torch.cat([w[j] * m for j, m in enumerate(maps)], dim=1))
