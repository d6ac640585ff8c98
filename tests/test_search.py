"""The bilevel search: end to end, exact resume (in-process and after SIGKILL), DDP equivalence, faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hdnas.core.run import load_checkpoint
from hdnas.core.config import ConfigError
from hdnas.core.genotype import load_genotype
from hdnas.search.engine import SearchError, Searcher, load_search_config, run_search

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


def make_images(folder: Path, n: int = 6, size: int = 48, seed: int = 0) -> Path:
    """Smooth random colour images: structured enough to learn, small enough for seconds."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = rng.random((6, 6, 3))
        img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        img.save(folder / f"img{i:02d}.png")
    return folder


def tiny_overrides(tmp_path: Path, data: Path, **extra) -> list[str]:
    items = {
        "runs_dir": str(tmp_path / "runs"),
        "threads": 1,
        "space.scale": 2,
        "space.channels": 8,
        "space.cells": 2,
        "space.steps": 2,
        "space.fusion_cells": 1,
        "space.ops": "[conv_1x1, conv_3x3, sep_conv_3x3, dil_conv_3x3]",
        "data.paths": f"[{data}]",
        "data.patch": 8,
        "data.batch": 4,
        "data.val_max_images": 1,
        "search.epochs": 3,
        "search.steps_per_epoch": 2,
        "search.warmup_epochs": 1,
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "imgs")


def arch_state(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)["model"]
    return {k: v for k, v in state.items() if k.startswith(("alpha", "beta"))}


def test_full_search_writes_valid_genotype_with_provenance(tmp_path, images):
    cfg = load_search_config(None, REPO / "search_spaces" / "default.yaml", tiny_overrides(tmp_path, images))
    out = tmp_path / "x2.json"
    outcome = run_search(cfg, out, progress=False, command=["test"])
    g = load_genotype(out, scale=2)
    assert len(g.cells) == 2 and g.steps == 2
    prov = g.provenance
    for key in ("config", "seed", "multi_adds", "params", "val_psnr", "date", "command", "data"):
        assert key in prov, key
    assert prov["multi_adds"] > 0 and prov["params"] > 0
    assert np.isfinite(prov["val_psnr"])
    assert prov["config"]["space"]["channels"] == 8
    assert outcome.result.history[-1]["epoch"] == 2
    # refuses to overwrite without --force, before doing any work
    with pytest.raises(SearchError, match="exists"):
        run_search(cfg, out, progress=False)


def test_resume_in_process_is_bit_identical(tmp_path, images):
    over = tiny_overrides(tmp_path, images)
    cfg = load_search_config(None, None, over + ["name=straight"])
    Searcher(cfg, progress=False, log=False).run()
    straight = arch_state(tmp_path / "runs" / "straight" / "checkpoint.pt")

    cfg2 = load_search_config(None, None, over + ["name=killed"])
    Searcher(cfg2, progress=False, log=False).run(stop_after_epoch=1)  # "killed" after epoch 1
    s = Searcher(cfg2, progress=False, log=False)
    assert s.resume() and s.epoch == 2
    s.run()
    resumed = arch_state(tmp_path / "runs" / "killed" / "checkpoint.pt")
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def _cli(tmp_path, images, *args, env=None):
    cmd = [sys.executable, str(REPO / "tools" / "search.py"), "--no-progress", *args,
           *tiny_overrides(tmp_path, images, **{"search.epochs": 4})]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_then_resume_gives_same_genotype_and_arch(tmp_path, images):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = _cli(tmp_path, images, "--out", "ref.json", "name=ref", env=env)
    assert ref.wait(timeout=300) == 0, ref.stdout.read()
    # the same run, killed with SIGKILL once its first checkpoint exists, then resumed
    proc = _cli(tmp_path, images, "--out", "k.json", "name=k", env=env)
    ckpt = tmp_path / "runs" / "k" / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "k.json").exists() or proc.returncode == 0
    res = _cli(tmp_path, images, "--out", "k.json", "name=k", "--resume", "--force", env=env)
    assert res.wait(timeout=300) == 0, res.stdout.read()
    a, b = arch_state(tmp_path / "runs" / "ref" / "checkpoint.pt"), arch_state(ckpt)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ga, gb = load_genotype(tmp_path / "ref.json"), load_genotype(tmp_path / "k.json")
    assert ga.cells == gb.cells and ga.fusion == gb.fusion


def test_two_process_torchrun_matches_one_process(tmp_path, images):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    over = tiny_overrides(tmp_path, images, **{"search.epochs": 2, "search.warmup_epochs": 0})
    base = [str(REPO / "tools" / "search.py"), "--no-progress", "--force", *over]
    one = subprocess.run([sys.executable, *base, "--out", "one.json", "name=one"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *base,
                          "--out", "two.json", "name=two"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = arch_state(tmp_path / "runs" / "one" / "checkpoint.pt"), arch_state(tmp_path / "runs" / "two" / "checkpoint.pt")
    moved = False
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
        moved |= bool((a[k].abs() > 2e-3).any())
    assert moved, "α/β should have moved away from their 1e-3 initialisation"


def test_budget_out_of_reach_fails_before_training(tmp_path, images):
    for budget in ("1K", "10T"):
        cfg = load_search_config(None, None, tiny_overrides(tmp_path, images, **{"search.budget": budget}))
        with pytest.raises(SearchError, match="outside what this space can reach"):
            Searcher(cfg, progress=False, log=False)
    assert not (tmp_path / "runs").exists()


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, images):
    cfg = load_search_config(None, None, tiny_overrides(tmp_path, images, name="nan"))
    s = Searcher(cfg, progress=False, log=False)

    def poison(epoch):
        if epoch == 0:
            with torch.no_grad():
                s.model.stem.weight.fill_(float("nan"))

    with pytest.raises(SearchError, match=r"non-finite .* at step 2 .*last good checkpoint"):
        s.run(on_epoch=poison)
    state = load_checkpoint(tmp_path / "runs" / "nan" / "checkpoint.pt")
    assert state["epoch"] == 1  # the checkpoint written after epoch 0, before the NaN


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="search.epoch"):
        load_search_config(None, None, ["search.epoch=3"])
    with pytest.raises(ConfigError, match="space.ops\\[1\\]"):
        load_search_config(None, None, ["space.ops=[conv_3x3, conv_9x9]"])
    with pytest.raises(ConfigError, match="search.budget"):
        load_search_config(None, None, ["search.budget=lots"])


def test_cli_bad_budget_exits_2_with_message(tmp_path, images):
    proc = _cli(tmp_path, images, "--out", "x.json", "--budget", "1K")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "error:" in out and "outside what this space can reach" in out
    assert not (tmp_path / "x.json").exists()


def test_shipped_configs_load_and_default_space_matches_its_yaml():
    from hdnas.core.space import SearchSpace, load_space

    assert load_space(REPO / "search_spaces" / "default.yaml") == SearchSpace()
    paper = load_search_config(REPO / "search_spaces" / "dlsr_div2k.yaml")
    assert paper.space == load_space(REPO / "search_spaces" / "dlsr.yaml")
    cpu = load_search_config(REPO / "search_spaces" / "search_cpu.yaml")
    assert cpu.search == load_search_config().search and cpu.data == load_search_config().data


def test_penalty_temperature_anneals_over_architecture_epochs(tmp_path, images):
    cfg = load_search_config(None, None, tiny_overrides(tmp_path, images, **{
        "search.epochs": 6, "search.warmup_epochs": 2, "search.penalty_tau_end": 0.1}))
    s = Searcher(cfg, progress=False, log=False)
    taus = [s.tau_at(e) for e in range(6)]
    assert taus[0] == taus[1] == taus[2] == 1.0
    assert taus[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(taus[2:], taus[3:]))
    with pytest.raises(ConfigError, match="penalty_tau_end"):
        load_search_config(None, None, ["search.penalty_tau_end=2"])
