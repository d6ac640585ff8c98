"""AdaDSR on a trained backbone: the softmax allocation, init/freeze from a checkpoint, and the
depth map's statistics and picture."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from hdnas.core.adaptive import AdaptiveConfig, AdaptiveNet, block_areas, softmax_allocation
from hdnas.core.config import ConfigError, from_dict
from hdnas.core.weights import load_model
from hdnas.deploy.depth import block_depths, block_detail, depth_statistics, depth_sweep
from hdnas.train.adaptive import block_gain, gain_loss
from hdnas.train.trainer import TrainError

from test_adaptive import genotype
from test_train import _tool as load_tool, make_trainer, tiny_cfg, tiny_genotype, tiny_sets


def _water_fill(z: torch.Tensor, d: float, tile: int, top: float) -> torch.Tensor:
    """Reference: clip the blocks over ``top`` one round at a time and share the rest again, until none is over."""
    h, w = z.shape[-2:]
    zb = F.avg_pool2d(z[None, None], tile, ceil_mode=True).reshape(-1).double()
    a = block_areas(h, w, tile).reshape(-1).double()
    e = torch.exp(zb - zb.max())
    clipped = torch.zeros_like(e, dtype=torch.bool)
    budget = min(d, top) * h * w
    while True:
        share = (budget - top * a[clipped].sum()) * e / (a * e)[~clipped].sum()
        depth = torch.where(clipped, torch.full_like(e, top), share)
        new = (depth > top * (1 + 1e-9)) & ~clipped
        if not new.any():
            return depth
        clipped |= new


@pytest.mark.parametrize("seed", range(6))
def test_softmax_allocation_keeps_the_mean_at_d_and_clips_at_the_top(seed):
    g = torch.Generator().manual_seed(seed)
    h, w = int(torch.randint(9, 41, (1,), generator=g)), int(torch.randint(9, 41, (1,), generator=g))
    tile, top = 1 + seed, 6.0
    nh, nw = -(-h // tile), -(-w // tile)
    z = 3.0 * torch.randn(3, 2, nh, nw, generator=g)  # wide block logits: some blocks want more than the top
    z = z.repeat_interleave(tile, 2).repeat_interleave(tile, 3)[..., :h, :w] + torch.randn(3, 2, h, w, generator=g)
    d = torch.tensor([0.0, 2.3, 9.0])  # the last asks for more than every unit: all at the top
    depth = softmax_allocation(z, d, tile, top)
    assert depth.shape == z.shape and depth.min() >= 0 and depth.max() <= top + 1e-5
    mean = depth.mean(dim=(2, 3))  # pixel mean: what the budget is, partial border blocks included
    torch.testing.assert_close(mean, torch.tensor([[0.0] * 2, [2.3] * 2, [top] * 2]), rtol=0, atol=1e-5)
    blocks = F.avg_pool2d(depth, tile, ceil_mode=True)
    torch.testing.assert_close(depth, blocks.repeat_interleave(tile, 2).repeat_interleave(tile, 3)[..., :h, :w])
    assert blocks[1].std() > 0.1 and (blocks[1] >= top - 1e-5).any()  # non-uniform, and clipped somewhere
    for gi in range(2):
        want = _water_fill(z[1, gi], 2.3, tile, top)
        torch.testing.assert_close(blocks[1, gi].reshape(-1).double(), want, rtol=1e-5, atol=1e-5)


def test_softmax_allocation_is_flat_for_flat_logits_and_lets_gradients_reach_z():
    z = torch.zeros(2, 1, 20, 28, requires_grad=True)
    depth = softmax_allocation(z, torch.tensor([3.0, 5.5]), 8, 9.0)
    torch.testing.assert_close(depth[0], torch.full_like(depth[0], 3.0))
    torch.testing.assert_close(depth[1], torch.full_like(depth[1], 5.5))
    target = torch.rand(2, 1, 20, 28, generator=torch.Generator().manual_seed(0))
    (depth * target).sum().backward()  # a loss that prefers depth where target is large
    assert z.grad is not None and z.grad.abs().sum() > 0
    # the budget is fixed: moving logits together changes nothing, so the gradient sums to zero per image
    assert (z.grad.sum(dim=(1, 2, 3)).abs() <= 1e-5 * z.grad.abs().sum(dim=(1, 2, 3))).all()


def test_adaptive_net_with_softmax_allocation_spends_exactly_d():
    torch.manual_seed(0)
    net = AdaptiveNet(genotype(0), AdaptiveConfig(enabled=True, allocation="softmax", tile=4))
    torch.nn.init.normal_(net.adapter.head.weight, std=1.0)
    lr = torch.rand(2, 3, 18, 22)
    sr, depth = net.forward_depth(lr, torch.tensor([1.5, 4.0]))
    torch.testing.assert_close(depth.mean(dim=(1, 2, 3)), torch.tensor([1.5, 4.0]), rtol=0, atol=1e-5)
    assert depth[1].std() > 0.05
    (sr.mean() + depth.mean()).backward()
    assert net.adapter.head.weight.grad.abs().sum() > 0
    with torch.no_grad():  # the tiles execution honours the allocated map as it does the scaled one
        dense, _ = net.eval().forward_depth(lr, 2.0, execution="dense")
        tiles, _ = net.forward_depth(lr, 2.0, execution="tiles")
    torch.testing.assert_close(tiles, dense, rtol=0, atol=1e-5)


def test_onnx_export_of_the_softmax_allocation_holds_at_other_sizes(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from hdnas.deploy.export import export_model

    torch.manual_seed(0)
    net = AdaptiveNet(genotype(2), AdaptiveConfig(enabled=True, allocation="softmax", tile=4)).eval()
    torch.nn.init.normal_(net.adapter.head.weight, std=1.0)
    report = export_model(net, onnx=tmp_path / "a.onnx", sample_size=(24, 24), depth=1.5)
    assert report.onnx_max_diff is not None and report.onnx_max_diff < 1e-4
    x = torch.rand(1, 3, 26, 30)  # another size: block count, partial blocks and budget read from the input
    sess = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"lr": x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, net(x, 1.5), rtol=0, atol=1e-4)


@pytest.mark.parametrize("field,value,match", [
    ("allocation", "uniform", "adaptive.allocation"), ("freeze_backbone", True, "adaptive.init"),
    ("gain_weight", 0.5, "adaptive.gain_weight"), ("gain_weight", -1.0, "adaptive.gain_weight"),
])
def test_bad_allocation_config_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(AdaptiveConfig, {"enabled": True, field: value})


# ----------------------------------------------------------------------------- statistics of the map
def test_depth_statistics_on_constructed_maps():
    detail = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    deep_where_detailed = (1.0 + 0.5 * detail)  # block depths 1 … 3.5, linear in detail
    dmap = deep_where_detailed.repeat_interleave(4, 0).repeat_interleave(4, 1)[None, None][..., :7, :11]
    blocks = block_depths(dmap, 4)
    torch.testing.assert_close(blocks, deep_where_detailed)  # partial border blocks keep their value
    std, r = depth_statistics(blocks, detail)
    assert std == pytest.approx(float(deep_where_detailed.std(unbiased=False)))
    assert r == pytest.approx(1.0)
    assert depth_statistics(4.0 - blocks, detail)[1] == pytest.approx(-1.0)
    std, r = depth_statistics(torch.full((2, 3), 2.5), detail)  # uniform: no spread, nothing to correlate
    assert std == 0.0 and r is None
    # two groups (groups=cell): the block depth is their mean
    two = torch.cat([dmap, 3.0 * dmap], dim=1)
    torch.testing.assert_close(block_depths(two, 4), 2.0 * deep_where_detailed)


def test_block_detail_is_large_where_bicubic_fails():
    hr = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    hr[:, :16, 16:] = (torch.arange(16)[None, :] % 2 * 255).to(torch.uint8)  # fine stripes in one block
    lr = F.interpolate(hr[None].float(), scale_factor=0.5, mode="area")[0].round().to(torch.uint8)
    detail = block_detail(lr, hr, 2, 8)
    assert detail.shape == (2, 2)
    assert float(detail[0, 1]) > 10 * float(detail[1, 0]) and float(detail[1, 0]) < 0.01


# ------------------------------------------------------------------------------- a trained backbone
def _plain(tmp_path):
    make_trainer(tmp_path / "plain", tiny_cfg(**{"loss.dual.enabled": False})).run()
    return tmp_path / "plain" / "last.pt"


def test_init_loads_the_backbone_and_freeze_trains_the_adapter_alone(tmp_path):
    plain_path = _plain(tmp_path)
    plain, _ = load_model(plain_path)
    cfg = tiny_cfg(**{"adaptive.enabled": True, "adaptive.tile": 4, "loss.dual.enabled": False,
                      "adaptive.allocation": "softmax", "adaptive.init": str(plain_path),
                      "adaptive.freeze_backbone": True, "data.patch": 12, "adaptive.val_depth": 2.0})
    tr = make_trainer(tmp_path / "ada", cfg)
    start = {k: v.clone() for k, v in tr.model.state_dict().items()}
    for k, v in plain.state_dict().items():
        assert torch.equal(start[k], v), k
    assert all(k.startswith("adapter.") for k in start if k not in plain.state_dict())
    tr.run()
    end = tr.model.state_dict()
    for k, v in plain.state_dict().items():
        assert torch.equal(end[k], v), k  # frozen
    assert not torch.equal(end["adapter.head.weight"], start["adapter.head.weight"])  # the adapter learned
    net, _ = load_model(tmp_path / "ada" / "last.pt")
    assert net.cfg.allocation == "softmax" and net.cfg.init == str(plain_path)
    # without freezing, the backbone starts there and trains on
    cfg = tiny_cfg(**{"adaptive.enabled": True, "adaptive.tile": 4, "loss.dual.enabled": False,
                      "adaptive.init": str(plain_path)})
    tr = make_trainer(tmp_path / "ada2", cfg)
    tr.run()
    assert any(not torch.equal(tr.model.state_dict()[k], v) for k, v in plain.state_dict().items())


def test_init_from_a_wrong_file_names_it(tmp_path):
    plain_path = _plain(tmp_path)
    other = make_trainer(tmp_path / "other", tiny_cfg(**{"loss.dual.enabled": False}), genotype=tiny_genotype(seed=3))
    other.save()
    cases = [(tmp_path / "missing.pt", "not found"), (other.last_path, "differ|channels|cells")]
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(plain_path, weights_only=True)["model"], bare)
    cases.append((bare, "not a retrain checkpoint"))
    for path, why in cases:
        cfg = tiny_cfg(**{"adaptive.enabled": True, "adaptive.init": str(path), "loss.dual.enabled": False})
        with pytest.raises(TrainError, match=f"adaptive.init: .*{path.name}.*({why})"):
            make_trainer(tmp_path / "x", cfg)


def test_sweep_reports_spread_and_correlation_and_the_tool_draws_the_map(tmp_path):
    cfg = tiny_cfg(**{"adaptive.enabled": True, "adaptive.tile": 4, "loss.dual.enabled": False,
                      "adaptive.allocation": "softmax"})
    make_trainer(tmp_path / "ada", cfg).run()
    ckpt = tmp_path / "ada" / "last.pt"
    net, _ = load_model(ckpt)
    torch.nn.init.normal_(net.adapter.head.weight, std=1.0)  # a varied map: the statistics have something to say
    _, val = tiny_sets()
    sweep = depth_sweep(net, {"val": val}, [0.0, 2.0], repeats=1, warmup=0)
    flat, varied = (r["sets"]["val"] for r in sweep["depths"])
    assert flat["depth_std"] == 0.0 and flat["depth_detail_corr"] is None and flat["depth_detail_corr_images"] == 0
    assert varied["depth_std"] > 0 and -1.0 <= varied["depth_detail_corr"] <= 1.0
    assert varied["depth_detail_corr_images"] == len(val)
    from PIL import Image

    folder = tmp_path / "Set"
    folder.mkdir()
    for im in val:
        Image.fromarray(im.hr.permute(1, 2, 0).numpy()).save(folder / f"{im.name}.png")
    tool = load_tool("evaluate")
    out = tmp_path / "res" / "sweep.json"
    name = val[0].name
    assert tool.main(["--checkpoint", str(ckpt), "--data", str(folder), "--depth", "1", "3", "--json", str(out),
                      "--repeats", "1", "--device", "cpu", "--depth-image", name]) == 0
    png = tmp_path / "res" / f"depthmap_{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = json.loads(out.read_text())["depths"][0]["sets"]["Set"]
    assert {"depth_std", "depth_detail_corr", "depth_detail_corr_images"} <= set(rec)
    assert tool.main(["--checkpoint", str(ckpt), "--data", str(folder), "--depth", "1", "--device", "cpu",
                      "--depth-image", "nonesuch", "--depth-png", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------ the gain-tied loss
def test_block_gain_is_the_error_drop_from_depth_zero_to_full_depth():
    torch.manual_seed(0)
    net = AdaptiveNet(genotype(0), AdaptiveConfig(enabled=True, allocation="softmax", tile=4))
    lr, hr = torch.rand(2, 3, 10, 13), torch.rand(2, 3, 20, 26)
    gain = block_gain(net, lr, hr)
    assert gain.shape == (2, 3, 4) and gain.min() >= 0 and not gain.requires_grad
    with torch.no_grad():
        shallow = net.forward_depth(lr, depth_map=torch.zeros(2, 1, 10, 13), execution="dense")[0]
        deep = net.forward_depth(lr, depth_map=torch.full((2, 1, 10, 13), 9.0), execution="dense")[0]
    block = (..., slice(8, 16), slice(0, 8))  # LR block (1, 0) at ×2
    want = ((shallow - hr).abs()[block].mean(dim=(1, 2, 3)) - (deep - hr).abs()[block].mean(dim=(1, 2, 3))).clamp_min(0)
    torch.testing.assert_close(gain[:, 1, 0], want)


def test_gain_loss_pulls_depth_toward_the_blocks_that_gain():
    torch.manual_seed(0)
    net = AdaptiveNet(genotype(0), AdaptiveConfig(enabled=True, allocation="softmax", tile=4, gain_weight=1.0))
    lr = torch.rand(1, 3, 8, 8)
    gain = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])  # only the last block earns anything
    before = gain_loss(net, lr, gain).detach()
    assert float(before) == pytest.approx(float(torch.log(torch.tensor(4.0))), abs=1e-5)  # flat q, one-hot p
    opt = torch.optim.SGD(net.adapter.parameters(), lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        gain_loss(net, lr, gain).backward()
        opt.step()
    with torch.no_grad():
        depth = net.forward_depth(lr, 2.0)[1][0, 0]
    assert float(gain_loss(net, lr, gain).detach()) < float(before)
    assert float(depth[4:, 4:].mean()) > 2.0 > float(depth[:4, :4].mean())
    assert float(gain_loss(net, lr, torch.zeros(1, 2, 2)).detach()) == 0.0  # nothing gains: nothing to learn


def test_trainer_runs_with_the_gain_loss(tmp_path):
    cfg = tiny_cfg(**{"adaptive.enabled": True, "adaptive.tile": 4, "loss.dual.enabled": False,
                      "adaptive.allocation": "softmax", "adaptive.gain_weight": 0.5, "data.patch": 12})
    tr = make_trainer(tmp_path, cfg)
    tr.run()
    assert "depth_gain" in tr.history[-1] and tr.history[-1]["depth_gain"] >= 0
