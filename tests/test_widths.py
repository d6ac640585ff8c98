"""Per-layer widths (genotype format version 2) and channel surgery: v1 files still load and save
byte-identical, v2 round-trips, bad widths name their field, the exact cost of pruned nets equals
fvcore's, surgery keeps the outputs of the kept channels, and pruned nets draw, summarise, export and
run adaptively; the latency model refuses them."""

from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, load_tool
from hdnas.core import latency, render
from hdnas.core.adaptive import AdaptiveNet, cost_at_depth
from hdnas.core.cost import count, fvcore_macs
from hdnas.core.errors import ConfigError
from hdnas.core.genotype import CellWidths, Genotype, load_genotype
from hdnas.core.inference import receptive_field
from hdnas.core.network import DerivedNet
from hdnas.core.ops import OPS, build_op, op_macs, op_params
from hdnas.core.space import SearchSpace
from hdnas.core.summary import latency_info, summarise
from hdnas.core.surgery import prunable_widths, prune, pruned_genotype
from hdnas.zoo.sampler import random_genotype

pytestmark = pytest.mark.usefixtures("single_thread")

SEP_OPS = ["sep_conv_3x3", "conv_3x3", "dil_conv_3x3", "sep_conv_5x5"]


def space(scale: int = 2, esa: bool = True, **kw) -> SearchSpace:
    base = dict(scale=scale, channels=8, cells=3, steps=2, cell_inputs=2, fusion_cells=2, esa=esa, ops=SEP_OPS)
    base.update(kw)
    return SearchSpace(**base)


def with_random_widths(geno: Genotype, rng: random.Random) -> Genotype:
    """Random widths (1..unpruned) on about half the cells and maybe the fusion; at least one recorded."""
    g = copy.deepcopy(geno)
    for i, cell in enumerate(g.cells, start=1):
        if rng.random() < 0.5 and not (i == len(g.cells) and not g.has_widths):
            continue
        full = g.cell_widths(i)
        cell.widths = CellWidths(distill=[rng.randint(1, d) for d in full.distill], last=rng.randint(1, full.last),
                                 esa=None if full.esa is None else rng.randint(1, full.esa),
                                 ops=[None if m is None else rng.randint(1, m) for m in full.ops])
    if rng.random() < 0.5:
        g.fusion_width = rng.randint(1, g.channels)
    return g


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- the format ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((REPO_ROOT / "derived").glob("*.json")), ids=lambda p: p.name)
def test_version_1_files_load_and_save_byte_identical(path):
    geno = load_genotype(path)
    assert not geno.has_widths and geno.width_fields() == []
    assert json.loads(path.read_text(encoding="utf-8"))["format"]["version"] == 1
    assert geno.to_json() + "\n" == path.read_text(encoding="utf-8")


def test_version_2_round_trip_is_lossless(tmp_path):
    rng = random.Random(3)
    for seed in range(5):
        geno = with_random_widths(random_genotype(space(esa=seed % 2 == 0), seed), rng)
        path = geno.save(tmp_path / f"g{seed}.json")
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["format"]["version"] == 2
        back = load_genotype(path)
        assert back == geno and back.to_json() == geno.to_json()
        for i, cell in enumerate(geno.cells):
            assert ("widths" in data["cells"][i]) == (cell.widths is not None)


def test_widths_text_reads_cell_by_cell():
    geno = random_genotype(space(), 0)
    geno.cells[0].widths = CellWidths(distill=[3, 4], last=2, esa=1, ops=[None if not OPS[o].mid_width else 5
                                                                         for o in geno.cells[0].ops])
    assert '"distill": [3, 4]' in geno.to_json()


def test_version_2_without_widths_means_the_defaults(tmp_path):
    data = random_genotype(space(), 1).to_dict()
    data["format"]["version"] = 2
    path = tmp_path / "g.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    geno = load_genotype(path)
    assert not geno.has_widths and geno.to_dict()["format"]["version"] == 1
    full = geno.cell_widths(1)
    assert full.distill == [4, 4] and full.last == 4 and full.esa == 2
    assert full.ops == [8 if OPS[o].mid_width else None for o in geno.cells[0].ops]


def _pruned_dict(esa: bool = True) -> dict:
    geno = random_genotype(space(esa=esa, ops=["sep_conv_3x3", "conv_3x3"], shared_alpha=True), 2)
    geno.cells[0].ops = ["sep_conv_3x3", "conv_3x3"]
    geno.cells[1].widths = CellWidths.default(8, geno.cells[1].ops, esa)
    geno.cells[0].widths = CellWidths(distill=[2, 3], last=4, esa=2 if esa else None, ops=[6, None])
    geno.fusion_width = 5
    return geno.to_dict()


@pytest.mark.parametrize("edit,field", [
    (lambda d: d["cells"][0]["widths"]["distill"].__setitem__(1, 0), "cells[0].widths.distill[1]"),
    (lambda d: d["cells"][0]["widths"]["distill"].__setitem__(1, 5), "cells[0].widths.distill[1]"),  # > C/2
    (lambda d: d["cells"][0]["widths"]["distill"].__setitem__(0, 2.5), "cells[0].widths.distill[0]"),
    (lambda d: d["cells"][0]["widths"]["distill"].append(1), "cells[0].widths.distill"),
    (lambda d: d["cells"][0]["widths"].__setitem__("last", 9), "cells[0].widths.last"),
    (lambda d: d["cells"][0]["widths"].pop("last"), "cells[0].widths.last"),
    (lambda d: d["cells"][0]["widths"].__setitem__("esa", 3), "cells[0].widths.esa"),  # > C/4
    (lambda d: d["cells"][0]["widths"].pop("esa"), "cells[0].widths.esa"),
    (lambda d: d["cells"][0]["widths"]["ops"].__setitem__(0, 9), "cells[0].widths.ops[0]"),  # > C
    (lambda d: d["cells"][0]["widths"]["ops"].__setitem__(0, None), "cells[0].widths.ops[0]"),
    (lambda d: d["cells"][0]["widths"]["ops"].__setitem__(1, 4), "cells[0].widths.ops[1]"),  # conv: none
    (lambda d: d["cells"][0]["widths"].__setitem__("mid", 4), "cells[0].widths.mid"),
    (lambda d: d["cells"][1].__setitem__("widths", [4, 4]), "cells[1].widths"),
    (lambda d: d.__setitem__("fusion_width", 0), "fusion_width"),
    (lambda d: d.__setitem__("fusion_width", 9), "fusion_width"),
    (lambda d: d.__setitem__("fusion_width", True), "fusion_width"),
    (lambda d: d["format"].__setitem__("version", 1), "cells[0].widths"),  # widths need version 2
    (lambda d: d["format"].__setitem__("version", 3), "format.version"),
])
def test_bad_widths_name_their_field(tmp_path, edit, field):
    data = _pruned_dict()
    Genotype.from_dict(copy.deepcopy(data))  # the unedited one is valid
    edit(data)
    path = tmp_path / "g.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"'{field}'")):
        load_genotype(path)


def test_esa_width_without_esa_is_refused():
    data = _pruned_dict(esa=False)
    Genotype.from_dict(copy.deepcopy(data))
    data["cells"][0]["widths"]["esa"] = 2
    with pytest.raises(ConfigError, match=r"'cells\[0\].widths.esa'.*no ESA"):
        Genotype.from_dict(data)


# -- the cost -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n, s in OPS.items() if s.mid_width])
def test_inner_width_of_an_op_is_built_and_counted(name):
    for c_in, c_out, mid in ((8, 8, 3), (8, 12, 8), (4, 6, 1)):
        op = build_op(name, c_in, c_out, mid)
        assert fvcore_macs(op, (9, 7), in_channels=c_in) == op_macs(name, c_in, c_out, 9, 7, mid)
        assert numel(op) == op_params(name, c_in, c_out, mid)
        assert op_macs(name, c_in, c_out, 9, 7) == op_macs(name, c_in, c_out, 9, 7, c_in)  # default: c_in


def test_an_op_without_an_inner_width_refuses_one():
    name = next(n for n, s in OPS.items() if not s.mid_width)
    with pytest.raises(ValueError, match="no internal width"):
        build_op(name, 8, 8, 4)
    with pytest.raises(ValueError, match="no internal width"):
        op_macs(name, 8, 8, 5, 5, 4)


@pytest.mark.parametrize("scale", (2, 3, 4))
def test_pruned_genotypes_count_what_fvcore_counts(scale):
    rng = random.Random(40 + scale)
    hr = (13 * scale, 19 * scale)
    for t in range(6):
        sp = space(scale, esa=t % 3 != 2, cells=rng.randint(1, 3), steps=rng.randint(1, 3))
        sp.cell_inputs = rng.randint(1, sp.cells)
        sp.fusion_cells = rng.randint(1, sp.cells)
        geno = with_random_widths(random_genotype(sp, rng), rng)
        net = DerivedNet(geno)
        report = count(geno, hr)
        assert report.macs == fvcore_macs(net, report.lr_size) + report.extras, geno
        assert report.params == numel(net)
        full = copy.deepcopy(geno)
        full.fusion_width = None
        for cell in full.cells:
            cell.widths = None
        assert report.macs <= count(full, hr).macs and report.params <= count(full, hr).params


# -- surgery ------------------------------------------------------------------------------------
def trained_net(seed: int = 0, esa: bool = True, scale: int = 2) -> DerivedNet:
    geno = random_genotype(space(scale, esa=esa), seed)
    torch.manual_seed(seed)
    net = DerivedNet(geno).eval()
    with torch.no_grad():  # break the default init's symmetry of biases and scales
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def random_keep(widths: dict[str, int], rng: random.Random, only: str | None = None) -> dict[str, list[int]]:
    """A random strict subset of each layer's channels (all of a layer of one channel)."""
    return {name: sorted(rng.sample(range(n), rng.randint(1, max(n - 1, 1)))) for name, n in widths.items()
            if only is None or only in name}


@torch.no_grad()
def zero_dropped(net: DerivedNet, keep: dict[str, list[int]]) -> DerivedNet:
    """The unpruned net with every dropped channel's output weights and bias zeroed (the masked net)."""
    out = copy.deepcopy(net)
    widths = prunable_widths(net.genotype)

    def zero(conv, name):
        dropped = [j for j in range(widths[name]) if j not in keep[name]]
        conv.weight[dropped] = 0
        if conv.bias is not None:
            conv.bias[dropped] = 0

    for name in keep:
        if name == "fusion":
            zero(out.fusion, name)
            continue
        cell_name, kind, *k = name.split(".")
        cell = out.cells[cell_name]
        if kind == "distill":
            zero(cell.distill[int(k[0])], name)
        elif kind == "last":
            zero(cell.last, name)
        elif kind == "esa":
            for layer in ("reduce", "down", "conv_max", "conv3", "conv3_", "conv_f"):
                zero(getattr(cell.esa, layer), name)
        else:
            op = cell.ops[int(k[0])]
            inner = OPS[out.genotype.cells[int(cell_name[4:]) - 1].ops[int(k[0])]].inner
            for j in (inner.out, *inner.depthwise):
                zero(op[j], name)
    return out


def test_surgery_keeping_every_channel_reproduces_the_net():
    net = trained_net()
    keep = {name: list(range(n)) for name, n in prunable_widths(net.genotype).items()}
    pruned = prune(net, keep)
    x = torch.rand(2, 3, 17, 19)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), net(x), rtol=0, atol=1e-6)
    assert pruned.genotype.has_widths
    assert count(pruned.genotype).macs == count(net.genotype).macs


@pytest.mark.parametrize("only", ["distill", "last", "esa", "ops", "fusion", None])
def test_surgery_equals_zeroing_the_dropped_channels(only):
    """Exactly (1e-5): the pruned net computes the unpruned net with the dropped channels zeroed."""
    rng = random.Random(len(only or ""))
    for seed in range(3):
        net = trained_net(seed, esa=seed != 2, scale=2 + seed)
        keep = random_keep(prunable_widths(net.genotype), rng, only)
        if not keep:
            continue
        pruned = prune(net, keep)
        x = torch.rand(2, 3, 17, 19)
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), zero_dropped(net, keep)(x), rtol=0, atol=1e-5)
            if any(len(idx) < prunable_widths(net.genotype)[name] for name, idx in keep.items()):
                assert not torch.allclose(pruned(x), net(x), atol=1e-5)  # the dropped channels mattered
        for name, idx in keep.items():
            assert prunable_widths(pruned.genotype)[name] == len(idx)
        report = count(pruned.genotype, (17 * net.scale, 19 * net.scale))
        assert report.macs == fvcore_macs(pruned, (17, 19)) + report.extras
        assert report.params == numel(pruned)


def test_surgery_result_saves_and_reloads(tmp_path):
    net = trained_net(1)
    keep = random_keep(prunable_widths(net.genotype), random.Random(0))
    pruned = prune(net, keep)
    assert pruned.genotype == pruned_genotype(net.genotype, keep)
    back = load_genotype(pruned.genotype.save(tmp_path / "x2.json"))
    again = DerivedNet(back)
    again.load_state_dict(pruned.state_dict())
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(x), pruned(x.clone()), rtol=0, atol=0)
    twice = prune(pruned, {name: [0] for name in prunable_widths(pruned.genotype)})  # prune a pruned net
    assert set(prunable_widths(twice.genotype).values()) == {1}


def test_surgery_refuses_bad_requests():
    net = trained_net()
    with pytest.raises(ValueError, match="'cell9.last' is not a prunable layer"):
        prune(net, {"cell9.last": [0]})
    name = next(iter(prunable_widths(net.genotype)))
    for bad in ([], [0, 0], [99], [-1]):
        with pytest.raises(ValueError, match=re.escape(name)):
            prune(net, {name: bad})
    with pytest.raises(TypeError, match="plain DerivedNet"):
        prune(AdaptiveNet(net.genotype), {})


# -- everything else reads the widths ------------------------------------------------------------
def _pruned_geno(esa: bool = True) -> Genotype:
    return with_random_widths(random_genotype(space(4, esa=esa, cells=2), 5), random.Random(5))


def test_latency_model_refuses_a_pruned_genotype(monkeypatch):
    geno = _pruned_geno()
    monkeypatch.setattr(latency, "latency_model", lambda *a, **k: pytest.fail("measured a table it cannot use"))
    with pytest.raises(latency.LatencyError, match=r"pruned genotype.*" + re.escape(geno.width_fields()[0])
                       + r".*measure_genotype"):
        latency.predict_ms(geno)
    model = latency.LatencyModel(key={}, parts_ms={})
    with pytest.raises(latency.LatencyError, match="pruned genotype"):
        model.predict(geno)
    assert "pruned genotype" in latency_info(geno)["latency_skipped"]


def test_summary_and_tool_print_the_widths(tmp_path, capsys):
    geno = _pruned_geno()
    geno.fusion_width = 7
    info = summarise(geno, "g.json", fvcore=True, latency_ms=True)
    assert info["macs_fvcore"] + info["macs_not_in_fvcore"] == info["macs"]
    assert "latency_skipped" in info and info["fusion_width"] == 7
    assert [c.get("widths") for c in info["cells"]] == [None if c.widths is None else c.widths.to_dict()
                                                       for c in geno.cells]
    path = geno.save(tmp_path / "x4.json")
    assert load_tool("summary").main([str(path), "--no-fvcore"]) == 0
    out = capsys.readouterr().out
    assert "widths: distill" in out and "width 7" in out and "latency    not predicted" in out


def test_drawings_show_the_widths():
    geno = random_genotype(space(4, cells=2, shared_alpha=True, ops=["sep_conv_3x3"]), 0)
    plain = render.render_cell(geno, 1).source
    assert render.distinct_cells(geno) == [[1, 2]]
    geno.cells[1].widths = CellWidths(distill=[3, 2], last=1, esa=1, ops=[5, 6])
    geno.fusion_width = 6
    assert render.distinct_cells(geno) == [[1], [2]]
    unpruned = render.render_cell(geno, 1).source  # an unpruned cell draws as before (its title aside)
    assert unpruned.replace("cell 1<", "cells 1, 2<") == plain
    src = render.render_cell(geno, 2).source
    for text in ("8→3", "8→2", "8→1", "3+2+1 = 6 ch", "6→8", "f = 1", "inner 5", "inner 6", "pruned widths"):
        assert text in src, text
    net = render.render_network(geno).source
    assert "16→6" in net and "6→8" in net


def test_adaptive_net_and_receptive_field_read_the_widths():
    geno = _pruned_geno()
    net = AdaptiveNet(geno).eval()
    plain = DerivedNet(geno).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("adapter.")})
    x = torch.rand(1, 3, 20, 24)
    full = torch.full((1, net.n_groups, 20, 24), float(net.units_per_group))
    with torch.no_grad():
        sr, _ = net.forward_depth(x, depth_map=full, execution="dense")
        torch.testing.assert_close(sr, plain(x), rtol=0, atol=1e-5)
    c = cost_at_depth(net, full)
    units = len(net.live) * geno.steps
    assert c.plain == count(geno, (80, 96)).macs
    assert c.macs == c.plain + c.adapter + units * geno.channels * 20 * 24  # every step dense, gated
    unpruned = copy.deepcopy(geno)
    unpruned.fusion_width = None
    for cell in unpruned.cells:
        cell.widths = None
    assert receptive_field(geno) == receptive_field(unpruned)


def test_onnx_export_of_a_pruned_net_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from hdnas.deploy.export import export_model

    net = trained_net(4, scale=3)
    pruned = prune(net, random_keep(prunable_widths(net.genotype), random.Random(4)))
    report = export_model(pruned, onnx=tmp_path / "pruned.onnx")
    assert report.onnx_max_diff is not None and report.onnx_max_diff <= 1e-4
    assert Path(report.onnx).is_file()
