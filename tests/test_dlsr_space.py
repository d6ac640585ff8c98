"""The faithful DLSR space (search_spaces/dlsr.yaml) and the space options it sets, one by one.

The reference counts (4,212,924 weights, 27 α + 14 β at ×2) were taken from the reference code
itself (DawnHH/DLSR-PyTorch, ``RFDN_beta1``, run on CPU). With ``HDNAS_DLSR_REFERENCE`` pointing at
a checkout of it, the last test also checks that both supernets compute the same function.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hdnas.core import cost, render
from hdnas.core.blocks import RGB_MEAN, InputNorm, Upsampler
from hdnas.core.config import ConfigError
from hdnas.core.genotype import CellGenotype, Genotype, load_genotype, random_genotype
from hdnas.core.network import DerivedNet
from hdnas.core.ops import OPS, build_op, op_params
from hdnas.core.space import SearchSpace, load_space
from hdnas.search.architect import Architect
from hdnas.search.derive import derive
from hdnas.search.engine import SearchOptions
from hdnas.search.supernet import MixedOp, SuperNet

REPO = Path(__file__).resolve().parents[1]
DLSR = REPO / "search_spaces" / "dlsr.yaml"

pytestmark = pytest.mark.usefixtures("single_thread")


def numel(params) -> int:
    return sum(p.numel() for p in params)


def tiny(**kw) -> SearchSpace:
    base = dict(scale=2, channels=8, cells=4, steps=2, ops=["conv_1x1", "conv_3x3", "sep_conv_3x3", "dil_conv_3x3"],
                cell_inputs=2, fusion_cells=2)
    base.update(kw)
    s = SearchSpace(**base)
    s.validate()
    return s


def first_input(module: torch.nn.Module) -> dict:
    """What ``module`` is first called with (``["x"]``); the hook returns None, so it changes nothing."""
    seen: dict = {}
    module.register_forward_pre_hook(lambda m, args: None if "x" in seen else seen.__setitem__("x", args[0]))
    return seen


def randomise_arch(net: SuperNet, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=g))


# -- the faithful space as a whole -------------------------------------------------------------------
def test_faithful_dlsr_space_has_the_reference_parameter_counts():
    net = SuperNet(load_space(DLSR, scale=2))
    assert numel(net.weight_parameters()) == 4_212_924
    assert [p.numel() for p in net.arch_parameters()] == [27, 2, 3, 4, 5]  # one shared 3×9 α, β of cells 3..6
    assert numel(net.arch_parameters()) == 41
    assert net.beta_fusion is None and "beta_fusion" not in net.state_dict()


def test_faithful_space_sets_the_reference_choices():
    s = load_space(DLSR, scale=2)
    assert (s.shared_alpha, s.stem_input, s.input_merge, s.search_fusion, s.op_bias, s.rgb_range, s.mean_shift) == (
        True, False, "concat", False, False, 255.0, False)
    assert [s.input_candidates(i) for i in range(1, 7)] == [[0], [1], [1, 2], [1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4, 5]]


def test_default_space_keeps_its_choices():
    s = load_space(REPO / "search_spaces" / "default.yaml", scale=4)
    assert (s.stem_input, s.input_merge, s.search_fusion, s.op_bias, s.rgb_range, s.mean_shift) == (
        True, "sum", True, True, 1.0, True)
    net = SuperNet(s)
    assert [b.numel() for b in net.beta_inputs] == [2, 3, 4] and net.beta_fusion.numel() == 4
    assert len(net.combine) == 0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_faithful_derived_nets(scale):
    """Derivation, the derived net, exact cost (= fvcore + ESA gates), expected cost and drawings."""
    space = load_space(DLSR, scale=scale)
    net = SuperNet(space)
    randomise_arch(net, scale)
    g = derive(net, space)
    assert (g.op_bias, g.combine_lrelu, g.rgb_range, g.mean_shift) == (False, True, 255.0, False)
    assert all(c.ops == g.cells[0].ops for c in g.cells)  # shared α
    assert [c.inputs for c in g.cells[:2]] == [[0], [1]]
    assert all(len(c.inputs) == 2 and 0 not in c.inputs for c in g.cells[2:])
    assert g.fusion == [1, 2, 3, 4, 5, 6]
    d = DerivedNet(g)
    hr = (12 * scale, 15 * scale)
    report = cost.count(g, hr)
    assert report.params == numel(d.parameters())
    assert report.macs == cost.fvcore_macs(d, (12, 15)) + report.extras
    assert float(cost.expected_macs(space, cost.indicator_probs(g, space), hr)) == pytest.approx(report.macs, rel=1e-12)
    assert d(torch.rand(1, 3, 12, 15)).shape == (1, 3, *hr)
    lo, hi = cost.cost_bounds(space)
    assert lo <= cost.count(g).macs <= hi
    network = render.render_network(g).source
    assert "LReLU" in network.split("concat", 1)[1]  # the merge of a cell's inputs
    assert "ops without bias, pixels in [0, 255], no mean shift" in network
    supernet = render.render_supernet(net.arch_probs(), space).source
    assert "o0 -> c3x0" not in supernet and "o0 -> c2x0" not in supernet and "o0 -> c1x0" in supernet


def test_faithful_genotype_round_trip_and_default_files_unchanged(tmp_path):
    space = load_space(DLSR, scale=4)
    g = random_genotype(space, 3)
    assert all(0 not in c.inputs for c in g.cells[1:])
    path = g.save(tmp_path / "x4.json")
    text = path.read_text()
    for key in ('"op_bias": false', '"combine_lrelu": true', '"rgb_range": 255.0', '"mean_shift": false'):
        assert key in text
    back = load_genotype(path)
    assert back == g and back.to_json() == g.to_json()
    for committed in sorted((REPO / "derived").glob("x*.json")):  # today's genotypes: no new keys, same bytes
        geno = load_genotype(committed)
        assert (geno.op_bias, geno.combine_lrelu, geno.rgb_range, geno.mean_shift) == (True, False, 1.0, True)
        assert geno.to_json() + "\n" == committed.read_text()


@pytest.mark.parametrize("edit, field", [({"op_bias": "no"}, "op_bias"), ({"rgb_range": 0}, "rgb_range"),
                                         ({"rgb_range": True}, "rgb_range"), ({"combine_lrelu": 1}, "combine_lrelu")])
def test_backbone_keys_are_validated(edit, field):
    data = random_genotype(tiny(), 0).to_dict()
    data.update(edit)
    with pytest.raises(ConfigError, match=field):
        Genotype.from_dict(data)


# -- the options one by one (each alone on a small default space) ----------------------------------
def test_option_shared_alpha():
    net = SuperNet(tiny(shared_alpha=True))
    randomise_arch(net)
    assert net.alpha.shape == (1, 2, 4)
    g = derive(net, net.space)
    assert all(c.ops == g.cells[0].ops for c in g.cells)


def test_option_stem_input():
    space = tiny(stem_input=False)
    net = SuperNet(space)
    assert [b.numel() for b in net.beta_inputs] == [2, 3]  # cells 3 and 4; cell 2 reads cell 1
    randomise_arch(net)
    probs = net.arch_probs()
    assert probs.inputs[1].tolist() == [0.0, 1.0]
    assert all(p[0].item() == 0.0 for p in probs.inputs[1:])
    torch.testing.assert_close(probs.inputs[3].sum(), torch.tensor(1.0))
    g = derive(net, space)
    assert g.cells[1].inputs == [1] and all(0 not in c.inputs for c in g.cells[1:])
    outs = []
    net.cells[0].register_forward_hook(lambda m, args, out: outs.append(out))
    seen = first_input(net.cells[1])
    net(torch.rand(1, 3, 9, 11))
    assert torch.equal(seen["x"], outs[0])  # cell 2 reads cell 1, not the stem
    rng = random.Random(0)
    assert all(0 not in random_genotype(space, rng).cells[i].inputs for _ in range(20) for i in (1, 2, 3))
    sr = net(torch.rand(2, 3, 9, 11))
    sr.abs().mean().backward()
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in net.beta_inputs)


@pytest.mark.parametrize("channels_last", [False, True])
def test_option_input_merge_concat(channels_last):
    space = tiny(input_merge="concat")
    torch.manual_seed(0)
    fused = SuperNet(space, fused=True, channels_last=channels_last)
    plain = SuperNet(space, fused=False, channels_last=channels_last)
    plain.load_state_dict(fused.state_dict())
    randomise_arch(fused)
    plain.load_state_dict(fused.state_dict())
    c = space.channels
    assert {k: m.in_channels for k, m in fused.combine.items()} == {"cell2": 2 * c, "cell3": 3 * c, "cell4": 4 * c}
    extra = sum((i * c) * c + c for i in (2, 3, 4))
    assert numel(fused.weight_parameters()) == numel(SuperNet(tiny()).weight_parameters()) + extra
    x = torch.rand(2, 3, 9, 11)
    a, b = fused(x), plain(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    a.square().mean().backward()
    b.square().mean().backward()
    for p, q in zip(fused.arch_parameters(), plain.arch_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-6)
    # the merge by hand: cell 2 reads lrelu(1×1(concat(β0·stem, β1·cell 1)))
    with torch.no_grad():
        probs = plain.arch_probs()
        stem = plain.stem(plain.sub_mean(x))
        out1 = plain.cells[0](stem, probs.alpha[0])
        p = probs.inputs[1]
        want = F.leaky_relu(plain.combine["cell2"](torch.cat([p[0] * stem, p[1] * out1], 1)), 0.05)
        seen = first_input(plain.cells[1])
        plain(x)
        torch.testing.assert_close(seen["x"], want)
    # the derived net merges its kept inputs the same way, and counts them
    g = derive(fused, space)
    assert g.combine_lrelu
    d = DerivedNet(g)
    assert set(d.combine) == {f"cell{i}" for i in d.live if len(g.cells[i - 1].inputs) > 1}
    assert cost.count(g, (18, 22)).macs == cost.fvcore_macs(d, (9, 11)) + cost.count(g, (18, 22)).extras
    plain_merge = DerivedNet(Genotype(**{**g.__dict__, "combine_lrelu": False}))
    plain_merge.load_state_dict(d.state_dict())
    assert not torch.allclose(d(x), plain_merge(x))  # the LeakyReLU is there


def test_option_search_fusion():
    with pytest.raises(ConfigError, match="fusion_cells"):
        tiny(search_fusion=False).validate()
    space = tiny(search_fusion=False, fusion_cells=4)
    net = SuperNet(space)
    assert net.beta_fusion is None and len(net.arch_parameters()) == 1 + 3
    torch.testing.assert_close(net.arch_probs().fusion, torch.full((4,), 0.25))
    randomise_arch(net)
    g = derive(net, space)
    assert g.fusion == [1, 2, 3, 4] and g.live_cells() == [1, 2, 3, 4]
    # unweighted: the fusion conv sees the plain concat of the cells' outputs
    x = torch.rand(1, 3, 9, 11)
    net.fused = False
    seen, outs = first_input(net.fusion), []
    for i in range(4):
        net.cells[i].register_forward_hook(lambda m, args, out: outs.append(out))
    net(x)
    torch.testing.assert_close(seen["x"], torch.cat(outs, 1))
    # every cell is live for sure, whatever β says: the expected cost is the argmax net's at one-hot α
    with torch.no_grad():
        net.alpha.mul_(1e4)
        assert float(cost.expected_macs(space, net.arch_probs())) == pytest.approx(cost.count(g).macs, rel=1e-9)


@pytest.mark.parametrize("name", list(OPS))
def test_option_op_bias_ops(name):
    op = build_op(name, 8, 8, bias=False)
    convs = [m for m in op.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    assert numel(op.parameters()) == op_params(name, 8, 8, bias=False) < op_params(name, 8, 8)
    assert cost.fvcore_macs(op, (7, 9), in_channels=8) == OPS[name].macs(8, 8, 7, 9)


def test_option_op_bias_supernet_and_derived():
    space = tiny(op_bias=False)
    torch.manual_seed(0)
    net = SuperNet(space)
    ops_per_cell = sum(numel(m.parameters()) for m in net.cells[0].ops)
    for cell in net.cells:
        for mixed in cell.ops:
            assert isinstance(mixed, MixedOp)
            assert all(m.bias is None for m in mixed.ops.modules() if isinstance(m, torch.nn.Conv2d))
        assert cell.distill[0].bias is not None  # the fixed convs keep theirs
    biases = space.steps * sum(op_params(o, 8, 8) - op_params(o, 8, 8, bias=False) for o in space.ops)
    assert ops_per_cell == sum(numel(m.parameters()) for m in SuperNet(tiny()).cells[0].ops) - biases
    randomise_arch(net)
    plain = SuperNet(space, fused=False)
    plain.load_state_dict(net.state_dict())
    x = torch.rand(2, 3, 9, 11)
    torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-5)
    g = derive(net, space)
    assert not g.op_bias
    d = DerivedNet(g)
    assert cost.count(g).params == numel(d.parameters())


def test_option_rgb_range_and_mean_shift():
    x = torch.rand(2, 3, 5, 6)
    mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(InputNorm()(x), x - mean)
    torch.testing.assert_close(InputNorm(255, False)(x), 255 * x)
    torch.testing.assert_close(InputNorm(255, True)(x), 255 * (x - mean))
    feat = torch.rand(2, 8, 5, 6)
    for kind in ("pixelshuffle", "pixelshuffle_bicubic"):
        ups = {(r, m): Upsampler(8, 2, kind, m, r) for r in (1.0, 255.0) for m in (True, False)}
        base = ups[(1.0, True)]
        for u in ups.values():
            u.load_state_dict(base.state_dict())
        raw = base.shuffle(base.conv(feat))
        skip = base.shuffle(base.skip(x)) if base.skip is not None else 0
        shift = mean if kind == "pixelshuffle" else 0
        torch.testing.assert_close(ups[(1.0, True)](feat, x), raw + skip + shift)
        torch.testing.assert_close(ups[(1.0, False)](feat, x), raw + skip)
        torch.testing.assert_close(ups[(255.0, False)](feat, x), raw / 255 + skip)
        torch.testing.assert_close(ups[(255.0, True)](feat, x), raw / 255 + skip + shift)
    # a derived net of [0, 255] units takes and returns [0, 1] images: the 3×3 stem sees 255·x
    g = random_genotype(tiny(rgb_range=255.0, mean_shift=False, upsampler="pixelshuffle"), 0)
    d = DerivedNet(g)
    seen = first_input(d.stem)
    d(x)
    torch.testing.assert_close(seen["x"], 255 * x)
    assert cost.count(g, (10, 12)).macs == cost.fvcore_macs(d, (5, 6)) + cost.count(g, (10, 12)).extras
    with pytest.raises(ConfigError, match="rgb_range"):
        tiny(rgb_range=0.0)


def _batches(scale: int = 2):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(2, 3, 9, 9, generator=g), torch.rand(2, 3, 9 * scale, 9 * scale, generator=g)) for _ in range(2)]


def test_option_arch_loss_train_plus_val():
    torch.manual_seed(0)
    net = SuperNet(tiny())
    randomise_arch(net)
    train, val = _batches()
    grads = {}
    for loss in ("val", "train+val"):
        arch = Architect(net, cost_fn=None, budget=None, arch_loss=loss)
        grads[loss], data, _, _, _ = arch.hypergradient(train, val)
        want = F.l1_loss(net(val[0]), val[1]) + (F.l1_loss(net(train[0]), train[1]) if loss != "val" else 0)
        expected = torch.autograd.grad(want, net.arch_parameters())
        assert float(data) == pytest.approx(float(want.detach()), rel=1e-6)
        for g, e in zip(grads[loss], expected):
            torch.testing.assert_close(g, e)
    assert any(not torch.allclose(a, b) for a, b in zip(grads["val"], grads["train+val"]))
    with pytest.raises(ValueError, match="arch_loss"):
        Architect(net, cost_fn=None, budget=None, order=2, arch_loss="train+val")
    with pytest.raises(ConfigError, match="arch_loss"):
        SearchOptions(arch_loss="train").validate()
    with pytest.raises(ConfigError, match="arch_loss"):
        SearchOptions(arch_loss="train+val", order=2).validate()


# -- against the reference code itself (needs a checkout: HDNAS_DLSR_REFERENCE) --------------------
def test_same_function_as_the_reference_code():
    ref = os.environ.get("HDNAS_DLSR_REFERENCE")
    if not ref:
        pytest.skip("set HDNAS_DLSR_REFERENCE to a checkout of DawnHH/DLSR-PyTorch to compare with the reference")
    from hdnas.bench.common import run_worker

    out = run_worker("hdnas.bench.dlsr_reference:check_same_function", {"reference": ref}, 300)
    assert "error" not in out, out.get("error")
    assert out["reference_weight_params"] == out["hdnas_weight_params"] == 4_212_924
    assert out["reference_arch_params"] == out["hdnas_arch_params"] == 41
    assert out["max_abs_diff_plain"] < 1e-5 and out["max_abs_diff_fused"] < 1e-5


# -- the benchmark's side-by-side comparison: skipped without a checkout, minimal edits with one ----
def test_reference_comparison_is_skipped_without_a_checkout(tmp_path):
    from hdnas.bench.search import SearchBenchConfig
    from hdnas.bench.suites import run_suites

    lines = []
    cfg = SearchBenchConfig(matrix=False)
    results = run_suites(["search"], tmp_path / "b.json", search_cfg=cfg, log=lines.append)
    assert results["suites"]["search"]["records"] == []
    assert any("--reference DIR" in line and "skipped" in line for line in lines)


def test_reference_checkout_is_checked_and_edited_only_for_the_cpu(tmp_path):
    from hdnas.bench.common import BenchmarkError, run_worker
    from hdnas.bench.dlsr_reference import REFERENCE_FILES, _cpu_edits, compare_with_reference

    with pytest.raises(BenchmarkError, match="rfdn_block_6_beta_search.py not found"):
        compare_with_reference(str(tmp_path), 2, 8, rounds=1, warmup=0, repeats=1, log=lambda m: None)
    text, edits = _cpu_edits("import torch\nimport ipdb\nx = torch.zeros(2).cuda()\ny = x.cuda() + 1\n")
    assert text == "import torch\nx = torch.zeros(2)\ny = x + 1\n"
    assert edits == ["2 × '.cuda()' removed", "unused 'import ipdb' dropped"]
    for rel in REFERENCE_FILES:  # a stand-in checkout: the loader imports the edited copy, not the original
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("import ipdb\nimport torch\nX = torch.ones(3).cuda()\n")
    out = run_worker("hdnas.bench.dlsr_reference:check_same_function", {"reference": str(tmp_path)}, 120)
    assert "has no attribute 'RFDN_beta1'" in out["error"]  # the stand-in imported, edited, and lacks the net
