"""AdaDSR depth adapters: gating semantics, exact tiles execution, exact cost, depth loss, training."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from hdnas.core.adaptive import AdaptiveConfig, AdaptiveNet, active_tiles, cost_at_depth
from hdnas.train.adaptive import depth_loss, sample_depths
from hdnas.deploy.depth import depth_sweep
from hdnas.core.config import ConfigError, from_dict
from hdnas.core.cost import count
from hdnas.zoo.sampler import random_genotype
from hdnas.core.network import DerivedNet
from hdnas.core.ops import conv_macs
from hdnas.core.space import SearchSpace
from hdnas.core.weights import load_model

from test_train import _tool as load_tool, make_trainer, tiny_cfg, tiny_sets

ALL_FAMILIES = ["conv_1x1", "conv_3x3", "conv_7x7", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


def genotype(seed: int = 0, scale: int = 2, cells: int = 3, steps: int = 3):
    space = SearchSpace(scale=scale, channels=8, cells=cells, steps=steps, cell_inputs=2, fusion_cells=2, esa=True,
                        ops=ALL_FAMILIES)
    return random_genotype(space, rng=seed)


def adaptive_net(seed: int = 0, groups: str = "network", tile: int = 8, **kw) -> AdaptiveNet:
    torch.manual_seed(seed)
    net = AdaptiveNet(genotype(seed, **kw), AdaptiveConfig(enabled=True, groups=groups, tile=tile)).eval()
    for m in net.modules():  # non-zero biases: a halo or padding error cannot hide behind zeros
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            nn.init.normal_(m.bias, std=0.2)
    return net


def sparse_depth(net: AdaptiveNet, h: int, w: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Depth maps with deep islands, fractional edges and a shallow sea: some tiles run, most do not."""
    g = torch.Generator().manual_seed(seed)
    d = torch.zeros(batch, net.n_groups, h, w)
    top = net.units_per_group
    for b in range(batch):
        for _ in range(3):
            y, x = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
            d[b, :, y:y + 5, x:x + 7] = top * torch.rand(net.n_groups, 1, 1, generator=g) + 0.3
        d[b, :, h - 1, w - 1] = top  # a corner: border tiles with halos outside the image
    return d


@pytest.mark.parametrize("groups", ["network", "cell"])
def test_full_depth_equals_the_plain_derived_net(groups):
    net = adaptive_net(groups=groups)
    plain = DerivedNet(net.genotype).eval()
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all(k.startswith("adapter.") for k in unexpected)
    lr = torch.rand(2, 3, 19, 23)
    full = torch.full((2, net.n_groups, 19, 23), float(net.units_per_group))
    with torch.no_grad():
        want = plain(lr)
        for mode in ("dense", "tiles"):
            got, _ = net.forward_depth(lr, depth_map=full, execution=mode)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
            got, _ = net.forward_depth(lr, depth_map=full + 3.0, execution=mode)  # D beyond the units: same
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_zero_depth_makes_every_gated_step_the_identity():
    """D = 0: each refinement step returns its input, so every distillation 1×1 of a cell sees the
    cell's input; the tiles execution runs no refinement op at all."""
    net = adaptive_net(groups="cell")
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, cell in net.cells.items():
        for k, conv in enumerate(cell.distill):
            hooks.append(conv.register_forward_hook(lambda m, a, o, n=name: seen.setdefault(n, []).append(a[0])))
    op_calls = []
    for cell in net.cells.values():
        for op in cell.ops:
            hooks.append(op.register_forward_hook(lambda *a: op_calls.append(1)))
    lr = torch.rand(1, 3, 17, 21)
    zero = torch.zeros(1, net.n_groups, 17, 21)
    with torch.no_grad():
        dense, _ = net.forward_depth(lr, depth_map=zero, execution="dense")
        for xs in seen.values():
            for x in xs[1:]:
                assert torch.equal(x, xs[0])
        dense_calls = len(op_calls)
        op_calls.clear()
        tiles, _ = net.forward_depth(lr, depth_map=zero, execution="tiles")
        # d = 0 through the adapter gives D = 0 too
        by_d, depth = net.forward_depth(lr, d=0.0, execution="tiles")
    for h in hooks:
        h.remove()
    assert dense_calls > 0 and not op_calls
    assert torch.equal(depth, torch.zeros_like(depth))
    torch.testing.assert_close(tiles, dense, rtol=0, atol=1e-6)
    torch.testing.assert_close(by_d, dense, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed,groups,tile", [(0, "network", 8), (1, "cell", 8), (2, "network", 5), (3, "cell", 16)])
def test_tiles_execution_equals_dense_gating(seed, groups, tile):
    net = adaptive_net(seed, groups=groups, tile=tile)
    lr = torch.rand(2, 3, 21, 26)
    depth = sparse_depth(net, 21, 26, batch=2, seed=seed)
    with torch.no_grad():
        dense, _ = net.forward_depth(lr, depth_map=depth, execution="dense")
        tiles, _ = net.forward_depth(lr, depth_map=depth, execution="tiles")
        net_cl = net.to(memory_format=torch.channels_last)
        tiles_cl, _ = net_cl.forward_depth(lr.contiguous(memory_format=torch.channels_last), depth_map=depth,
                                           execution="tiles")
    torch.testing.assert_close(tiles, dense, rtol=0, atol=1e-5)
    torch.testing.assert_close(tiles_cl, dense, rtol=0, atol=1e-5)


def test_active_tiles_marks_blocks_with_any_open_gate():
    gate = torch.zeros(1, 1, 10, 13)
    gate[0, 0, 9, 12] = 0.01
    gate[0, 0, 0, 4] = 1.0
    act = active_tiles(gate, 4)
    assert act.shape == (1, 3, 4)
    assert act.sum() == 2 and act[0, 2, 3] and act[0, 0, 1]


def brute_force_cost(net: AdaptiveNet, depth: torch.Tensor, lr: torch.Tensor) -> int:
    """Conv Multi-Adds recorded by hooks while the tiles execution runs, plus the plain net's
    non-conv counted terms (ESA gates and bilinear, taken from count() minus its hooked convs), plus
    one multiply per gated element computed, found by walking the tiles in Python."""
    def hooked(model, run) -> int:
        total = [0]

        def hook(m, a, o):
            total[0] += conv_macs(m.in_channels, m.out_channels, m.kernel_size[0], o.shape[-2], o.shape[-1],
                                  m.groups) * o.shape[0]

        hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            run()
        for h in hs:
            h.remove()
        return total[0]

    g = net.genotype
    h, w = lr.shape[-2:]
    plain = DerivedNet(g).eval()
    plain_convs = hooked(plain, lambda: plain(lr))
    non_conv = count(g, hr_size=(h * g.scale, w * g.scale)).macs - plain_convs
    convs = hooked(net, lambda: net.forward_depth(lr, depth_map=depth, execution="tiles"))
    convs += net.adapter.macs(h, w)  # forward_depth with a given map skips the adapter; the cost counts it
    t, c = net.cfg.tile, g.channels
    gates = 0
    for pos, i in enumerate(net.live):
        for k in range(g.steps):
            gi, u = net.unit(pos, k)
            n = 0
            for y in range(0, h, t):
                for x in range(0, w, t):
                    if bool((depth[0, gi, y:y + t, x:x + t] > u).any()):
                        n += 1
            r = net.radii[pos][k]
            if n and n * (t + 2 * r) ** 2 < h * w:
                gates += n * c * t * t
            elif n:
                gates += c * h * w
    return convs + non_conv + gates


@pytest.mark.parametrize("seed,groups", [(0, "network"), (1, "cell"), (4, "network")])
def test_cost_at_depth_matches_a_brute_force_count(seed, groups):
    net = adaptive_net(seed, groups=groups, tile=6)
    lr = torch.rand(1, 3, 23, 29)
    for depth in (sparse_depth(net, 23, 29, seed=seed), torch.zeros(1, net.n_groups, 23, 29),
                  torch.full((1, net.n_groups, 23, 29), float(net.units_per_group))):
        c = cost_at_depth(net, depth)
        assert c.macs == brute_force_cost(net, depth, lr)
        assert c.plain == count(net.genotype, hr_size=(23 * 2, 29 * 2)).macs
    zero = cost_at_depth(net, torch.zeros(1, net.n_groups, 23, 29))
    assert zero.units == [0] * len(zero.units) and zero.macs == zero.dense + zero.adapter


def varied_adapter(tile: int, shape: tuple[int, ...]) -> tuple[AdaptiveNet, torch.Tensor]:
    """A net whose adapter gives spatially varied depth maps, and the stem features of a random input."""
    net = adaptive_net(0, tile=tile)
    torch.nn.init.normal_(net.adapter.head.weight, std=0.5)
    with torch.no_grad():
        return net, net.stem(net.sub_mean(torch.rand(*shape)))


def test_cost_falls_with_depth_on_a_learned_map():
    net, stem = varied_adapter(4, (1, 3, 24, 24))
    with torch.no_grad():
        costs = [cost_at_depth(net, net.adapter(stem, torch.tensor([d]))).macs
                 for d in (0.0, 2.0, 4.0, 6.0, 9.0)]
    assert costs == sorted(costs) and costs[0] < costs[-1]


def test_depth_loss_is_a_hinge_on_mean_depth():
    depth = torch.full((2, 1, 4, 4), 3.0, requires_grad=True)
    assert float(depth_loss(depth, torch.tensor([3.0, 5.0])).detach()) == 0.0
    loss = depth_loss(depth, torch.tensor([1.0, 5.0]))
    assert float(loss.detach()) == pytest.approx(1.0)  # (3 - 1) for image 0, 0 for image 1, averaged
    loss.backward()
    assert depth.grad[0].gt(0).all() and depth.grad[1].eq(0).all()


def test_adapter_takes_d_multiplicatively_and_starts_flat():
    torch.manual_seed(0)
    net = AdaptiveNet(genotype(0), AdaptiveConfig(enabled=True))
    lr = torch.rand(3, 3, 12, 12)
    sr, depth = net.forward_depth(lr, torch.tensor([0.0, 2.5, 7.0]))
    assert torch.allclose(depth[0], torch.zeros_like(depth[0]))
    assert torch.allclose(depth[1], torch.full_like(depth[1], 2.5))  # zero-initialised head: D = d
    assert torch.allclose(depth[2], torch.full_like(depth[2], 7.0))
    (sr.mean() + depth.mean()).backward()
    assert net.adapter.head.weight.grad is not None and net.adapter.head.weight.grad.abs().sum() > 0


def test_sample_depths_is_seeded_and_in_range():
    a = sample_depths(64, 1.0, 4.0, torch.Generator().manual_seed(3))
    b = sample_depths(64, 1.0, 4.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= 1.0 and a.max() <= 4.0 and a.std() > 0.5


@pytest.mark.parametrize("field,value,match", [
    ("groups", "block", "adaptive.groups"), ("depth_range", [3, 1], "adaptive.depth_range"),
    ("tile", 0, "adaptive.tile"), ("layers", 1, "adaptive.layers"), ("weight", -1.0, "adaptive.weight"),
])
def test_bad_adaptive_config_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(AdaptiveConfig, {"enabled": True, field: value})


def test_adaptive_retraining_round_trip(tmp_path):
    cfg = tiny_cfg(**{"adaptive.enabled": True, "adaptive.tile": 4, "loss.dual.enabled": False})
    tr = make_trainer(tmp_path, cfg)
    res = tr.run()
    assert math.isfinite(res.val_psnr) and "depth" in tr.history[-1] and "depth_mean" in tr.history[-1]
    net, _ = load_model(tmp_path / "last.pt")
    assert isinstance(net, AdaptiveNet) and net.cfg.tile == 4
    torch.testing.assert_close(net.state_dict()["adapter.head.weight"], tr.model.state_dict()["adapter.head.weight"])
    # exact resume holds with the per-step depth samples
    a = make_trainer(tmp_path / "a", cfg)
    a.run()
    b = make_trainer(tmp_path / "b", cfg)
    b.run(max_steps=3)
    b2 = make_trainer(tmp_path / "b", cfg)
    assert b2.resume()
    b2.run()
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b2.model.state_dict()[k]), k


def test_depth_sweep_and_tool_write_json_and_png(tmp_path):
    cfg = tiny_cfg(**{"adaptive.enabled": True, "adaptive.tile": 4, "loss.dual.enabled": False})
    make_trainer(tmp_path / "ada", cfg).run()
    make_trainer(tmp_path / "plain", tiny_cfg(**{"loss.dual.enabled": False})).run()
    net, _ = load_model(tmp_path / "ada" / "last.pt")
    base, _ = load_model(tmp_path / "plain" / "last.pt")
    _, val = tiny_sets()
    sweep = depth_sweep(net, {"val": val}, [0.0, 2.0, 4.0], baseline=base, repeats=1, warmup=0)
    macs = [r["sets"]["val"]["macs_per_image"] for r in sweep["depths"]]
    assert macs == sorted(macs) and all(m > 0 for m in macs)
    assert all(r["sets"]["val"]["latency_ms_per_image"] > 0 for r in sweep["depths"])
    assert sweep["baseline"]["sets"]["val"]["macs_fraction"] == 1.0
    # the tool, on image folders
    from PIL import Image

    folder = tmp_path / "Set"
    folder.mkdir()
    for im in val:
        Image.fromarray(im.hr.permute(1, 2, 0).numpy()).save(folder / f"{im.name}.png")
    tool = load_tool("evaluate")
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    assert tool.main(["--checkpoint", str(tmp_path / "ada" / "last.pt"), "--data", str(folder), "--depth", "0", "4",
                      "--compare", str(tmp_path / "plain" / "last.pt"), "--json", str(out), "--plot", str(png),
                      "--repeats", "1", "--device", "cpu"]) == 0
    data = json.loads(out.read_text())
    assert [r["depth"] for r in data["depths"]] == [0.0, 4.0] and data["baseline"] is not None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tool.main(["--checkpoint", str(tmp_path / "plain" / "last.pt"), "--data", str(folder), "--depth", "1",
                      "--device", "cpu"]) == 2


def test_onnx_export_at_a_depth_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from hdnas.deploy.export import ExportError, export_model

    net = adaptive_net(2, groups="cell")
    torch.nn.init.normal_(net.adapter.head.weight, std=0.5)
    report = export_model(net, onnx=tmp_path / "a.onnx", sample_size=(24, 24), depth=1.5)
    assert report.onnx_max_diff is not None and report.onnx_max_diff < 1e-4
    import onnxruntime as ort

    x = torch.rand(1, 3, 26, 30)
    sess = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"lr": x.numpy()})[0])
    with torch.no_grad():
        deep, shallow = net(x, 3.0), net(x, 1.5)
    torch.testing.assert_close(got, shallow, rtol=0, atol=1e-4)
    assert (got - deep).abs().max() > 1e-3  # the depth is baked into the graph
    with pytest.raises(ExportError, match="adapter"):
        export_model(DerivedNet(net.genotype), onnx=tmp_path / "b.onnx", sample_size=(24, 24), depth=1.0)


def test_pooled_depth_map_is_constant_per_tile_and_keeps_the_mean():
    net, stem = varied_adapter(5, (2, 3, 17, 23))
    with torch.no_grad():
        pooled = net.depth_map(stem, 3.0)
        net.cfg.pool = False
        raw = net.depth_map(stem, 3.0)
    assert pooled.shape == raw.shape and raw.std() > 0.1
    for y in range(0, 17, 5):
        for x in range(0, 23, 5):
            block, want = pooled[..., y:y + 5, x:x + 5], raw[..., y:y + 5, x:x + 5].mean(dim=(2, 3), keepdim=True)
            torch.testing.assert_close(block, want.expand_as(block), rtol=0, atol=1e-5)
    # tile-constant gates: the blocks that run hold exactly the pixels whose gate is open, no others
    thr = float(pooled[:1, :1].median())
    gate = (pooled[:1, :1] - thr).clamp(0, 1)
    act = active_tiles(gate, 5)[0]
    valid = torch.ones(1, 1, 17, 23)
    per_block = torch.nn.functional.avg_pool2d(valid, 5, ceil_mode=True, divisor_override=1)[0, 0]
    assert 0 < int(act.sum()) < act.numel()
    assert int(per_block[act].sum()) == int((gate > 0).sum())
    net.cfg.pool = False
    raw_gate = (raw[:1, :1] - thr).clamp(0, 1)
    assert int(per_block[active_tiles(raw_gate, 5)[0]].sum()) > int((raw_gate > 0).sum())  # per-pixel maps waste
