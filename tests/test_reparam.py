"""Re-parameterisation: exact folding (borders included), plain-net start, folded checkpoints, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from hdnas.core.adaptive import AdaptiveConfig, AdaptiveNet
from hdnas.core.config import ConfigError
from hdnas.core.cost import count, fvcore_macs
from hdnas.core.network import DerivedNet
from hdnas.core.run import load_checkpoint
from hdnas.core.space import SearchSpace
from hdnas.core.weights import load_model
from hdnas.deploy.export import export_model
from hdnas.train.reparam import ReparamConfig, RepConv, fold, rep_convs, reparameterise
from hdnas.zoo.sampler import random_genotype
from test_train import make_trainer, tiny_cfg, tiny_genotype, weights

pytestmark = pytest.mark.usefixtures("single_thread")

PLAIN = ["conv_1x1", "conv_3x3", "conv_5x5", "conv_7x7"]


def conv_genotype(seed: int = 0, scale: int = 2):
    """A tiny genotype of plain convs (every kernel of the registry) and one separable conv."""
    space = SearchSpace(scale=scale, channels=8, cells=2, steps=3, cell_inputs=2, fusion_cells=2,
                        ops=PLAIN + ["sep_conv_3x3"])
    g = random_genotype(space, rng=seed)
    g.cells[0].ops = ["conv_1x1", "conv_5x5", "sep_conv_3x3"]
    g.cells[1].ops = ["conv_7x7", "conv_3x3", "conv_3x3"]
    g.validate()
    return g


def randomise(module: nn.Module, seed: int, std: float = 0.1) -> None:
    """Random values in every branch (the zero-initialised ones too), so no branch folds trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, RepConv):
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("c_in,c_out,mid", [(6, 6, 1), (6, 6, 2), (5, 3, 1), (4, 8, 2)])
def test_folded_equals_unfolded_on_whole_images(k, c_in, c_out, mid):
    g = torch.Generator().manual_seed(k * 100 + c_in * 10 + c_out + mid)
    rep = RepConv(nn.Conv2d(c_in, c_out, k, padding=k // 2), mid)
    assert (rep.scale is not None) == (c_in == c_out)
    randomise(rep, seed=k + mid)
    for _ in range(3):
        h, w = (int(v) for v in torch.randint(1, 19, (2,), generator=g))  # some smaller than the kernel
        x = torch.randn(2, c_in, h, w, generator=g)
        conv = rep.fold()
        assert type(conv) is nn.Conv2d and conv.kernel_size == (k, k) and conv.padding == (k // 2, k // 2)
        with torch.no_grad():
            branches = rep.branches(x)  # each branch its own conv: the definition
            torch.testing.assert_close(conv(x), branches, rtol=0, atol=1e-5)
            torch.testing.assert_close(rep(x), branches, rtol=0, atol=1e-5)  # training's one combined conv
    # the border is where the 1×1 → k×k branch's bias would leak if the inner map were zero-padded
    if k > 1:
        x = torch.randn(1, c_in, 9, 9, generator=g)
        naive = rep.seq(nn.functional.pad(rep.expand(x), [k // 2] * 4))
        inner = nn.functional.pad(nn.functional.conv2d(x, rep.expand.weight), [k // 2] * 4)
        exact = rep.seq(inner + rep.expand.bias.view(1, -1, 1, 1))
        assert (naive - exact).abs()[..., 0, 0].max() > 1e-4  # the two differ at the corner ...
        torch.testing.assert_close(naive[..., k // 2:-(k // 2), k // 2:-(k // 2)],
                                   exact[..., k // 2:-(k // 2), k // 2:-(k // 2)], rtol=0, atol=1e-5)  # ... not inside


@pytest.mark.parametrize("c_in,c_out,mid", [(6, 6, 2), (5, 3, 1)])
def test_training_forward_gives_every_branch_the_gradient_of_the_branch_wise_sum(c_in, c_out, mid):
    rep = RepConv(nn.Conv2d(c_in, c_out, 3, padding=1), mid)
    randomise(rep, seed=7)
    x = torch.randn(2, c_in, 8, 9, generator=torch.Generator().manual_seed(1))
    target = torch.randn(2, c_out, 8, 9, generator=torch.Generator().manual_seed(2))
    grads = {}
    for how in ("forward", "branches"):
        rep.zero_grad()
        (getattr(rep, how)(x) - target).abs().mean().backward()
        grads[how] = {n: p.grad.clone() for n, p in rep.named_parameters()}
    assert set(grads["forward"]) == {n for n, _ in rep.named_parameters()}
    for name, g in grads["branches"].items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads["forward"][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_starts_as_the_plain_conv_and_every_branch_learns():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    plain = nn.Conv2d(4, 4, 3, padding=1)
    plain.load_state_dict(conv.state_dict())
    rep = RepConv(conv)
    x = torch.randn(2, 4, 7, 7)
    assert torch.equal(rep(x), plain(x))
    rep(x).square().sum().backward()
    for name in ("point.weight", "seq.weight", "scale", "kxk.weight"):
        assert rep.get_parameter(name).grad.abs().max() > 0, name
    with pytest.raises(ValueError, match="RepConv needs"):
        RepConv(nn.Conv2d(4, 4, 3, padding=1, groups=4))


@pytest.mark.parametrize("cell_last", [False, True])
def test_folded_net_is_the_plain_derived_net(cell_last):
    geno = conv_genotype()
    torch.manual_seed(0)
    net = reparameterise(DerivedNet(geno), ReparamConfig(enabled=True, mid=2, cell_last=cell_last))
    reps = [m for m in net.modules() if isinstance(m, RepConv)]
    assert len(reps) == len(rep_convs(geno, cell_last)) == 5 + (2 if cell_last else 0)
    randomise(net, seed=3)
    folded = fold(net)
    assert not any(isinstance(m, RepConv) for m in folded.modules()) and len(reps) == sum(
        isinstance(m, RepConv) for m in net.modules())  # the trained net is left as it is
    plain = DerivedNet(geno)
    plain.load_state_dict(folded.state_dict())  # strict: exactly the keys and shapes of the plain net
    x = torch.rand(2, 3, 13, 11)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), rtol=0, atol=1e-5)
    # an adaptive net folds the same way (its cells are a DerivedNet's)
    anet = reparameterise(AdaptiveNet(geno, AdaptiveConfig(enabled=True)), ReparamConfig(enabled=True))
    randomise(anet, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(fold(anet).eval()(x), anet.eval()(x), rtol=0, atol=1e-5)


def test_trainer_starts_from_the_plain_net(tmp_path):
    plain = make_trainer(tmp_path / "p", tiny_cfg())
    rep = make_trainer(tmp_path / "r", tiny_cfg(**{"reparam.enabled": "true"}))
    assert any(isinstance(m, RepConv) for m in rep.model.modules())
    assert plain.train_step(0)["loss"] == pytest.approx(rep.train_step(0)["loss"], rel=1e-6)


REP = {"reparam.enabled": "true", "reparam.cell_last": "true", "ema.enabled": "true", "ema.decay": 0.9}


def test_reparam_checkpoint_loads_as_the_plain_net_and_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    geno = tiny_genotype()
    t = make_trainer(tmp_path, tiny_cfg(**{**REP, "train.steps": 4, "train.val_every": 2}), genotype=geno)
    res = t.run()
    state = load_checkpoint(tmp_path / "best.pt")
    assert state["reparam"]["model"].keys() != state["model"].keys()
    for raw in (False, True):
        net, g = load_model(tmp_path / "best.pt", prefer_ema=not raw)
        assert type(net) is DerivedNet and not any(isinstance(m, RepConv) for m in net.modules())
        rep = t.ema.model if not raw else t.model  # best == last here: the same steps
        x = torch.rand(1, 3, 12, 10)
        with torch.no_grad():
            torch.testing.assert_close(net(x), rep.eval()(x), rtol=0, atol=1e-5)
    # exactly the plain net's cost
    report = count(g, hr_size=(48, 40))
    assert sum(p.numel() for p in net.parameters()) == report.params
    fv = pytest.importorskip("fvcore")
    assert fv is not None and fvcore_macs(net, report.lr_size) + report.extras == report.macs
    # validation scored what best.pt holds
    from hdnas.core.evaluation import evaluate_model

    best = [h for h in json.loads(state["history"]) if h["step"] == res.best_step][0]
    ema_net, _ = load_model(tmp_path / "best.pt")
    assert evaluate_model(ema_net, t.val_set, 2)["psnr"] == pytest.approx(best["val_psnr"], abs=1e-6)
    out = export_model(ema_net, tmp_path / "m.onnx", sample_size=(16, 16))
    assert out.onnx_max_diff < 1e-4


def test_reparam_resume_is_bitwise_exact(tmp_path):
    cfg = tiny_cfg(**REP)
    make_trainer(tmp_path / "a", cfg).run()
    make_trainer(tmp_path / "b", cfg).run(max_steps=3)
    torch.manual_seed(123)
    second = make_trainer(tmp_path / "b", cfg)
    assert second.resume() and second.step == 3
    second.run()
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    wa, wb = weights(a), weights(b)
    wa.update({f"rep.{k}": v for k, v in a["reparam"]["model"].items()})
    wb.update({f"rep.{k}": v for k, v in b["reparam"]["model"].items()})
    wa.update({f"rep_ema.{k}": v for k, v in a["reparam"]["ema"]["model"].items()})
    wb.update({f"rep_ema.{k}": v for k, v in b["reparam"]["ema"]["model"].items()})
    assert wa.keys() == wb.keys() and any(".kxk." in k for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert [h["val_psnr"] for h in json.loads(a["history"])] == [h["val_psnr"] for h in json.loads(b["history"])]
    # resuming a reparam run without reparam (or the other way) names the field
    with pytest.raises(Exception, match="'reparam.enabled' was True in the checkpoint, now False"):
        make_trainer(tmp_path / "b", tiny_cfg(**{**REP, "reparam.enabled": "false"})).resume()


def test_bad_reparam_config_names_the_field():
    with pytest.raises(ConfigError, match="reparam.mid"):
        tiny_cfg(**{"reparam.mid": 0})
    with pytest.raises(ConfigError, match="reparam.enabled"):
        tiny_cfg(**{"reparam.enabled": "maybe"})
    with pytest.raises(ConfigError, match="reparam.cell_lats"):
        tiny_cfg(**{"reparam.cell_lats": "true"})
