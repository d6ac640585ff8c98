"""Retraining: exact resume, wall-clock budget, NaN stop, checkpoint/genotype checks, the retrain tool."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_tool
import torch
from PIL import Image

from conftest import REPO_ROOT
from hdnas.core.run import load_checkpoint
from hdnas.core.config import ConfigError
from hdnas.core.errors import WeightsError
from hdnas.core.data import from_arrays
from hdnas.zoo.sampler import random_genotype
from hdnas.core.genotype import Genotype
from hdnas.core.network import DerivedNet
from hdnas.core.space import SearchSpace
from hdnas.core.run import build_data
from hdnas.train.trainer import TrainError, Trainer, load_retrain_config, lr_factor, run_retrain
from hdnas.core.weights import genotype_mismatch, load_model

pytestmark = pytest.mark.usefixtures("single_thread")


_tool = load_tool


def tiny_genotype(scale: int = 2, seed: int = 0, esa: bool = True) -> Genotype:
    space = SearchSpace(scale=scale, channels=8, cells=2, steps=2, cell_inputs=2, fusion_cells=2, esa=esa,
                        ops=["conv_1x1", "conv_3x3", "sep_conv_3x3", "dil_conv_3x3"])
    return random_genotype(space, rng=seed)


def smooth_images(n: int, size: int = 48, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Smooth random colour images: structured enough to learn, small enough for seconds."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        coarse = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
        out.append((f"img{i:02d}", np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))))
    return out


def tiny_sets(scale: int = 2):
    train = from_arrays(smooth_images(4, seed=0), scale, "train")
    return train, from_arrays(smooth_images(2, 40, seed=1), scale, "val")


def tiny_cfg(**extra):
    items = {
        "threads": 1,
        "device": "cpu",
        "data.patch": 8,
        "data.batch": 4,
        "train.steps": 6,
        "train.val_every": 3,
        "train.lr": 1e-3,
    }
    items.update(extra)
    return load_retrain_config(None, [f"{k}={v}" for k, v in items.items()])


def make_trainer(tmp_path: Path, cfg=None, genotype=None, teacher=None, **kw) -> Trainer:
    train, val = tiny_sets()
    return Trainer(cfg or tiny_cfg(), genotype or tiny_genotype(), tmp_path, teacher=teacher, train_set=train,
                   val_set=val, progress=False, log=False, **kw)


def tiny_teacher(seed: int = 5) -> DerivedNet:
    torch.manual_seed(seed)
    return DerivedNet(tiny_genotype(seed=seed))


FULL = {"ema.enabled": "true", "ema.decay": 0.9, "loss.importance.enabled": "true",
        "loss.importance.round_steps": 2, "loss.distill.enabled": "true", "loss.distill.weight": 0.5, "loss.dual.enabled": "true"}


def weights(state: dict) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in state["model"].items()}
    out.update({f"dual.{k}": v for k, v in (state["dual"] or {}).items()})
    out.update({f"ema.{k}": v for k, v in ((state["ema"] or {}).get("model") or {}).items()})
    return out


# ------------------------------------------------------------------------------------------- tests


def test_resume_is_bitwise_exact_with_every_state(tmp_path):
    """6 steps straight == 3 steps (mid importance round 1), a new Trainer resuming from last.pt, 3 more."""
    cfg = tiny_cfg(**FULL)
    straight = make_trainer(tmp_path / "a", cfg, teacher=tiny_teacher())
    res = straight.run()
    assert res.step == 6 and res.stopped == "done"
    first = make_trainer(tmp_path / "b", cfg, teacher=tiny_teacher())
    assert first.run(max_steps=3).stopped == "max_steps"
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 3
    torch.manual_seed(123)  # a fresh process has other global RNG state; the checkpoint restores it
    second = make_trainer(tmp_path / "b", cfg, teacher=tiny_teacher())
    assert second.resume() and second.step == 3 and second.importance.round == 1
    second.run()
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and any(k.startswith("ema.") for k in wa) and any(k.startswith("dual.") for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for k in ("optimizer", "dual_optimizer"):
        sa, sb = a[k]["state"], b[k]["state"]
        assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert a["importance"]["round"] == b["importance"]["round"] == 2
    assert [h["val_psnr"] for h in json.loads(a["history"])] == [h["val_psnr"] for h in json.loads(b["history"])]
    # and training did something: the weights moved and validation is finite
    torch.manual_seed(cfg.seed)
    assert not torch.equal(wa["model.stem.weight"], DerivedNet(tiny_genotype()).stem.weight)
    assert np.isfinite(res.val_psnr) and res.best_step in (3, 6)


def test_loss_terms_and_importance_are_used_in_a_step(tmp_path):
    t = make_trainer(tmp_path, tiny_cfg(**FULL), teacher=tiny_teacher())
    out = t.train_step(0)
    assert {"loss", "l1", "dual", "distill", "importance_mean"} <= set(out)
    assert out["loss"] == pytest.approx(out["l1"] + 0.1 * out["dual"] + 0.5 * out["distill"], rel=1e-5)
    assert 0 < out["importance_mean"] <= 1
    plain = make_trainer(tmp_path / "p", tiny_cfg(**{"loss.dual.enabled": "false"}))
    assert set(plain.train_step(0)) == {"loss", "l1"} and plain.dual is None


def test_minutes_budget_stops_validates_and_saves(tmp_path):
    ticks = itertools.count()
    t = make_trainer(tmp_path, tiny_cfg(**{"train.minutes": 1.0, "train.steps": 100}), clock=lambda: 25.0 * next(ticks))
    res = t.run()
    assert res.stopped == "time" and 0 < res.step < 100
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == res.step
    assert json.loads(state["history"])[-1]["step"] == res.step  # a final validation at the stop
    assert np.isfinite(res.val_psnr)
    zero = make_trainer(tmp_path / "z", tiny_cfg(**{"train.minutes": 0}))
    res0 = zero.run()
    assert res0.stopped == "time" and res0.step == 0 and (tmp_path / "z" / "last.pt").is_file()


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    t = make_trainer(tmp_path, tiny_cfg(**{"train.val_every": 2}))
    calls = itertools.count()

    def poison(module, inputs, output):
        if module.training and next(calls) == 4:  # the forward of step 4
            return output * float("nan")
        return None

    t.model.register_forward_hook(poison)
    with pytest.raises(TrainError, match=r"non-finite loss \(nan\) at step 4.*last good checkpoint .*last.pt is kept"):
        t.run()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_checkpoint_for_another_genotype_or_scale_is_refused(tmp_path):
    t = make_trainer(tmp_path, tiny_cfg(**{"train.steps": 1}))
    t.run()
    ckpt = tmp_path / "last.pt"
    x4 = tiny_genotype(scale=4)
    with pytest.raises(WeightsError, match="checkpoint is for ×2, genotype is ×4"):
        load_model(ckpt, x4)
    other = tiny_genotype()
    other.cells[1].ops = ["conv_1x1" if o != "conv_1x1" else "conv_3x3" for o in other.cells[1].ops]
    with pytest.raises(WeightsError, match=r"cells\[1\]\.ops differ"):
        load_model(ckpt, other)
    with pytest.raises(TrainError, match=r"cells\[1\]\.ops differ"):
        make_trainer(tmp_path, tiny_cfg(**{"train.steps": 1}), genotype=other).resume()
    net, geno = load_model(ckpt)  # the genotype recorded in the checkpoint
    assert geno.cells == t.genotype.cells and not net.training
    assert genotype_mismatch(t.genotype.to_dict(), t.genotype) is None
    # a bare state dict needs the genotype
    torch.save(t.model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(WeightsError, match="pass the genotype"):
        load_model(tmp_path / "bare.pt")
    assert load_model(tmp_path / "bare.pt", t.genotype)[1] is t.genotype


def test_resume_with_another_config_names_the_field(tmp_path):
    make_trainer(tmp_path, tiny_cfg(**{"train.steps": 2, "train.val_every": 1})).run(max_steps=1)
    with pytest.raises(TrainError, match="'train.lr' was 0.001 in the checkpoint, now 0.002"):
        make_trainer(tmp_path, tiny_cfg(**{"train.steps": 2, "train.val_every": 1, "train.lr": 0.002})).resume()
    # a different time budget is allowed
    assert make_trainer(tmp_path, tiny_cfg(**{"train.steps": 2, "train.val_every": 1, "train.minutes": 5})).resume()


def test_schedules():
    cfg = tiny_cfg(**{"train.steps": 100, "train.lr": 1e-3, "train.lr_min": "1.0e-5"})
    assert lr_factor(0, cfg.train) == pytest.approx(1.0)
    assert lr_factor(50, cfg.train) == pytest.approx((1 + 0.01) / 2)
    assert lr_factor(100, cfg.train) == pytest.approx(0.01)
    ms = tiny_cfg(**{"train.schedule": "multistep", "train.milestones": "[10, 20]", "train.gamma": 0.5,
                     "train.warmup_steps": 4}).train
    assert [lr_factor(s, ms) for s in (0, 3, 9, 10, 25)] == pytest.approx([0.25, 1.0, 1.0, 0.5, 0.25])
    with pytest.raises(ConfigError, match="train.schedule"):
        tiny_cfg(**{"train.schedule": "linear"})
    with pytest.raises(ConfigError, match="unknown config key 'loss.dual.wieght'"):
        tiny_cfg(**{"loss.dual.wieght": 1})


def test_validation_images_are_held_out_from_a_plain_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, arr in smooth_images(5):
        Image.fromarray(arr).save(folder / f"{name}.png")
    cfg = tiny_cfg(**{"data.paths": f"[{folder}]", "data.val_fraction": 0.4})
    (train,), val = build_data(cfg.data, 2, seed=0)
    assert len(train) == 3 and len(val) == 2 and not set(train.names) & set(val.names)
    (train2,), val2 = build_data(cfg.data, 2, seed=0)
    assert val2.names == val.names  # deterministic


def test_distill_without_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(TrainError, match="no teacher"):
        make_trainer(tmp_path, tiny_cfg(**{"loss.distill.enabled": "true"}))


def write_folder(path: Path, n: int, size: int, seed: int) -> Path:
    path.mkdir(parents=True)
    for name, arr in smooth_images(n, size, seed):
        Image.fromarray(arr).save(path / f"{name}.png")
    return path


def test_retrain_tool_end_to_end_then_evaluate_and_refuse_overwrite(tmp_path, capsys):
    geno_path = tmp_path / "x2.json"
    tiny_genotype().save(geno_path)
    data = write_folder(tmp_path / "train", 3, 48, 0)
    val = write_folder(tmp_path / "val", 2, 40, 1)
    run = tmp_path / "run"
    args = ["--genotype", str(geno_path), "--data", str(data), "--val-data", str(val), "--out", str(run),
            "--no-progress", "threads=1", "data.patch=8", "data.batch=4", "train.steps=4", "train.val_every=2"]
    tool = _tool("retrain")
    assert tool.main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "finished at step 4/4" in out and "bicubic" in out
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / name, weights_only=True)
        assert state["scale"] == 2 and state["genotype"]["cells"] == tiny_genotype().to_dict()["cells"]
    assert any((run / "tb").iterdir())  # TensorBoard events
    assert tool.main(args) == 2 and "pass --resume" in capsys.readouterr().err
    assert tool.main(args + ["--resume"]) == 0  # already finished: resumes to the end at once
    # evaluate the checkpoint end to end
    evaluate = _tool("evaluate")
    js = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(run / "best.pt"), "--scale", "2", "--data", str(val),
                          "--json", str(js), "--save-images", str(tmp_path / "sr")]) == 0
    res = json.loads(js.read_text())["results"][0]
    assert res["images"] == 2 and res["scale"] == 2 and np.isfinite(res["psnr"])
    assert sorted(p.name for p in (tmp_path / "sr").rglob("*.png")) == ["img00.png", "img01.png"]
    net, _ = load_model(run / "best.pt")
    from hdnas.core.data import load_folder
    from hdnas.core.evaluation import evaluate_model

    assert res["psnr"] == pytest.approx(evaluate_model(net, load_folder(val, 2), 2)["psnr"], abs=1e-9)


def test_run_retrain_needs_a_genotype(tmp_path):
    with pytest.raises(TrainError, match="no genotype given"):
        run_retrain(tiny_cfg(), out=tmp_path)


def test_two_processes_make_the_same_update_as_one(tmp_path):
    """torchrun with 2 processes (gloo), same global batch: same weights as 1 process (float tolerance)."""
    geno_path = tmp_path / "x2.json"
    tiny_genotype().save(geno_path)
    data = write_folder(tmp_path / "train", 3, 48, 0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [str(REPO_ROOT / "tools" / "retrain.py"), "--genotype", str(geno_path), "--data", str(data),
            "--no-progress", "threads=1", "device=cpu", "data.patch=8", "data.batch=4", "train.steps=3",
            "train.val_every=3", "data.val_fraction=0.34"]
    one = subprocess.run([sys.executable, *base, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *base,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    for k, v in weights(a).items():
        torch.testing.assert_close(v, weights(b)[k], rtol=0, atol=1e-5)
    torch.manual_seed(0)
    init = DerivedNet(tiny_genotype()).state_dict()
    assert any((a["model"][k] - v).abs().max() > 1e-4 for k, v in init.items())


def test_shipped_run_configs_load_and_the_cpu_one_spells_out_the_defaults():
    from hdnas.core.config import to_dict
    from hdnas.train.trainer import RetrainConfig

    cpu = load_retrain_config(REPO_ROOT / "search_spaces" / "retrain_cpu.yaml")
    assert to_dict(cpu) == to_dict(RetrainConfig())
    gpu = load_retrain_config(REPO_ROOT / "search_spaces" / "retrain_div2k.yaml")
    assert gpu.data.batch == 64 and gpu.data.patch == 64 and gpu.ema.enabled and gpu.train.steps >= 100_000


def test_schedule_follows_the_time_budget():
    """With --minutes the schedule reaches its end when the time does, whatever the step count."""
    cfg = tiny_cfg(**{"train.steps": 1000, "train.lr": 1e-3, "train.lr_min": "1.0e-5"}).train
    assert lr_factor(10, cfg, time_fraction=0.5) == pytest.approx((1 + 0.01) / 2)
    assert lr_factor(10, cfg, time_fraction=1.5) == pytest.approx(0.01)
    assert lr_factor(600, cfg, time_fraction=0.1) == pytest.approx(lr_factor(600, cfg))
    ms = tiny_cfg(**{"train.steps": 100, "train.schedule": "multistep", "train.milestones": "[50]"}).train
    assert lr_factor(1, ms, time_fraction=0.6) == pytest.approx(ms.gamma)
    assert lr_factor(1, ms, time_fraction=0.4) == pytest.approx(1.0)


def test_trainer_anneals_to_the_minutes_budget(tmp_path):
    """A fake clock: half the budget spent puts the cosine at its middle, off the flag it does not."""
    now = [0.0]
    for anneal, expect in ((True, (1 + 0.01) / 2), (False, None)):
        cfg = tiny_cfg(**{"train.steps": 1000, "train.lr": 1e-3, "train.lr_min": "1.0e-5", "train.minutes": 1.0,
                          "train.anneal_to_minutes": anneal})
        tr = make_trainer(tmp_path / str(anneal), cfg)
        tr.clock = lambda: now[0]
        tr._clock0, tr._elapsed0 = 0.0, 0.0
        now[0] = 30.0
        assert tr.time_fraction() == (pytest.approx(0.5) if anneal else 0.0)
        want = expect if anneal else lr_factor(0, cfg.train)
        assert tr.scheduler.lr_lambdas[0](0) == pytest.approx(want)


def test_bicubic_teacher_starts_importance_from_bicubic_error(tmp_path):
    cfg = tiny_cfg(**{"loss.importance.enabled": True, "teacher.model": "bicubic"})
    tr = make_trainer(tmp_path, cfg)
    assert tr.teacher is not None and not list(tr.teacher.parameters())
    out = tr.train_step(0)
    assert 0.0 < out["importance_mean"] < 1.0  # w0 = s(e_bicubic)/s(0) < 1 where bicubic errs
    with pytest.raises(ConfigError, match="teacher"):
        make_trainer(tmp_path / "b", tiny_cfg(**{"loss.importance.enabled": True, "teacher.model": "bicubic",
                                                 "teacher.weights": "x.pt"}))
