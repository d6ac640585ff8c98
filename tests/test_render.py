"""Drawings: the DOT source carries the op labels and the edges; files are written with or without `dot`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import graphviz
import pytest
from conftest import load_tool

from hdnas.core import render
from hdnas.core.errors import ConfigError
from hdnas.core.genotype import CellGenotype, Genotype
from hdnas.core.ops import OPS
from hdnas.core.render import (
    distinct_cells,
    render_cell,
    render_network,
    render_png_bytes,
    render_supernet,
    render_supernet_cell,
    short_label,
    write_drawings,
)
from hdnas.core.space import ArchProbs, SearchSpace

ROOT = Path(__file__).resolve().parents[1]
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(
    not HAVE_DOT, reason="graphviz's `dot` program is not installed (apt-get install graphviz)"
)

A = ["conv_3x3", "sep_conv_5x5", "dil_conv_3x3"]
B = ["conv_1x1", "conv_7x7", "sep_conv_3x3"]


def geno(esa: bool = True) -> Genotype:
    """Cells 1 and 3 identical; cell 3 reads stem + cell 2 (a 1×1 combine); cell 4 is dead."""
    return Genotype(
        scale=4,
        channels=16,
        cells=[CellGenotype(list(A), [0]), CellGenotype(list(B), [1]), CellGenotype(list(A), [0, 2]),
               CellGenotype(["conv_5x5", "dil_conv_5x5", "sep_conv_7x7"], [3])],
        fusion=[1, 2, 3],
        esa=esa,
    )


def edges(g: graphviz.Digraph) -> set[tuple[str, str]]:
    """Visible edges of a drawing (invisible ones only steer the layout)."""
    found = re.findall(r"^\s*(\w+) -> (\w+)(.*)$", g.source, flags=re.M)
    return {(a, b) for a, b, attrs in found if "style=invis" not in attrs}


# -- genotype drawings ------------------------------------------------------------------------


def test_distinct_cells_groups_identical_ops():
    assert distinct_cells(geno()) == [[1, 3], [2], [4]]


def test_short_labels_are_unique_and_compact():
    shorts = [short_label(n) for n in OPS]
    assert len(set(shorts)) == len(shorts)
    assert short_label("sep_conv_5x5") == "sep5" and short_label("dil_conv_3x3") == "dil3"


def test_cell_drawing_shows_ops_branches_and_residuals():
    g = render_cell(geno(), 3)
    src = g.source
    for k, op in enumerate(A, start=1):
        assert OPS[op].label in src and f"step {k}" in src
    assert "cells 1, 3" in src  # one drawing stands for both identical cells
    e = edges(g)
    # refined path: op_k(x_{k-1}) + x_{k-1} -> x_k (the residual is the direct x_{k-1} -> x_k edge)
    assert {("in", "op1"), ("op1", "x1"), ("in", "x1"), ("x1", "op2"), ("op2", "x2"), ("x1", "x2")} <= e
    assert {("x2", "op3"), ("op3", "x3"), ("x2", "x3")} <= e
    # distilled branches d1..d3 from x0..x2, d4 = 3×3 conv of x3, all into the concat
    assert {("in", "d1"), ("x1", "d2"), ("x2", "d3"), ("x3", "d4")} <= e
    assert {(f"d{k}", "concat") for k in range(1, 5)} <= e
    assert {("concat", "fuse"), ("fuse", "esa"), ("esa", "out")} <= e
    assert "16→8" in src and "4×8 = 32 ch" in src and "32→16" in src  # C -> C/2 branches, concat -> C


def test_cell_drawing_without_esa_and_colours():
    g = render_cell(geno(esa=False), 2)
    assert ("fuse", "out") in edges(g) and "ESA" not in g.source.replace("ESA off", "")
    fill, line = render.FAMILY_COLOURS["sep"]
    assert fill in g.source and line in g.source  # sep 3×3 is drawn in the sep colours


def test_dead_cell_is_greyed():
    g = render_cell(geno(), 4)
    assert "dead (not built): 4" in g.source and "dashed" in g.source
    assert render.DEAD_FILL in g.source


def test_cell_out_of_range():
    with pytest.raises(ValueError, match="cells 1..4"):
        render_cell(geno(), 5)


def test_network_drawing():
    g = render_network(geno())
    src = g.source
    e = edges(g)
    assert {("lr", "o0"), ("o0", "o1"), ("o1", "o2")} <= e  # stem -> cell 1 -> cell 2
    assert {("o0", "in3"), ("o2", "in3"), ("in3", "o3"), ("o3", "o4")} <= e  # cell 3 combines stem + cell 2
    assert {("o1", "fusion"), ("o2", "fusion"), ("o3", "fusion")} <= e and ("o4", "fusion") not in e
    assert {("fusion", "body"), ("body", "add"), ("o0", "add"), ("add", "up"), ("up", "sr")} <= e
    assert "long skip" in src and "PixelShuffle(4)" in src and "×4" in src and "16→48" in src
    for op in ("conv3", "sep5", "dil3", "conv1", "conv7", "sep3"):
        assert f">{op}<" in src
    assert "cell 4 (dead)" in src and "dashed" in src
    for fam, (fill, _) in render.FAMILY_COLOURS.items():
        assert fill in src and f"<B>{fam}</B>" in src  # colour-coded ops and a legend for every family


def test_invalid_genotype_is_refused():
    g = geno()
    g.cells[0].ops[0] = "conv_9x9"
    with pytest.raises(ConfigError, match=r"cells\[0\]\.ops\[0\]"):
        render_network(g)


# -- supernet ---------------------------------------------------------------------------------


def space(**kw) -> SearchSpace:
    return SearchSpace(**{"cells": 3, "steps": 2, "cell_inputs": 1, "fusion_cells": 2, **kw})


def probs(sp: SearchSpace, shared: bool = False) -> ArchProbs:
    """Hand-made: in every step op j has weight ∝ j+1 (so the last three ops are the top 3)."""
    o = len(sp.ops)
    row = [(j + 1) / (o * (o + 1) / 2) for j in range(o)]
    alpha = [[row] * sp.steps] * (1 if shared else sp.cells)
    return ArchProbs(alpha=alpha, inputs=[[1.0], [0.1, 0.9], [0.1, 0.1, 0.8]], fusion=[0.2, 0.3, 0.5])


def test_supernet_drawing_top3_and_betas():
    sp = space()
    g = render_supernet(probs(sp), sp, title="epoch 3")
    src = g.source
    o = len(sp.ops)
    top = [short_label(n) for n in sp.ops[-3:]]
    for name in top:
        assert name in src
    assert short_label(sp.ops[0]) not in src  # not in the top 3
    assert f"… {o - 3} more" in src and "epoch 3" in src
    e = edges(g)
    # α: 3 candidate edges + one "…" edge per step
    assert sum(1 for line in src.splitlines() if re.match(r"\s*c1x0 -> c1x1", line)) == 4
    # β: every earlier output into every cell, every cell into the fusion
    assert {("o0", "c1x0"), ("o0", "c2x0"), ("c1x2", "c2x0"), ("o0", "c3x0"), ("c1x2", "c3x0"), ("c2x2", "c3x0")} <= e
    assert {("c1x2", "fusion"), ("c2x2", "fusion"), ("c3x2", "fusion")} <= e
    assert re.search(r'c1x2 -> c2x0 \[label="?0\.90', src) and re.search(r'c3x2 -> fusion \[label="?0\.50', src)
    widths = [float(w) for w in re.findall(r"c\dx2 -> fusion \[.*?penwidth=([\d.]+)", src)]
    assert widths == sorted(widths) and widths[0] < widths[-1]  # width grows with β


def test_supernet_drawing_accepts_tensors_and_shared_alpha():
    torch = pytest.importorskip("torch")
    sp = space()
    p = probs(sp, shared=True)
    p = ArchProbs(alpha=torch.tensor(p.alpha, requires_grad=True), inputs=[torch.tensor(b) for b in p.inputs],
                  fusion=torch.tensor(p.fusion))
    src = render_supernet(p, sp).source
    assert "shared by all cells" in src
    cell = render_supernet_cell(p, sp, 2)
    assert ("x0", "x1") in edges(cell) and "α per step" in cell.source


def test_supernet_shape_mismatch():
    sp = space()
    p = probs(sp)
    p.fusion = [0.5, 0.5]
    with pytest.raises(ValueError, match="fusion"):
        render_supernet(p, sp)


# -- files ------------------------------------------------------------------------------------


@needs_dot
def test_png_bytes():
    sp = space()
    png = render_png_bytes(render_supernet(probs(sp), sp))
    assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n")


def test_png_bytes_without_dot(monkeypatch):
    monkeypatch.setattr(render, "dot_available", lambda: False)
    assert render_png_bytes(render_network(geno())) is None


@needs_dot
def test_write_drawings(tmp_path):
    out = tmp_path / "draw"
    written = write_drawings(geno(), out)
    names = sorted(p.name for p in written)
    stems = ["cell_1", "cell_2", "cell_4", "network"]
    assert names == sorted(f"{s}.{x}" for s in stems for x in ("gv", "svg", "png"))
    assert sorted(p.name for p in out.iterdir()) == names
    assert not written.dot_missing and written.message is None
    svg = (out / "cell_1.svg").read_text(encoding="utf-8")
    assert "sep 5×5" in svg and "cells 1, 3" in svg
    assert (out / "network.png").read_bytes().startswith(b"\x89PNG")


def test_write_drawings_without_dot(tmp_path, monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    written = write_drawings(geno(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell_1.gv", "cell_2.gv", "cell_4.gv", "network.gv"]
    assert written.dot_missing and "apt-get install graphviz" in written.message and "brew" in written.message
    assert written.paths == list(written)  # what hdnas.search.engine reads
    assert graphviz.Source((tmp_path / "network.gv").read_text(encoding="utf-8")).source.startswith("digraph")


def test_write_drawings_when_dot_cannot_be_run(tmp_path, monkeypatch):
    """`which` finds a dot that cannot be executed: graphviz raises ExecutableNotFound, we degrade."""
    monkeypatch.setattr(render, "dot_available", lambda: True)

    def missing(self, *a, **k):
        raise graphviz.ExecutableNotFound(["dot"])

    monkeypatch.setattr(graphviz.Digraph, "pipe", missing)
    written = write_drawings(geno(), tmp_path, formats=("svg",))
    assert written.dot_missing and all(p.suffix == ".gv" for p in written)
    assert render_png_bytes(render_network(geno())) is None


def test_write_drawings_when_dot_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "dot_available", lambda: True)

    def fails(self, *a, **k):
        raise subprocess.CalledProcessError(1, ["dot"], stderr=b"syntax error")

    monkeypatch.setattr(graphviz.Digraph, "pipe", fails)
    written = write_drawings(geno(), tmp_path, formats=("png",))
    assert not written.dot_missing and "could not render" in written.message
    assert all(p.suffix == ".gv" for p in written)


def test_write_drawings_refuses_bad_input_before_writing(tmp_path):
    g = geno()
    g.fusion = [7]
    with pytest.raises(ConfigError, match=r"fusion\[0\]"):
        write_drawings(g, tmp_path / "out")
    with pytest.raises(ValueError, match="format"):
        write_drawings(geno(), tmp_path / "out", formats=("svg", "jpeg2000x"))
    assert not (tmp_path / "out").exists()


def test_render_tool_without_dot(tmp_path, capsys, monkeypatch):
    tool = load_tool("render")
    monkeypatch.setattr(render, "dot_available", lambda: False)
    path = geno().save(tmp_path / "x4.json")
    assert tool.main([str(path), "--out", str(tmp_path / "d"), "--scale", "4"]) == 0
    captured = capsys.readouterr()
    assert "network.gv" in captured.out and "apt-get install graphviz" in captured.err
    assert sorted(p.suffix for p in (tmp_path / "d").iterdir()) == [".gv"] * 4
