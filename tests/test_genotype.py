"""Genotype JSON: lossless round trip, every bad input rejected naming its field, atomic save, graph views.

Plus the command lines that read genotypes (tools/summary.py, tools/render.py) on good and bad files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_tool

from hdnas.core.errors import ConfigError
from hdnas.core.genotype import PLAIN_VERSION, CellGenotype, Genotype, load_genotype, scale_from_filename

ROOT = Path(__file__).resolve().parents[1]


def make(scale: int = 4, **kw) -> Genotype:
    """4 cells × 3 steps; cell 2 reads stem + cell 1; nothing reads cell 3, so it is dead."""
    base = dict(
        scale=scale,
        channels=16,
        cells=[
            CellGenotype(["conv_3x3", "sep_conv_5x5", "dil_conv_3x3"], [0]),
            CellGenotype(["conv_1x1", "conv_3x3", "sep_conv_3x3"], [0, 1]),
            CellGenotype(["conv_5x5", "conv_3x3", "conv_3x3"], [2]),
            CellGenotype(["conv_3x3", "sep_conv_5x5", "dil_conv_3x3"], [2]),
        ],
        fusion=[2, 4],
        provenance={
            "search_config": {"space": {"cells": 4, "ops": ["conv_3x3", "sep_conv_5x5"]}, "lr": 3e-4},
            "seed": 1234,
            "multi_adds": 17_657_576_640,
            "params": 327_264,
            "val_psnr": 28.123456789012345,
            "date": "2025-01-31T12:00:00+00:00",
            "note": "µ×→ unicode, a \"quote\", a tab\t, a newline\n, {braces}",
            "command": ["python", "tools/search.py", "--scale", "4", "search.epochs=20"],
            "nothing": None,
            "flag": True,
        },
    )
    base.update(kw)
    return Genotype(**base)


def good_dict() -> dict:
    return make().to_dict()


def write(tmp_path: Path, data, name: str = "geno.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def expect_error(tmp_path: Path, data, field: str, name: str = "geno.json", **kw) -> str:
    path = write(tmp_path, data, name)
    with pytest.raises(ConfigError) as info:
        load_genotype(path, **kw)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert field in msg, f"expected {field!r} in: {msg}"
    return msg


# -- round trip ---------------------------------------------------------------------------------


def test_round_trip_is_lossless(tmp_path):
    g = make()
    path = g.save(tmp_path / "x4.json")
    back = load_genotype(path)
    assert back == g
    assert back.provenance == g.provenance  # nested dicts, floats to the last digit, unicode, None, bools
    assert back.to_json() == g.to_json()
    assert json.loads(path.read_text(encoding="utf-8")) == json.loads(g.to_json())


def test_round_trip_keeps_provenance_strings_verbatim(tmp_path):
    """Strings that look like JSON lists must not be touched by the one-line-list formatting."""
    prov = {"a": "see [   x  ]", "b": "x[ ", "c": " ]", "cmd": ["--space", "[ 1 ]"]}
    g = make(provenance=prov)
    assert load_genotype(g.save(tmp_path / "g.json")).provenance == prov


def test_json_is_self_describing_and_readable():
    text = make().to_json()
    data = json.loads(text)
    assert data["format"] == {"name": "hdnas-genotype", "version": PLAIN_VERSION}  # no widths: version 1
    assert data["steps"] == 3 and data["esa"] is True and data["upsampler"] == "pixelshuffle"
    assert '"ops": ["conv_3x3", "sep_conv_5x5", "dil_conv_3x3"]' in text  # one line per cell: diffs read well


def test_optional_fields_default(tmp_path):
    data = good_dict()
    for key in ("steps", "esa", "upsampler", "provenance"):
        del data[key]
    g = load_genotype(write(tmp_path, data))
    assert g.esa is True and g.upsampler == "pixelshuffle" and g.provenance == {} and g.steps == 3


# -- every bad input names its field ----------------------------------------------------------


def test_unknown_op(tmp_path):
    data = good_dict()
    data["cells"][1]["ops"][2] = "sep_conv_9x9"
    msg = expect_error(tmp_path, data, "cells[1].ops[2]")
    assert "sep_conv_9x9" in msg


def test_wrong_step_count(tmp_path):
    data = good_dict()
    data["cells"][2]["ops"] = data["cells"][2]["ops"][:2]
    expect_error(tmp_path, data, "cells[2].ops")


def test_wrong_step_count_without_steps_field(tmp_path):
    data = good_dict()
    del data["steps"]
    data["cells"][3]["ops"].append("conv_3x3")
    expect_error(tmp_path, data, "cells[3].ops")


def test_scale_does_not_match_file_name(tmp_path):
    data = make(scale=2).to_dict()
    msg = expect_error(tmp_path, data, "scale", name="x4.json")
    assert "×4" in msg or "x4" in msg


def test_scale_does_not_match_command_line(tmp_path):
    expect_error(tmp_path, good_dict(), "scale", scale=3)


def test_matching_scale_loads(tmp_path):
    path = make(scale=3).save(tmp_path / "best_x3.json")
    assert load_genotype(path, scale=3).scale == 3


@pytest.mark.parametrize(
    "name, scale", [("x4.json", 4), ("derived_x2.json", 2), ("genotype-X3-best.json", 3), ("relax4.json", None),
                    ("x42.json", None), ("net.json", None)]
)
def test_scale_from_filename(name, scale):
    assert scale_from_filename(name) == scale


@pytest.mark.parametrize("cell, bad", [(1, 2), (2, 3), (2, 4), (0, 1)])
def test_input_from_itself_or_a_later_cell_is_a_cycle(tmp_path, cell, bad):
    data = good_dict()
    data["cells"][cell]["inputs"] = [bad]
    msg = expect_error(tmp_path, data, f"cells[{cell}].inputs[0]")
    assert "cycle" in msg


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["cells"][1].update(inputs=[-1]), "cells[1].inputs[0]"),
        (lambda d: d["cells"][1].update(inputs=[0, 0]), "cells[1].inputs"),
        (lambda d: d["cells"][1].update(inputs=[]), "cells[1].inputs"),
        (lambda d: d["cells"][1].update(inputs=["0"]), "cells[1].inputs[0]"),
        (lambda d: d.update(fusion=[5]), "fusion[0]"),
        (lambda d: d.update(fusion=[2, 2]), "fusion"),
        (lambda d: d.update(fusion=[]), "fusion"),
        (lambda d: d.update(scale=5), "scale"),
        (lambda d: d.update(scale="4"), "scale"),
        (lambda d: d.update(channels=10), "channels"),
        (lambda d: d.update(channels=True), "channels"),
        (lambda d: d.update(esa="yes"), "esa"),
        (lambda d: d.update(upsampler="deconv"), "upsampler"),
        (lambda d: d.update(cells=[]), "cells"),
        (lambda d: d.update(steps=0), "steps"),
        (lambda d: d.update(provenance=[1]), "provenance"),
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["cells"][0].update(op="conv_3x3"), "cells[0].op"),
        (lambda d: d["cells"].__setitem__(0, "conv_3x3"), "cells[0]"),
        (lambda d: d.update(format={"name": "something-else", "version": 1}), "format.name"),
    ],
)
def test_bad_values_name_their_field(tmp_path, edit, field):
    data = good_dict()
    edit(data)
    expect_error(tmp_path, data, field)


@pytest.mark.parametrize(
    "missing", ["format", "scale", "channels", "cells", "fusion", "cells[0].ops", "cells[2].inputs"]
)
def test_missing_required_field(tmp_path, missing):
    data = good_dict()
    if "." in missing:
        cell, key = missing.split(".")
        del data["cells"][int(cell[6:-1])][key]
    else:
        del data[missing]
    msg = expect_error(tmp_path, data, missing)
    assert "missing" in msg


@pytest.mark.parametrize("version", [3, 0, "1", None, True])
def test_unknown_format_version(tmp_path, version):
    data = good_dict()
    data["format"]["version"] = version
    expect_error(tmp_path, data, "format.version")


def test_invalid_json(tmp_path):
    msg = expect_error(tmp_path, '{"scale": 4,\n  "cells": [', "invalid JSON")
    assert "line 2" in msg


@pytest.mark.parametrize("text", ["[1, 2]", '"x4"', "4", "null"])
def test_not_an_object(tmp_path, text):
    expect_error(tmp_path, text, "JSON object")


def test_missing_file_and_binary_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_genotype(tmp_path / "nope.json")
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match=str(path).replace("\\", "\\\\")):
        load_genotype(path)


def test_validate_in_memory_genotype():
    g = make()
    g.cells[0].ops[0] = "nope"
    with pytest.raises(ConfigError, match=r"cells\[0\]\.ops\[0\]"):
        g.validate()


# -- graph views ------------------------------------------------------------------------------


def test_live_cells():
    g = make()  # fusion [2, 4]; 4 reads 2; 2 reads 0, 1; cell 3 reaches nothing
    assert g.live_cells() == [1, 2, 4]
    g.fusion = [3]
    assert g.live_cells() == [1, 2, 3]
    g.cells[2].inputs = [0]
    assert g.live_cells() == [3]


def test_build_order_is_topological_and_names_a_cycle():
    g = make()
    assert g.build_order() == g.live_cells() == [1, 2, 4]
    g.cells[0].inputs = [2]  # cell 1 reads cell 2, which reads cell 1 (built in code, never validated)
    with pytest.raises(ConfigError, match=r"cycle \((1 -> 2 -> 1|2 -> 1 -> 2)\)"):
        g.build_order()


def test_graph_is_a_copy_callers_may_change():
    g = make()
    view = g.graph()
    view.add_edge(3, "fusion")
    assert g.live_cells() == [1, 2, 4] and 3 not in g.graph().predecessors("fusion")


def test_networkx_view():
    nx = pytest.importorskip("networkx")
    g = make().graph()
    assert nx.is_directed_acyclic_graph(g)
    assert set(g.predecessors(2)) == {0, 1} and set(g.predecessors(4)) == {2}
    assert set(g.predecessors("fusion")) == {2, 4}
    assert g.edges[0, "upsampler"]["role"] == "long_skip"
    assert g.edges[2, "fusion"]["role"] == "fusion" and g.edges[0, 2]["role"] == "input"
    assert g.nodes[3]["live"] is False and g.nodes[4]["live"] is True
    assert g.nodes[1]["ops"] == ["conv_3x3", "sep_conv_5x5", "dil_conv_3x3"]
    assert g.nodes["upsampler"]["scale"] == 4
    assert nx.has_path(g, 3, "upsampler") is False  # dead: reaches nothing downstream of the fusion


# -- atomic save ------------------------------------------------------------------------------


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "sub" / "x4.json"
    make().save(out)
    make(channels=32).save(out)  # overwrite (force defaults to True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["x4.json"]
    assert load_genotype(out).channels == 32


def test_save_refuses_to_overwrite_without_force(tmp_path):
    out = make().save(tmp_path / "x4.json")
    before = out.read_bytes()
    with pytest.raises(ConfigError, match="exists"):
        make(channels=32).save(out, force=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x4.json"]


def test_failed_save_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    out = make().save(tmp_path / "x4.json")
    before = out.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        make(channels=32).save(out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x4.json"]


def test_save_refuses_invalid_genotype(tmp_path):
    g = make()
    g.fusion = [9]
    with pytest.raises(ConfigError, match=r"fusion\[0\]"):
        g.save(tmp_path / "x4.json")
    assert not (tmp_path / "x4.json").exists()


# -- command lines ----------------------------------------------------------------------------
# One subprocess per tool proves it runs as a script from the repo root without install and fails
# cleanly; the rest call main() in-process, because each fresh interpreter pays ~3 s to import torch.


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the tool must find hdnas itself
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / tool), *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )


def bad_file(tmp_path: Path) -> Path:
    data = good_dict()
    data["cells"][1]["ops"][0] = "conv_9x9"
    return write(tmp_path, data, "x4.json")


@pytest.mark.parametrize("tool", ["summary.py", "render.py"])
def test_cli_bad_genotype(tmp_path, tool):
    out = tmp_path / "drawings"
    extra = ["--out", str(out)] if tool == "render.py" else []
    res = run_tool(tool, str(bad_file(tmp_path)), *extra)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and "cells[1].ops[0]" in res.stderr and "x4.json" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize("tool", ["summary", "render"])
@pytest.mark.parametrize("problem", ["scale", "json", "missing"])
def test_cli_errors_in_process(tmp_path, capsys, tool, problem):
    out = tmp_path / "drawings"
    if problem == "scale":
        args, field = [str(make().save(tmp_path / "x4.json")), "--scale", "2"], "scale"
    elif problem == "json":
        args, field = [str(write(tmp_path, "{oops", "x4.json"))], "invalid JSON"
    else:
        args, field = [str(tmp_path / "none.json")], "not found"
    if tool == "render":
        args += ["--out", str(out)]
    assert load_tool(tool).main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and field in err
    assert not out.exists()


def test_cli_summary_json(tmp_path, capsys):
    g = Genotype(
        scale=4, channels=8, fusion=[1],
        cells=[CellGenotype(["conv_3x3", "sep_conv_3x3"], [0]), CellGenotype(["conv_1x1", "conv_1x1"], [1])],
    )
    path = g.save(tmp_path / "x4.json")
    assert load_tool("summary").main([str(path), "--json", "--scale", "4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["scale"] == 4 and info["channels"] == 8 and info["fusion"] == [1]
    assert info["live_cells"] == [1] and info["dead_cells"] == [2]
    assert info["cells"][0] == {"cell": 1, "ops": ["conv_3x3", "sep_conv_3x3"], "inputs": [0], "live": True}
    assert info["lr_size"] == [180, 320] and info["hr_size"] == [720, 1280]
    assert info["macs"] > 0 and info["params"] > 0
    assert info["macs"] == info["macs_fvcore"] + info["macs_not_in_fvcore"]


def test_cli_summary_text(tmp_path, capsys):
    path = make().save(tmp_path / "x4.json")
    assert load_tool("summary").main([str(path), "--no-fvcore"]) == 0
    text = capsys.readouterr().out
    assert "×4" in text and "channels 16" in text and "1280×720" in text and "LR 320×180" in text
    assert "sep 5×5" in text and "in: stem, cell 1" in text
    assert "dead (not built): 3" in text
