"""Graphviz drawings of a genotype (its cells and the whole network) and of a supernet's α and β.

Everything is drawn from a :class:`~hdnas.core.genotype.Genotype` (or :class:`~hdnas.core.space.ArchProbs`)
alone, so a drawing never needs trained weights. Ops are coloured by their registry family
(``OPS[name].family``) with the same colours in every drawing, so cells can be compared at a glance.
Building a drawing needs only the ``graphviz`` Python package; turning it into SVG/PNG needs the
``dot`` program, and when that is missing we write the ``.gv`` sources and say how to install it.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

import graphviz

from hdnas.core.genotype import Genotype
from hdnas.core.ops import OPS
from hdnas.core.space import ArchProbs, SearchSpace

INSTALL_HINT = (
    "graphviz's `dot` program was not found, so only the .gv sources were written. Install it with "
    "`apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS) or "
    "`conda install -c conda-forge graphviz`, then run this again, or render a source yourself: "
    "`dot -Tsvg network.gv -o network.svg`."
)

FONT = "Helvetica"

#: (fill, line) colours per op family; the same in every drawing and in every legend.
FAMILY_COLOURS: dict[str, tuple[str, str]] = {
    "conv": ("#dbe8fb", "#2f6db5"),
    "sep": ("#d9f0da", "#2e8540"),
    "dil": ("#fde4c4", "#c05f0c"),
}
#: Colours handed out, in sorted order, to families a future registry adds.
_EXTRA_COLOURS = [("#ecdff5", "#7b3fa0"), ("#f9dbe4", "#b0305a"), ("#d6efee", "#1f7f7a"), ("#f3efc6", "#85780f")]
_FAMILY_TEXT = {
    "conv": "plain k×k conv",
    "sep": "separable k×k (2 × depthwise + 1×1)",
    "dil": "dilated k×k, d=2 (depthwise + 1×1)",
}
DEAD_FILL, DEAD_LINE = "#f2f2f2", "#a6a6a6"
_FIXED_FILL = "#f4f4f4"  # the fixed (not searched) parts of the backbone
_DISTILL_FILL = "#efe9f7"
_KEPT = "#1f3f7a"  # supernet edges that a derivation would keep now


# ---------------------------------------------------------------------------------------------
# Small helpers


def family_colours(family: str) -> tuple[str, str]:
    """(fill, line) colour of an op family; stable for families not in :data:`FAMILY_COLOURS`."""
    if family in FAMILY_COLOURS:
        return FAMILY_COLOURS[family]
    extra = sorted({s.family for s in OPS.values()} - set(FAMILY_COLOURS) | {family})
    return _EXTRA_COLOURS[extra.index(family) % len(_EXTRA_COLOURS)]


def short_label(name: str) -> str:
    """Compact op name for crowded drawings: ``sep_conv_5x5`` -> ``sep5``, unique over the registry."""
    spec = OPS[name]

    def base(s: Any) -> str:
        return f"{s.family}{s.kernel}"

    if sum(base(s) == base(spec) for s in OPS.values()) == 1:
        return base(spec)
    with_dil = f"{base(spec)}d{spec.dilation}"
    if sum(f"{base(s)}d{s.dilation}" == with_dil for s in OPS.values()) == 1:
        return with_dil
    return name


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _digraph(name: str, rankdir: str = "LR", **graph_attr: str) -> graphviz.Digraph:
    g = graphviz.Digraph(name)
    g.attr(rankdir=rankdir, fontname=FONT, bgcolor="white", pad="0.3", **graph_attr)
    g.attr("node", fontname=FONT, fontsize="12", shape="box", style="rounded,filled", fillcolor=_FIXED_FILL,
           color="#555555", penwidth="1.2")
    g.attr("edge", fontname=FONT, fontsize="10", color="#444444", arrowsize="0.7")
    return g


def _title(text: str, sub: str = "", legend: str = "") -> str:
    """An HTML graph title: a bold line, an optional grey second line and an optional legend row."""
    rows = f'<TR><TD ALIGN="LEFT"><FONT POINT-SIZE="18"><B>{_esc(text)}</B></FONT></TD></TR>'
    if sub:
        rows += f'<TR><TD ALIGN="LEFT"><FONT POINT-SIZE="12" COLOR="#555555">{_esc(sub)}</FONT></TD></TR>'
    if legend:
        rows += f'<TR><TD ALIGN="LEFT">{legend}</TD></TR>'
    return f'<<TABLE BORDER="0" CELLPADDING="2">{rows}</TABLE>>'


def _legend(families: Iterable[str], dead: bool = False, vertical: bool = False, names: bool = True) -> str:
    """The legend (an HTML table): a coloured swatch per op family (with its short names), and dead cells."""
    cells = []
    for fam in families:
        fill, line = family_colours(fam)
        text = _FAMILY_TEXT.get(fam, fam)
        if names:
            text += ": " + ", ".join(short_label(n) for n, s in OPS.items() if s.family == fam)
        cells.append(
            f'<TD BGCOLOR="{fill}" COLOR="{line}" BORDER="1"><FONT COLOR="{line}"><B>{_esc(fam)}</B></FONT></TD>'
            f'<TD ALIGN="LEFT"><FONT POINT-SIZE="11">{_esc(text)}</FONT></TD>'
        )
    if dead:
        cells.append(
            f'<TD BGCOLOR="{DEAD_FILL}" COLOR="{DEAD_LINE}" BORDER="1" STYLE="dashed"><FONT COLOR="{DEAD_LINE}">'
            f'dead</FONT></TD><TD ALIGN="LEFT"><FONT POINT-SIZE="11">cell unused by the fusion (not built)</FONT></TD>'
        )
    rows = "".join(f"<TR>{c}</TR>" for c in cells) if vertical else f'<TR>{"".join(cells)}</TR>'
    return f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="4" CELLPADDING="3">{rows}</TABLE>'


def _families_of(names: Iterable[str]) -> list[str]:
    """Families of these ops, in registry order (so legends always list them the same way)."""
    wanted = {OPS[n].family for n in names}
    return [f for f in dict.fromkeys(s.family for s in OPS.values()) if f in wanted]


def _box(title: str, *lines: str, fill: str = _FIXED_FILL) -> dict[str, str]:
    """Node attributes for a fixed block: bold title, small detail lines."""
    body = "".join(f'<BR/><FONT POINT-SIZE="10">{_esc(t)}</FONT>' for t in lines)
    return {"label": f"<<B>{_esc(title)}</B>{body}>", "fillcolor": fill}


# ---------------------------------------------------------------------------------------------
# Genotype drawings


def distinct_cells(genotype: Genotype) -> list[list[int]]:
    """Cells (1-based) grouped by identical op lists and widths, in order of first appearance.

    Identical cells draw the same, so a 6-cell net with 2 different cells needs 2 cell drawings.
    """
    groups: dict[tuple, list[int]] = {}
    for i, cell in enumerate(genotype.cells, start=1):
        widths = genotype.cell_widths(i)
        key = (tuple(cell.ops), tuple(widths.distill), widths.last, widths.esa, tuple(widths.ops))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _cells_text(cells: Sequence[int]) -> str:
    return ("cell " if len(cells) == 1 else "cells ") + ", ".join(map(str, cells))


def render_cell(genotype: Genotype, i: int) -> graphviz.Digraph:
    """One information-distillation cell (1-based ``i``): refined path, distilled branches, concat, ESA.

    The title lists every cell with the same ops and widths, since one drawing stands for all of them.
    A pruned cell's boxes show its widths (distillation, last 3×3, ESA's f, the ops' internal widths).
    """
    genotype.validate()
    n = len(genotype.cells)
    if not 1 <= i <= n:
        raise ValueError(f"cell {i} does not exist: the genotype has cells 1..{n}")
    ops = genotype.cells[i - 1].ops
    group = next(g for g in distinct_cells(genotype) if i in g)
    live = set(genotype.live_cells())
    dead = [j for j in group if j not in live]
    all_dead = len(dead) == len(group)
    c, k_steps = genotype.channels, len(ops)
    widths, pruned = genotype.cell_widths(i), genotype.cells[i - 1].widths is not None

    g = _digraph(f"cell_{i}", rankdir="TB", nodesep="0.35", ranksep="0.3", newrank="true", ordering="out")
    sub = f"×{genotype.scale} · C = {c} · {k_steps} steps · ESA {'on' if genotype.esa else 'off'}"
    if pruned:
        sub += " · pruned widths"
    if dead:
        sub += f" · dead (not built): {', '.join(map(str, dead))}"
    legend = "" if all_dead else _legend(_families_of(ops), names=False)
    g.attr(label=_title(_cells_text(group), sub, legend), labelloc="t", labeljust="l")

    line = DEAD_LINE if all_dead else "#444444"
    d_fill = DEAD_FILL if all_dead else _DISTILL_FILL
    g.attr("edge", color=line, fontcolor=line)
    if all_dead:
        g.attr("node", color=DEAD_LINE, fontcolor=DEAD_LINE, style="rounded,filled,dashed")
        g.attr("edge", style="dashed")

    g.node("in", **_box("cell input", f"{c} ch"), shape="box")
    prev = "in"
    for k, op in enumerate(ops, start=1):
        spec = OPS[op]
        fill, stroke = (DEAD_FILL, DEAD_LINE) if all_dead else family_colours(spec.family)
        with g.subgraph() as col:  # stack step k's op and its distilled branch in one column
            col.attr(rank="same")
            mid = widths.ops[k - 1]
            inner = f' · inner {mid}' if pruned and mid is not None else ""
            col.node(
                f"op{k}",
                f'<<FONT POINT-SIZE="9">step {k}</FONT><BR/><B>{_esc(spec.label)}</B>'
                f'<BR/><FONT POINT-SIZE="9">{_esc(op)}{inner}</FONT>>',
                fillcolor=fill, color=stroke, penwidth="2", margin="0.12,0.06",
            )
            col.node(f"d{k}", **_box(f"1×1 conv → d{k}", f"{c}→{widths.distill[k - 1]}, LReLU", fill=d_fill))
            col.edge(f"op{k}", f"d{k}", style="invis")  # distilled branches on the right, residuals on the left
        g.node(f"x{k}", f'<<B>+</B> · LReLU<BR/><FONT POINT-SIZE="9">x{k}</FONT>>', fontsize="11",
               margin="0.08,0.03", fillcolor="white")
        # defined left to right (graph ordering="out"): residual, refined op, distilled branch
        g.edge(prev, f"x{k}", style="dashed", color="#888888", tooltip="residual", tailport="w", headport="w",
               label=" +x" + str(k - 1), fontcolor="#888888", fontsize="9")
        g.edge(prev, f"op{k}", weight="10")
        g.edge(f"op{k}", f"x{k}", weight="10")
        g.edge(prev, f"d{k}", weight="1")
        prev = f"x{k}"
    last = k_steps + 1
    g.node(f"d{last}", **_box(f"3×3 conv → d{last}", f"{c}→{widths.last}, LReLU", fill=d_fill))
    g.edge(prev, f"d{last}", weight="10")
    parts = [*widths.distill, widths.last]
    total = sum(parts)
    sizes = f"{last}×{parts[0]}" if len(set(parts)) == 1 else "+".join(map(str, parts))
    g.node("concat", **_box("concat", f"d1…d{last}: {sizes} = {total} ch"), shape="box")
    for k in range(1, last + 1):
        g.edge(f"d{k}", "concat", label=f"d{k}", fontsize="9")
    g.node("fuse", **_box("1×1 conv", f"{total}→{c}"))
    g.edge("concat", "fuse")
    tail = "fuse"
    if genotype.esa:
        g.node("esa", **_box("ESA", "spatial attention" + (f", f = {widths.esa}" if pruned else "")))
        g.edge("fuse", "esa")
        tail = "esa"
    g.node("out", **_box("cell output", f"{c} ch"))
    g.edge(tail, "out")
    return g


def _cell_node_label(genotype: Genotype, i: int, dead: bool) -> str:
    ops = genotype.cells[i - 1].ops
    cells = []
    for op in ops:
        fill, line = (DEAD_FILL, DEAD_LINE) if dead else family_colours(OPS[op].family)
        font = DEAD_LINE if dead else "#000000"
        cells.append(f'<TD BGCOLOR="{fill}" COLOR="{line}"><FONT COLOR="{font}">{_esc(short_label(op))}</FONT></TD>')
    head_colour = DEAD_LINE if dead else "#000000"
    head = f"cell {i}" + (" (dead)" if dead else "")
    return (
        '<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="2" CELLPADDING="4">'
        f'<TR><TD COLSPAN="{len(ops)}" BORDER="0"><FONT COLOR="{head_colour}"><B>{_esc(head)}</B></FONT></TD></TR>'
        f'<TR>{"".join(cells)}</TR></TABLE>>'
    )


def render_network(genotype: Genotype) -> graphviz.Digraph:
    """The whole derived net: stem, cells (ops in short form, coloured by family), inputs, fusion, tail."""
    genotype.validate()
    c, s, n = genotype.channels, genotype.scale, len(genotype.cells)
    live = set(genotype.live_cells())
    dead = [i for i in range(1, n + 1) if i not in live]

    g = _digraph("network", rankdir="TB", nodesep="0.35", ranksep="0.35")
    sub = (
        f"C = {c} · {n} cells × {genotype.steps} steps · ESA {'on' if genotype.esa else 'off'}"
        f" · fusion of {_cells_text(genotype.fusion)}"
    )
    if dead:
        sub += f" · dead: {', '.join(map(str, dead))}"
    variants = [text for text, on in (("ops without bias", not genotype.op_bias),
                                      (f"pixels in [0, {genotype.rgb_range:g}]", genotype.rgb_range != 1),
                                      ("no mean shift", not genotype.mean_shift)) if on]
    if variants:
        sub += " · " + ", ".join(variants)
    g.attr(label=_title(f"hdnas network ×{s}", sub, _legend(_families_of(OPS), dead=bool(dead), vertical=True)),
           labelloc="t", labeljust="l")

    g.node("lr", "LR image", shape="box", style="filled", fillcolor="white", color="#888888")
    g.node("o0", **_box("stem", f"conv 3×3, 3→{c}"))
    g.edge("lr", "o0")
    for i in range(1, n + 1):
        is_dead = i in dead
        attrs = {"shape": "box", "style": "rounded", "margin": "0.04"}
        if is_dead:
            attrs.update(style="rounded,dashed", color=DEAD_LINE)
        g.node(f"o{i}", _cell_node_label(genotype, i, is_dead), **attrs)
        edge_attrs = {"style": "dashed", "color": DEAD_LINE} if is_dead else {}
        inputs = genotype.cells[i - 1].inputs
        target = f"o{i}"
        if len(inputs) > 1:
            target = f"in{i}"
            grey = {"color": DEAD_LINE, "fontcolor": DEAD_LINE, "style": "rounded,filled,dashed"} if is_dead else {}
            act = "<BR/>LReLU" if genotype.combine_lrelu else ""
            g.node(target, f"<concat<BR/>1×1 {len(inputs) * c}→{c}{act}>", fontsize="9", margin="0.05,0.02", **grey)
            g.edge(target, f"o{i}", **edge_attrs)
        for j in inputs:
            # the edge from the previous cell carries the chain; skips arc around it
            g.edge(f"o{j}", target, weight="8" if j == i - 1 else "1", **edge_attrs)
        if i - 1 not in inputs:
            g.edge(f"o{i - 1}", f"o{i}", style="invis", weight="8")
    m = len(genotype.fusion)
    f = genotype.fusion_channels
    g.node("fusion", **_box("fusion", f"concat {m}×{c} → 1×1 conv {m * c}→{f}", "LReLU"))
    for j in genotype.fusion:
        g.edge(f"o{j}", "fusion", weight="4" if j == n else "1")
    if n not in genotype.fusion:
        g.edge(f"o{n}", "fusion", style="invis", weight="4")
    g.node("body", **_box("conv 3×3", f"{f}→{c}"))
    g.node("add", "+", shape="circle", width="0.35", fixedsize="true", fontsize="16", fillcolor="white")
    bicubic = genotype.upsampler == "pixelshuffle_bicubic"
    up_lines = [f"conv 3×3 {c}→{3 * s * s}"] + (["+ bicubic ×" + str(s) + " of LR"] if bicubic else []) + [f"PixelShuffle({s})"]
    g.node("up", **_box(f"upsampler ×{s}", *up_lines))
    g.node("sr", f"SR image (×{s})", shape="box", style="filled", fillcolor="white", color="#888888")
    g.edge("fusion", "body")
    g.edge("body", "add")
    g.edge("o0", "add", style="dashed", color="#888888", label="long skip", fontcolor="#666666", constraint="false")
    g.edge("add", "up")
    g.edge("up", "sr")
    if bicubic:
        g.edge("lr", "up", style="dashed", color="#888888", label="bicubic skip", fontcolor="#666666",
               constraint="false")
    return g


# ---------------------------------------------------------------------------------------------
# Supernet drawings (α and β while searching)


def _as_lists(x: Any) -> Any:
    """Tensor / numpy / nested sequence -> nested Python floats, without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return [_as_lists(v) for v in x]
    return float(x)


def _width(p: float) -> str:
    return f"{0.5 + 5.5 * max(0.0, min(1.0, p)):.2f}"


def _grey(p: float) -> str:
    """Weak choices fade out so the strong ones stand out; p=1 is near black."""
    v = int(200 - 170 * max(0.0, min(1.0, p)))
    return f"#{v:02x}{v:02x}{v:02x}"


def _check_probs(probs: ArchProbs, space: SearchSpace) -> tuple[list, list, list]:
    alpha = _as_lists(probs.alpha)
    inputs = [_as_lists(b) for b in probs.inputs]
    fusion = _as_lists(probs.fusion)
    n, k, o = space.cells, space.steps, len(space.ops)
    if len(alpha) not in (1, n) or any(len(a) != k or any(len(row) != o for row in a) for a in alpha):
        raise ValueError(f"alpha: expected shape (1 or {n}, {k}, {o}) for this space")
    if len(inputs) != n or any(len(b) != i for i, b in enumerate(inputs, start=1)):
        raise ValueError(f"inputs: expected {n} vectors, cell i with i entries")
    if len(fusion) != n:
        raise ValueError(f"fusion: expected {n} entries, got {len(fusion)}")
    return alpha, inputs, fusion


def _top(values: Sequence[float], k: int) -> list[int]:
    return sorted(range(len(values)), key=lambda j: (-values[j], j))[:k]


def _alpha_edges(g: Any, src: str, dst: str, probs: Sequence[float], names: Sequence[str], top: int) -> None:
    """Step edges: the ``top`` candidate ops as coloured edges (width ∝ p), the rest as one '…' edge."""
    best = _top(probs, top)
    for rank, j in enumerate(best):
        _, line = family_colours(OPS[names[j]].family)
        text = f"{_esc(short_label(names[j]))} {probs[j]:.2f}"
        label = f"<<B>{text}</B>>" if rank == 0 else f"<{text}>"
        g.edge(src, dst, label=label, color=line, fontcolor=line, penwidth=_width(probs[j]))
    rest = [j for j in range(len(names)) if j not in best]
    if rest:
        p = sum(probs[j] for j in rest)
        g.edge(src, dst, label=f"… {len(rest)} more {p:.2f}", style="dotted", color="#999999", fontcolor="#777777",
               penwidth=_width(p))


def _beta_edge(g: graphviz.Digraph, src: str, dst: str, p: float, kept: bool, chain: bool) -> None:
    """A network-level edge: width ∝ β; dark when derivation would keep it; weak ones faint and unlabelled."""
    attrs = {"penwidth": _width(p), "weight": "6" if chain else "0"}
    if kept:
        attrs.update(color=_KEPT, fontcolor=_KEPT, label=f"{p:.2f}")
    else:
        attrs.update(color=_grey(p), fontcolor="#888888", label=f"{p:.2f}" if p >= 0.1 else "")
    g.edge(src, dst, **attrs)


def render_supernet(
    probs: ArchProbs, space: SearchSpace, top: int = 3, title: str | None = None
) -> graphviz.Digraph:
    """The supernet's current choices: per step the ``top`` ops (edge width and label = α-probability),
    and β as edges from each earlier output into each cell and from each cell into the fusion.

    The edges a derivation would keep now (top-k β) are dark; the others fade with their weight.
    """
    space.validate()
    alpha, inputs, fusion = _check_probs(probs, space)
    n, k = space.cells, space.steps
    g = _digraph("supernet", rankdir="TB", nodesep="0.3", ranksep="0.42")
    sub = f"α: top {top} of {len(space.ops)} ops per step{' (shared by all cells)' if len(alpha) == 1 else ''}" \
          f" · β: edge width = weight, dark = kept by derivation"
    legend = _legend(_families_of(space.ops), names=False)
    g.attr(label=_title(title or f"supernet ×{space.scale} ({space.name})", sub, legend), labelloc="t", labeljust="l")

    g.node("o0", **_box("stem", f"conv 3×3, 3→{space.channels}"))
    for i in range(1, n + 1):
        a = alpha[0 if len(alpha) == 1 else i - 1]
        with g.subgraph(name=f"cluster_cell{i}") as cl:
            cl.attr(label=f"cell {i}", style="rounded", color="#888888", fontsize="13", margin="8")
            for s in range(k + 1):
                label = "in" if s == 0 else ("out" if s == k else f"x{s}")
                cl.node(f"c{i}x{s}", label, shape="circle", width="0.35", fixedsize="true", fontsize="9",
                        fillcolor="white", ordering="out")  # top-ranked op edges leftmost
            for s in range(1, k + 1):
                _alpha_edges(cl, f"c{i}x{s - 1}", f"c{i}x{s}", a[s - 1], space.ops, top)
        cands = space.input_candidates(i)
        kept = {cands[j] for j in _top([inputs[i - 1][c] for c in cands], space.inputs_kept(i))}
        for j in cands:
            _beta_edge(g, "o0" if j == 0 else f"c{j}x{k}", f"c{i}x0", inputs[i - 1][j], j in kept, j == i - 1)
    merge = "1×1 conv" + ("" if space.search_fusion else " over all cells (not searched)")
    g.node("fusion", **_box("fusion", merge, f"→ conv 3×3 + long skip → ×{space.scale}"))
    kept = set(_top(fusion, space.fusion_cells))
    for j, b in enumerate(fusion):
        _beta_edge(g, f"c{j + 1}x{k}", "fusion", b if space.search_fusion else 1.0, j in kept, j == n - 1)
    return g


def render_supernet_cell(probs: ArchProbs, space: SearchSpace, i: int, top: int = 3) -> graphviz.Digraph:
    """One cell's α at full size (1-based ``i``), for a closer look than :func:`render_supernet` gives."""
    space.validate()
    alpha, _, _ = _check_probs(probs, space)
    if not 1 <= i <= space.cells:
        raise ValueError(f"cell {i} does not exist: the space has cells 1..{space.cells}")
    a = alpha[0 if len(alpha) == 1 else i - 1]
    g = _digraph(f"supernet_cell_{i}", rankdir="LR", nodesep="0.3", ranksep="1.0")
    g.attr(label=_title(f"cell {i}: α per step", f"top {top} of {len(space.ops)} ops; width = probability",
                        _legend(_families_of(space.ops), names=False)), labelloc="t", labeljust="l")
    for s in range(space.steps + 1):
        g.node(f"x{s}", "in" if s == 0 else f"x{s}", shape="circle", width="0.45", fixedsize="true",
               fillcolor="white")
    for s in range(1, space.steps + 1):
        _alpha_edges(g, f"x{s - 1}", f"x{s}", a[s - 1], space.ops, top)
    return g


# ---------------------------------------------------------------------------------------------
# Output


def dot_available() -> bool:
    """Whether graphviz's ``dot`` program is on the PATH (the Python package alone cannot render)."""
    return shutil.which("dot") is not None


def render_png_bytes(digraph: graphviz.Digraph) -> bytes | None:
    """PNG of a drawing, or None when ``dot`` is missing or fails: search logging must never stop for it."""
    if not dot_available():
        return None
    try:
        return digraph.pipe(format="png")
    except (graphviz.ExecutableNotFound, subprocess.CalledProcessError, OSError):
        return None


class Drawings(list):
    """The paths written (a plain list) plus whether ``dot`` was missing and what to tell the user."""

    def __init__(self, paths: Iterable[Path] = (), dot_missing: bool = False, message: str | None = None):
        super().__init__(paths)
        self.dot_missing = dot_missing
        self.message = message

    @property
    def paths(self) -> list[Path]:
        return list(self)


def drawings(genotype: Genotype) -> dict[str, graphviz.Digraph]:
    """File stem -> drawing: ``network`` and one ``cell_<k>`` per distinct cell (k = its first cell)."""
    out = {"network": render_network(genotype)}
    for group in distinct_cells(genotype):
        out[f"cell_{group[0]}"] = render_cell(genotype, group[0])
    return out


def write_drawings(
    genotype: Genotype, out_dir: str | Path, formats: Sequence[str] = ("svg", "png")
) -> Drawings:
    """Write ``network`` and ``cell_<k>`` drawings as ``.gv`` sources plus each of ``formats``.

    Without ``dot`` only the sources are written and the result's ``dot_missing``/``message`` say how
    to install it; this never raises for a missing or failing ``dot``.
    """
    for fmt in formats:
        if fmt not in graphviz.FORMATS:
            raise ValueError(f"unknown drawing format '{fmt}' (e.g. svg, png, pdf)")
    graphs = drawings(genotype)  # everything is built before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = Drawings()
    for stem, g in graphs.items():
        path = out / f"{stem}.gv"
        path.write_text(g.source, encoding="utf-8")
        written.append(path)
    if formats and not dot_available():
        written.dot_missing, written.message = True, INSTALL_HINT
        return written
    for stem, g in graphs.items():
        for fmt in formats:
            try:
                data = g.pipe(format=fmt)
            except graphviz.ExecutableNotFound:
                written.dot_missing, written.message = True, INSTALL_HINT
                return written
            except (subprocess.CalledProcessError, OSError) as exc:
                written.message = f"dot could not render {stem}.{fmt}: {exc}; the .gv source is written"
                continue
            path = out / f"{stem}.{fmt}"
            path.write_bytes(data)
            written.append(path)
    return written
