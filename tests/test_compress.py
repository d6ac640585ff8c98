"""Compression (DRC, its baselines, iterative pruning): expected cost, gradients to α, masks = surgery,
selection, fvcore-checked pruned cost, exact resume of the channel search, the tool end to end and its
errors, iterative pruning's stop at the tolerance."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_tool
from hdnas.compress.drc import (ChannelSearch, ChannelSearchNet, candidate_widths, saliency, select_channels,
                                uniform_widths, widths_genotype)
from hdnas.compress.job import load_compress_config
from hdnas.compress import prune as prune_module
from hdnas.compress.prune import l1_keep, l1_scores, next_widths
from hdnas.core.cost import count, fvcore_macs
from hdnas.core.genotype import load_genotype
from hdnas.core.network import DerivedNet
from hdnas.core.render import render_cell
from hdnas.core.run import load_checkpoint
from hdnas.core.space import SearchSpace
from hdnas.core.surgery import prunable_widths, prune
from hdnas.core.weights import load_model
from hdnas.train.dual import DualModel
from hdnas.train.trainer import Trainer, load_retrain_config
from hdnas.zoo.sampler import random_genotype

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_genotype(seed: int = 0, scale: int = 2):
    space = SearchSpace(scale=scale, channels=16, cells=2, steps=2, cell_inputs=2, fusion_cells=2, esa=True,
                        ops=["conv_3x3", "sep_conv_3x3", "dil_conv_3x3"])
    return random_genotype(space, rng=seed)


def tiny_net(seed: int = 0) -> DerivedNet:
    torch.manual_seed(seed)
    net = DerivedNet(tiny_genotype(seed)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def random_scores(net: DerivedNet, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(c, generator=g) for k, c in prunable_widths(net.genotype).items()}


def write_folder(path: Path, n: int, size: int, seed: int) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
        Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(path / f"img{i:02d}.png")
    return path


def cfg_for(data: Path, **extra):
    items = {"threads": 1, "device": "cpu", "data.patch": 8, "data.batch": 2, "data.val_fraction": 0.25,
             "drc.round_to": 2, "drc.steps": 4, "drc.saliency_batches": 2, "drc.save_every": 2, "drc.log_every": 1,
             "train.steps": 2, "train.val_every": 2, "data.paths": f'["{data}"]'}
    items.update(extra)
    return load_compress_config(None, [f"{k}={v}" for k, v in items.items()])


def one_hot(model: ChannelSearchNet, rng: random.Random) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    probs, widths = {}, {}
    for k in model.names:
        j = rng.randrange(len(model.candidates[k]))
        probs[k] = torch.nn.functional.one_hot(torch.tensor(j), len(model.candidates[k])).double()
        widths[k] = model.candidates[k][j]
    return probs, widths


# ------------------------------------------------------------------------------------------- tests


def test_expected_cost_equals_the_exact_count_at_one_hot_alpha_and_its_gradient_reaches_alpha():
    net = tiny_net()
    cands = candidate_widths(net.genotype, 0.3, [0.5, 0.75, 1.0, 1.25, 1.5], round_to=2)
    assert all(len(v) > 1 for k, v in cands.items() if k != "cell1.esa" and k != "cell2.esa")
    model = ChannelSearchNet(net, DualModel(2), cands, random_scores(net))
    rng = random.Random(0)
    for _ in range(5):
        probs, widths = one_hot(model, rng)
        assert float(model.expected_macs(probs)) == count(widths_genotype(net.genotype, widths)).macs
    e = model.expected_macs()
    e.backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a, k in zip(model.alphas, model.names)
               if len(model.candidates[k]) > 1)


def test_one_hot_masks_compute_the_pruned_net_and_the_data_loss_reaches_alpha():
    net = tiny_net(1)
    scores = random_scores(net, 1)
    cands = candidate_widths(net.genotype, 0.5, [0.5, 1.0, 1.5], round_to=1)
    model = ChannelSearchNet(net, DualModel(2), cands, scores)
    probs, widths = one_hot(model, random.Random(1))
    with torch.no_grad():
        for a, k in zip(model.alphas, model.names):
            a.copy_(probs[k].float() * 1e4)
    pruned = prune(net, select_channels(scores, widths))
    x = torch.rand(2, 3, 12, 14)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], pruned(x), rtol=0, atol=1e-5)
    # soft α: the dual-regression loss has a gradient in every layer's α
    with torch.no_grad():
        for a in model.alphas:
            a.zero_()
    sr, dsr = model(x)
    loss = torch.nn.functional.l1_loss(sr, torch.rand_like(sr)) + 0.1 * torch.nn.functional.l1_loss(dsr, x)
    grads = torch.autograd.grad(loss, list(model.alphas))
    assert all(g.abs().sum() > 0 for g, k in zip(grads, model.names) if len(model.candidates[k]) > 1)


def test_selection_keeps_the_highest_saliency_channels():
    scores = {"a": torch.tensor([0.1, 0.9, 0.5, 0.7]), "b": torch.tensor([3.0, 1.0, 2.0])}
    assert select_channels(scores, {"a": 2, "b": 1}) == {"a": [1, 3], "b": [0]}
    # a channel whose filter is zero cannot change the loss: the least salient, pruned first
    net = tiny_net(2)
    name = next(k for k in prunable_widths(net.genotype) if ".distill." in k)
    cell, _, k = name.split(".")
    with torch.no_grad():
        net.cells[cell].distill[int(k)].weight[3] = 0
        net.cells[cell].distill[int(k)].bias[3] = 0
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(2, 3, 10, 10, generator=g), torch.rand(2, 3, 20, 20, generator=g)) for _ in range(2)]
    s = saliency(net, DualModel(2), batches)
    assert set(s) == set(prunable_widths(net.genotype)) and float(s[name][3]) == 0.0
    assert all(float(v) > 0 for j, v in enumerate(s[name]) if j != 3)
    width = prunable_widths(net.genotype)[name] - 1
    assert 3 not in select_channels(s, {name: width})[name]
    # L1-norm baseline: the largest filters
    l1 = l1_scores(net)
    assert float(l1[name][3]) == 0.0 and 3 not in l1_keep(net, {name: width})[name]


def test_pruned_genotype_counts_what_fvcore_counts():
    net = tiny_net(3)
    widths = uniform_widths(net.genotype, 0.4, round_to=2)
    geno = widths_genotype(net.genotype, widths)
    hr = (26, 38)
    report = count(geno, hr)
    assert report.macs == fvcore_macs(DerivedNet(geno), report.lr_size) + report.extras
    assert report.macs < count(net.genotype, hr).macs


def _search(tmp_path: Path, out: str, data: Path, steps: int | None = None):
    cfg = cfg_for(data, **{"drc.order": 2})
    s = ChannelSearch(cfg, tiny_net(4), tmp_path / out, progress=False, log=False)
    return s, s.run(max_steps=steps)


def test_channel_search_resume_is_exact(tmp_path):
    data = write_folder(tmp_path / "data", 6, 40, 0)
    straight, res = _search(tmp_path, "a", data)
    assert res.step == 4 and res.stopped == "done"
    _, half = _search(tmp_path, "b", data, steps=2)
    assert half.stopped == "max_steps" and load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 2
    torch.manual_seed(99)
    cfg = cfg_for(data, **{"drc.order": 2})
    again = ChannelSearch(cfg, tiny_net(4), tmp_path / "b", progress=False, log=False)
    again.start(resume=True)
    res_b = again.run()
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert res.widths == res_b.widths and res.probs == res_b.probs
    assert any(float(x.detach().abs().sum()) > 0 for x in straight.model.alphas)  # α moved
    # widths land in the band around the target
    assert abs(res.macs - res.target_macs) <= 0.05 * res.target_macs or res.moves


def _trained_checkpoint(tmp_path: Path, data: Path, *extra: str) -> Path:
    rcfg = load_retrain_config(None, ["threads=1", "device=cpu", "data.patch=8", "data.batch=2", "train.steps=2",
                                      "train.val_every=2", "data.val_fraction=0.25", f'data.paths=["{data}"]', *extra])
    Trainer(rcfg, tiny_genotype(5), tmp_path / "src", progress=False, log=False).run()
    return tmp_path / "src" / "best.pt"


def test_tool_end_to_end_writes_a_net_that_loads_summarises_and_exports(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    data = write_folder(tmp_path / "data", 6, 40, 0)
    ck = _trained_checkpoint(tmp_path, data)
    out = tmp_path / "drc"
    base = ["--checkpoint", str(ck), "--rate", "0.5", "--data", str(data), "--no-progress", "threads=1",
            "device=cpu", "data.patch=8", "data.batch=2", "data.val_fraction=0.25", "drc.round_to=2", "drc.steps=3",
            "drc.saliency_batches=1", "train.steps=2", "train.val_every=2"]
    tool = load_tool("compress")
    assert tool.main(base + ["--out", str(out), "--minutes", "5"]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "Multi-Adds" in text and "widths" in text and "before fine-tuning" in text
    net, geno = load_model(out / "best.pt")
    saved = out / "genotype.json"
    g2 = load_genotype(saved)
    assert g2.has_widths and prunable_widths(g2) == prunable_widths(geno)
    assert count(g2).macs < count(tiny_genotype(5)).macs
    assert (out / "search" / "checkpoint.pt").is_file()
    assert load_tool("summary").main([str(saved), "--no-latency", "--no-fvcore"]) == 0
    assert any("pruned widths" in render_cell(g2, i).source for i in g2.live_cells())
    assert load_tool("export").main(["--checkpoint", str(out / "best.pt"), "--onnx", str(tmp_path / "n.onnx"),
                                     "--tolerance", "1e-4"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert tool.main(base + ["--out", str(out)]) == 2 and "--resume" in capsys.readouterr().err
    # the L1 baseline at the DRC widths
    l1 = tmp_path / "l1"
    assert tool.main(base + ["--out", str(l1), "--method", "l1", "--widths", str(saved)]) == 0
    capsys.readouterr()
    assert prunable_widths(load_model(l1 / "best.pt")[1]) == prunable_widths(g2)


@pytest.mark.parametrize("rate", ["0", "1", "-0.2", "abc", "nan"])
def test_bad_rate_is_refused_before_any_work(tmp_path, capsys, rate):
    out = tmp_path / "out"
    code = load_tool("compress").main(["--checkpoint", str(tmp_path / "none.pt"), "--rate", rate, "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: rate:") and repr(rate) in err and not out.exists()


def test_wrong_checkpoint_is_refused_naming_it(tmp_path, capsys):
    data = write_folder(tmp_path / "data", 6, 40, 0)
    ck = _trained_checkpoint(tmp_path, data)
    other = tiny_genotype(7)
    other.save(tmp_path / "other.json")
    tool = load_tool("compress")
    out = tmp_path / "out"
    cases = [
        (["--checkpoint", str(tmp_path / "other.json")], "not a readable hdnas checkpoint"),
        (["--checkpoint", str(ck), "--genotype", str(tmp_path / "other.json")], "another genotype"),
        (["--checkpoint", str(ck), "--scale", "4"], "for ×2, not ×4"),
        (["--checkpoint", str(tmp_path / "missing.pt")], "checkpoint not found"),
    ]
    torch.save({"format": "hdnas-search-checkpoint/1"}, tmp_path / "search.pt")
    cases.append((["--checkpoint", str(tmp_path / "search.pt")], "not an hdnas retrain checkpoint"))
    for args, msg in cases:
        assert tool.main(args + ["--out", str(out), "--rate", "0.3", "--data", str(data)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err, err
        assert not out.exists()


# ------------------------------------------------------------------------------ iterative (DIPNet)


def test_next_widths_cut_a_share_at_least_one_channel_and_stop_at_the_floor():
    assert next_widths({"a": 16, "b": 5, "c": 4, "d": 3, "e": 40}, 0.1, 4) == {"a": 14, "b": 4, "c": 4, "d": 3, "e": 36}
    assert next_widths({"a": 8}, 0.01, 2) == {"a": 7}  # a share below one channel still cuts one


def _scripted_iterative(monkeypatch, psnrs: list[float], reference: float = 30.0):
    """Real rounds (pruning, fine-tuning, checkpoints), with the held-out PSNRs that decide scripted:
    the unpruned net scores ``reference``, round r's fine-tuning ``psnrs[r - 1]``."""
    real = prune_module.finetune
    calls = []

    def finetune(*args, **kwargs):
        res = real(*args, **kwargs)
        calls.append(res)
        return dataclasses.replace(res, best_psnr=psnrs[len(calls) - 1])

    monkeypatch.setattr(prune_module, "finetune", finetune)
    monkeypatch.setattr(prune_module, "held_out_psnr", lambda net, val_set, tile=None: reference)
    return calls


def _iterative_args(ck: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(ck), "--method", "iterative", "--step-rate", "0.25", "--tolerance", "0.05",
            "--data", str(data), "--out", str(out), "--no-progress", "threads=1", "device=cpu", "data.patch=8",
            "data.batch=2", "data.val_fraction=0.25", "train.steps=2", "train.val_every=2", "iterative.min_width=2",
            *extra]


def test_iterative_stops_at_the_tolerance_and_keeps_the_last_good_net(tmp_path, monkeypatch, capsys):
    data = write_folder(tmp_path / "data", 6, 40, 0)
    ck = _trained_checkpoint(tmp_path, data)
    source = prunable_widths(load_model(ck)[1])
    calls = _scripted_iterative(monkeypatch, [30.02, 29.96, 29.90, 29.99])
    out = tmp_path / "iter"
    assert load_tool("compress").main(_iterative_args(ck, data, out)) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "kept       round 2 (tolerance)" in text and "over the tolerance" in text
    assert len(calls) == 3  # round 3 fell 0.10 dB: no round 4
    for r in (1, 2, 3):
        assert (out / f"round{r}" / "best.pt").is_file()
    assert not (out / "round4").exists()
    # best.pt is round 2's best checkpoint, and it loads as any checkpoint does
    assert (out / "best.pt").read_bytes() == (out / "round2" / "best.pt").read_bytes()
    net, geno = load_model(out / "best.pt")
    w1, w2 = (prunable_widths(load_model(out / f"round{r}" / "best.pt")[1]) for r in (1, 2))
    assert prunable_widths(geno) == w2 == next_widths(w1, 0.25, 2) and w1 == next_widths(source, 0.25, 2)
    saved = load_genotype(out / "genotype.json")
    assert prunable_widths(saved) == w2 and count(saved).macs < count(tiny_genotype(5)).macs
    rounds = saved.provenance["iterative"]["rounds"]
    assert [r["kept"] for r in rounds] == [True, True, False] and saved.provenance["iterative"]["kept_round"] == 2
    assert rounds[2]["drop"] == pytest.approx(0.10)
    assert load_tool("evaluate").main(["--checkpoint", str(out / "best.pt"), "--data", str(data), "--device", "cpu"]) == 0
    assert "PSNR" in capsys.readouterr().out


def test_iterative_keeps_the_unpruned_net_when_round_one_falls_too_far(tmp_path, monkeypatch, capsys):
    data = write_folder(tmp_path / "data", 6, 40, 0)
    ck = _trained_checkpoint(tmp_path, data)
    _scripted_iterative(monkeypatch, [29.5])
    out = tmp_path / "iter"
    assert load_tool("compress").main(_iterative_args(ck, data, out)) == 0, capsys.readouterr().err
    assert "kept       the unpruned net (tolerance)" in capsys.readouterr().out
    src, g0 = load_model(ck)
    net, geno = load_model(out / "best.pt")
    assert prunable_widths(geno) == prunable_widths(g0) and not load_genotype(out / "genotype.json").has_widths
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(net(x), src(x))
    assert load_tool("evaluate").main(["--checkpoint", str(out / "best.pt"), "--data", str(data), "--device", "cpu"]) == 0
    # the same folder again: refused without --resume / --force
    capsys.readouterr()
    assert load_tool("compress").main(_iterative_args(ck, data, out)) == 2 and "--resume" in capsys.readouterr().err


def test_iterative_refuses_pinned_widths(tmp_path, capsys):
    data = write_folder(tmp_path / "data", 6, 40, 0)
    ck = _trained_checkpoint(tmp_path, data)
    tiny_genotype(5).save(tmp_path / "g.json")
    out = tmp_path / "iter"
    assert load_tool("compress").main(_iterative_args(ck, data, out, "--widths", str(tmp_path / "g.json"))) == 2
    assert "--widths applies to the baselines" in capsys.readouterr().err and not (out / "round1").exists()


def test_iterative_unscripted_within_a_wide_tolerance_runs_every_round(tmp_path, capsys):
    data = write_folder(tmp_path / "data", 6, 40, 0)
    ck = _trained_checkpoint(tmp_path, data)
    out = tmp_path / "iter"
    args = _iterative_args(ck, data, out, "--tolerance", "100", "--minutes", "2", "iterative.max_rounds=2")
    assert load_tool("compress").main(args) == 0, capsys.readouterr().err
    assert "kept       round 2 (max_rounds)" in capsys.readouterr().out
    it = load_genotype(out / "genotype.json").provenance["iterative"]
    assert math.isfinite(it["reference_psnr"]) and [r["index"] for r in it["rounds"]] == [1, 2]
    assert all(math.isfinite(r["val_psnr"]) and r["drop"] == pytest.approx(it["reference_psnr"] - r["val_psnr"])
               for r in it["rounds"])
    assert (out / "best.pt").read_bytes() == (out / "round2" / "best.pt").read_bytes()


def test_finetune_starts_the_dual_term_from_the_source_runs_dual_model_and_refuses_one_that_does_not_fit(tmp_path):
    from hdnas.compress.job import run_compress
    from hdnas.compress.config import CompressError
    data = write_folder(tmp_path / "data", 6, 40, 0)
    ck = _trained_checkpoint(tmp_path, data, "loss.dual.enabled=true", "train.lr=1e-2")
    source = load_checkpoint(ck)["dual"]
    # a vanishing lr: after one Adam step, D is where it started (to ~1e-12)
    for method, carried in (("l1", True), ("scratch", False)):
        cfg = cfg_for(data, method=method, rate=0.5, **{"loss.dual.enabled": "true", "train.steps": 1,
                                                       "train.lr": 1e-12, "train.val_every": 1})
        run_compress(cfg, ck, tmp_path / method, force=True, progress=False, log=False)
        dual = load_checkpoint(tmp_path / method / "last.pt")["dual"]
        same = all(torch.allclose(dual[k], source[k], atol=1e-9) for k in source)
        assert same is carried, method  # the from-scratch baseline starts its D fresh, as its net
    cfg = cfg_for(data, method="l1", rate=0.5, **{"loss.dual.enabled": "true", "loss.dual.features": 8})
    with pytest.raises(CompressError, match="loss.dual.features=8"):
        run_compress(cfg, ck, tmp_path / "bad", force=True, progress=False, log=False)


def test_finetune_distils_from_the_teachers_forward_on_each_patch_not_its_cached_whole_image_output(tmp_path):
    from hdnas.compress.prune import finetune, l1_prune
    from hdnas.core.data.datasets import build_dataset
    data = write_folder(tmp_path / "data", 4, 40, 3)
    train_set, val_set = build_dataset([data], 2, "train"), build_dataset([data], 2, "val")
    torch.manual_seed(0)
    net = tiny_net(1)
    distill = {}
    for cache in (False, True):  # at full widths the student is its teacher: the first step's target is itself
        cfg = load_compress_config(None, ["threads=1", "device=cpu", "data.patch=8", "data.batch=2", "train.steps=1",
                                          "train.val_every=1", f"teacher_cache={str(cache).lower()}"])
        res = finetune(l1_prune(net, prunable_widths(net.genotype)), net, cfg, tmp_path / f"ft{cache}", None,
                       train_set=train_set, val_set=val_set, progress=False, log=False)
        distill[cache] = res.history[-1]["distill"]
    assert distill[False] < 1e-7
    assert distill[True] > 1e-4  # whole-image context and uint8 rounding: a target the student is not


def test_finetune_scores_the_pruned_weights_before_its_first_step_and_scratch_does_not(tmp_path):
    from hdnas.compress.drc import uniform_widths
    from hdnas.compress.prune import finetune, held_out_psnr, l1_prune, train_from_scratch
    from hdnas.core.data.datasets import build_dataset
    data = write_folder(tmp_path / "data", 4, 40, 3)
    train_set, val_set = build_dataset([data], 2, "train"), build_dataset([data], 2, "val")
    torch.manual_seed(0)
    net = tiny_net(1)
    widths = uniform_widths(net.genotype, 0.5, 2)
    pruned = l1_prune(net, widths)
    before = held_out_psnr(pruned.eval(), val_set)
    cfg = load_compress_config(None, ["threads=1", "device=cpu", "data.patch=8", "data.batch=2", "train.steps=2",
                                      "train.val_every=2"])
    res = finetune(pruned, net, cfg, tmp_path / "ft", None, train_set=train_set, val_set=val_set,
                   progress=False, log=False)
    assert res.start_psnr == pytest.approx(before, abs=1e-6)
    assert res.history[0]["step"] == 0 and res.history[-1]["step"] == 2
    assert res.history[-1]["val_psnr"] != pytest.approx(before, abs=1e-9)
    assert res.best_psnr == max(h["val_psnr"] for h in res.history)  # the start is a best.pt candidate
    saved, _ = load_model(tmp_path / "ft" / "best.pt")
    assert held_out_psnr(saved.eval(), val_set) == pytest.approx(res.best_psnr, abs=1e-5)
    scratch = train_from_scratch(net.genotype, widths, cfg, tmp_path / "sc", None, train_set=train_set,
                                 val_set=val_set, progress=False, log=False)
    assert scratch.start_psnr is None
