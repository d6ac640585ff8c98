"""The run scaffold shared by search and retrain, and the loop-side reliability findings of issue 11.

Each finding has a test here: output paths checked before any work, ``error: …`` and exit 2 for bad
paths and values, ``--resume`` without a checkpoint an error in both loops, warnings for images
left out and for the built-in data, Ctrl-C messages that match what was saved, a progress bar that
counts toward the time budget, logging failures reported once, and the first run on a clean copy.
"""

from __future__ import annotations

import hashlib
import json
import io
import itertools
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO_ROOT
from hdnas.core.config import DataConfig, split_command_line
from hdnas.core.data import from_arrays, split_train_val
from hdnas.core.run import (
    RESUME_FREE,
    Interrupted,
    Progress,
    Run,
    RunWarning,
    build_data,
    held_out_split,
    interrupted_message,
    patch_datasets,
    step_generator,
)
from hdnas.search.engine import SearchError, Searcher, load_search_config
from hdnas.train.trainer import TrainError, Trainer
from test_search import make_images, tiny_overrides
from test_train import _tool, make_trainer, smooth_images, tiny_cfg, tiny_genotype

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "imgs")


@pytest.fixture(scope="module")
def search_tool():
    return _tool("search")


@pytest.fixture(scope="module")
def retrain_tool():
    return _tool("retrain")


# ------------------------------------------------------------------------------------- scaffold


def test_one_step_generator_and_one_split():
    a, b = step_generator(3, 7, 1), step_generator(3, 7, 1)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    assert not torch.equal(torch.rand(4, generator=step_generator(3, 7, 0)), torch.rand(4, generator=step_generator(3, 7, 1)))
    # the search's halves are exactly split_train_val's; retrain's one part is their union
    for n, n_val, seed in ((9, 2, 0), (10, 0, 1), (5, 1, 3)):
        (w, a_), val = held_out_split(n, n_val, seed, parts=2)
        ref = split_train_val(list(range(n)), n_val=n_val, seed=seed)
        assert (w, a_, val) == (ref.weights, ref.arch, ref.val)
        (one,), val1 = held_out_split(n, n_val, seed, parts=1)
        assert val1 == val and one == sorted(w + a_)
    with pytest.raises(Exception, match="need at least 2"):
        held_out_split(3, 2, 0, parts=2)


def test_resume_rules_are_one_list_used_by_both_loops(tmp_path, images):
    assert {"name", "runs_dir", "device", "threads", "train.minutes", "genotype"} <= RESUME_FREE
    over = tiny_overrides(tmp_path, images, **{"search.epochs": 2, "search.warmup_epochs": 0})
    cfg = load_search_config(None, None, over + ["name=r"])
    Searcher(cfg, progress=False, log=False).run(stop_after_epoch=0)
    # a run-free key may differ on resume (search used to compare the whole config) ...
    s = Searcher(load_search_config(None, None, over + ["name=r", "threads=2", "device=cpu"]), progress=False, log=False)
    assert s.resume() and s.epoch == 1
    # ... anything else is an error naming the field
    other = Searcher(load_search_config(None, None, over + ["name=r", "search.w_lr=0.01"]), progress=False, log=False)
    with pytest.raises(SearchError, match="'search.w_lr' was 0.001 in the checkpoint, now 0.01"):
        other.resume()


def test_resume_of_a_checkpoint_older_than_a_config_field(tmp_path, images):
    """A field added to the config after a checkpoint was written reads as its default there, so the
    run resumes at the default and names the field when it now differs."""
    over = tiny_overrides(tmp_path, images, **{"search.epochs": 2, "search.warmup_epochs": 0})
    s = Searcher(load_search_config(None, None, over + ["name=old"]), progress=False, log=False)
    s.run(stop_after_epoch=0)
    state = torch.load(s.ckpt_path, weights_only=True)
    saved = json.loads(state["config"])
    del saved["search"]["derive_tolerance"]  # as if written before the field existed
    state["config"] = json.dumps(saved)
    torch.save(state, s.ckpt_path)
    assert Searcher(load_search_config(None, None, over + ["name=old"]), progress=False, log=False).resume()
    other = Searcher(load_search_config(None, None, over + ["name=old", "search.derive_tolerance=0.2"]),
                     progress=False, log=False)
    with pytest.raises(SearchError, match="'search.derive_tolerance' was 0.1 in the checkpoint, now 0.2"):
        other.resume()


def test_resume_without_a_checkpoint_is_the_same_error_in_both_loops(tmp_path, images, search_tool, capsys):
    s = Searcher(load_search_config(None, None, tiny_overrides(tmp_path, images, name="typo")), progress=False, log=False)
    with pytest.raises(SearchError, match=r"runs/typo/checkpoint.pt: nothing to resume"):
        s.start(resume=True)
    assert s.resume(missing_ok=True) is False
    t = make_trainer(tmp_path / "t")
    with pytest.raises(TrainError, match=r"t/last.pt: nothing to resume"):
        t.start(resume=True)
    # the tool: a typo in name= no longer starts a fresh search silently
    assert search_tool.main(["--no-progress", "--resume", *tiny_overrides(tmp_path, images, name="typo2")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "typo2/checkpoint.pt: nothing to resume" in err
    assert not (tmp_path / "runs" / "typo2").exists()


def test_logging_failures_are_reported_once_not_swallowed():
    cfg = SimpleNamespace(seed=0, device="cpu", threads=0, data=DataConfig(batch=2))
    run = Run(cfg, "unused-run-folder", progress=False, log=False)
    with pytest.warns(RunWarning) as caught:
        for _ in range(3):
            with run.logging("the test image"):
                raise ValueError("boom")
    assert [str(w.message) for w in caught] == [
        "the test image not logged (ValueError: boom); the run goes on (said once)"]


def test_search_reports_a_failing_figure(tmp_path, images, monkeypatch):
    import hdnas.core.plots

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(hdnas.core.plots, "alpha_figure", broken)
    cfg = load_search_config(None, None, tiny_overrides(tmp_path, images, **{"search.epochs": 2, "name": "fig"}))
    with pytest.warns(RunWarning, match=r"α heat map .* not logged \(RuntimeError: no display\)") as caught:
        Searcher(cfg, progress=False, log=True).run()
    assert sum("heat map" in str(w.message) for w in caught) == 1  # two epochs, one warning


# ------------------------------------------------------------------------------------ output paths


def test_search_out_folder_with_force_fails_before_any_work(tmp_path, images, search_tool, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    assert search_tool.main(["--no-progress", "--out", str(folder), "--force", *tiny_overrides(tmp_path, images)]) == 2
    err = capsys.readouterr().err
    assert f"error: {folder}: is a folder" in err
    assert not (tmp_path / "runs").exists()  # nothing ran
    # the drawings folder beside the genotype must be makeable too
    (tmp_path / "g").write_text("a file where the drawings go")
    assert search_tool.main(["--no-progress", "--out", str(tmp_path / "g.json"), *tiny_overrides(tmp_path, images)]) == 2
    assert f"error: {tmp_path / 'g'}: exists and is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_search_runs_dir_a_file_and_retrain_out_a_file_exit_2(tmp_path, images, search_tool, retrain_tool, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    over = tiny_overrides(tmp_path, images, runs_dir=str(afile))
    assert search_tool.main(["--no-progress", "--out", str(tmp_path / "x.json"), *over]) == 2
    assert f"error: {afile}: exists and is not a folder" in capsys.readouterr().err
    geno = tmp_path / "x2.json"
    tiny_genotype().save(geno)
    args = ["--genotype", str(geno), "--data", str(images), "--out", str(afile), "--no-progress", "threads=1",
            "data.patch=8", "data.batch=4", "train.steps=2"]
    assert retrain_tool.main(args) == 2
    assert f"error: {afile}: exists and is not a folder" in capsys.readouterr().err


def test_negative_budget_reaches_the_library_check(tmp_path, images, search_tool, capsys):
    assert split_command_line(["--budget", "-5G", "x=1"], glue=("--budget",)) == (["--budget=-5G"], ["x=1"])
    assert search_tool.main(["--no-progress", "--budget", "-5G", *tiny_overrides(tmp_path, images)]) == 2
    assert "error: search.budget: expected a positive" in capsys.readouterr().err


def test_overrides_may_follow_a_list_option(tmp_path, images):
    """``--data A B key=value``: argparse alone would take ``key=value`` for a third folder."""
    argv = ["--genotype", "g.json", "--data", "A", "B", "train.steps=3", "--force", "loss.dual.enabled=false"]
    assert split_command_line(argv) == (["--genotype", "g.json", "--data", "A", "B", "--force"],
                                        ["train.steps=3", "loss.dual.enabled=false"])
    g = tiny_genotype().save(tmp_path / "x2.json")
    run = make_images(tmp_path / "imgs")
    assert _tool("retrain").main(["--genotype", str(g), "--no-progress", "--out", str(tmp_path / "r"), "--data",
                                  str(run), "threads=1", "data.patch=8", "data.batch=2", "data.val_max_images=1",
                                  "train.steps=1"]) == 0
    assert (tmp_path / "r" / "last.pt").is_file()


# ---------------------------------------------------------------------------------------- warnings


def test_images_smaller_than_a_patch_warn_in_both_loops(tmp_path):
    big = smooth_images(4, 48, seed=0)
    small = [(f"tiny{i}", arr[:12, :12]) for i, (_, arr) in enumerate(smooth_images(2, 48, seed=1))]
    sets = [from_arrays(big[:2] + small[:1], 2, "train"), from_arrays(big[2:] + small[1:], 2, "train")]
    with pytest.warns(RunWarning, match="2 of 6 training images are smaller than the LR patch 8"):
        w, a = patch_datasets(sets, DataConfig(patch=8))
    assert len(w.images) == len(a.images) == 2
    # search: a folder with one small image among good ones
    folder = make_images(tmp_path / "mixed", n=6)
    make_images(tmp_path / "tiny", n=1, size=12)
    shutil.copy(tmp_path / "tiny" / "img00.png", folder / "tiny.png")
    cfg = load_search_config(None, None, tiny_overrides(tmp_path, folder))
    with pytest.warns(RunWarning, match="1 of .* training images are smaller than the LR patch 8"):
        Searcher(cfg, progress=False, log=False)
    # retrain
    train = from_arrays(big + small, 2, "train")
    with pytest.warns(RunWarning, match="2 of 6 training images are smaller than the LR patch 8"):
        Trainer(tiny_cfg(), tiny_genotype(), tmp_path / "t", train_set=train, val_set=train, progress=False, log=False)


def test_builtin_data_is_announced(images):
    with pytest.warns(RunWarning, match=r"no --data given: using the built-in sample set .*--data DIR"):
        (train,), val = build_data(DataConfig(), 4, seed=0)
    assert len(train) > 0 and len(val) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunWarning)  # with --data: no note
        build_data(DataConfig(paths=[str(images)]), 2)


# --------------------------------------------------------------------------------------- Ctrl-C


def test_interrupt_message_matches_what_was_saved(tmp_path, images, retrain_tool, search_tool, monkeypatch, capsys):
    assert "--resume" not in interrupted_message(KeyboardInterrupt())
    assert "continue with --resume" in interrupted_message(Interrupted(Path("x/last.pt")))
    geno = tmp_path / "x2.json"
    tiny_genotype().save(geno)
    real_step = Trainer.train_step
    for stop_at, saved in ((0, False), (3, True)):
        def step(self, n, stop_at=stop_at):
            if n == stop_at:
                raise KeyboardInterrupt
            return real_step(self, n)

        monkeypatch.setattr(Trainer, "train_step", step)
        args = ["--genotype", str(geno), "--data", str(images), "--out", str(tmp_path / f"r{stop_at}"), "--no-progress",
                "threads=1", "data.patch=8", "data.batch=4", "train.steps=6", "train.val_every=2"]
        assert retrain_tool.main(args) == 130
        err = capsys.readouterr().err
        assert ("continue with --resume" in err) is saved, err
        assert ("nothing to resume" in err) is not saved, err
    monkeypatch.setattr(Searcher, "_weight_step", lambda self, step: (_ for _ in ()).throw(KeyboardInterrupt))
    assert search_tool.main(["--no-progress", *tiny_overrides(tmp_path, images, name="ctrlc")]) == 130
    assert "nothing to resume" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- progress


def test_progress_counts_toward_the_time_budget(tmp_path):
    now = [0.0]
    out = io.StringIO()
    bar = Progress("run", 2000, 0, minutes=2, seconds=30.0, clock=lambda: now[0], file=out)
    now[0] = 90.0
    bar.advance(475, loss="0.1")
    assert bar.bar.total == 120 and bar.bar.n == 120  # 30 s before this session + 90 s in it: the budget is spent
    bar.close()
    text = out.getvalue()
    assert "120/120 s of the time budget" in text and "step=475/2000" in text
    plain = Progress("run", 10, 2, file=io.StringIO())
    plain.advance(5)
    assert plain.bar.total == 10 and plain.bar.n == 5
    # the trainer's bar under --minutes (fake clock: 25 s a tick) counts seconds, not train.steps
    ticks = itertools.count()
    t = make_trainer(tmp_path, tiny_cfg(**{"train.minutes": 1.0, "train.steps": 100}), clock=lambda: 25.0 * next(ticks))
    t.progress = True
    shown = []
    real = Progress.advance
    monkey = pytest.MonkeyPatch()
    monkey.setattr(Progress, "advance", lambda self, done, **f: (shown.append(self.bar.total), real(self, done, **f)))
    try:
        t.run()
    finally:
        monkey.undo()
    assert shown and set(shown) == {60}


# ------------------------------------------------------------------------------------ first run


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.json"))}


def _clean_clone(dest: Path) -> Path:
    """What a fresh clone of this checkout holds: the files git tracks plus the untracked ones it does not
    ignore (so uncommitted work is tested too), and nothing it ignores (no runs/, no .venv). Outside a
    git checkout (an sdist), the project folders."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                            capture_output=True)
    if listed.returncode != 0:
        for part in ("hdnas", "tools", "search_spaces", "derived"):
            shutil.copytree(REPO_ROOT / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        return dest
    for name in filter(None, listed.stdout.decode().split("\0")):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_first_run_on_a_clean_copy_leaves_derived_alone(tmp_path):
    """The README flow on a fresh clone: ``tools/search.py --scale 4``, retrain the printed genotype, render it."""
    clone = _clean_clone(tmp_path / "clone")
    assert not (clone / "runs").exists() and (clone / "derived" / "x4.json").is_file()
    before = _digest(clone / "derived")
    tiny = ["threads=1", "space.channels=8", "space.cells=2", "space.steps=2", "space.fusion_cells=1",
            "data.patch=8", "data.batch=2", "data.val_max_images=1", "search.epochs=2", "search.steps_per_epoch=1",
            "search.warmup_epochs=1"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    search = subprocess.run([sys.executable, "tools/search.py", "--scale", "4", "--no-progress", *tiny], cwd=clone,
                            env=env, capture_output=True, text=True, timeout=300)
    assert search.returncode == 0, search.stderr[-3000:]
    assert "warning: no --data given: using the built-in sample set" in search.stderr
    line = next(ln for ln in search.stdout.splitlines() if ln.startswith("next"))
    printed = line.split("--genotype", 1)[1].strip()
    assert printed.startswith("runs/") and printed.endswith("/genotype.json") and (clone / printed).is_file()
    assert (clone / printed).with_suffix("").is_dir()  # drawings beside it
    assert _digest(clone / "derived") == before
    retrain = subprocess.run([sys.executable, "tools/retrain.py", "--genotype", printed, "--no-progress", "threads=1",
                              "data.patch=8", "data.batch=2", "data.val_max_images=1", "train.steps=1"],
                             cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    assert "finished at step 1/1" in retrain.stdout
    search_name = Path(printed).parent.name  # retrain runs are named after the search, not "genotype"
    assert (clone / "runs" / f"retrain_x4_{search_name}_s0" / "last.pt").is_file()
    render = subprocess.run([sys.executable, "tools/render.py", printed, "--out", "cells"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=120)
    assert render.returncode == 0, render.stderr[-3000:]
    drawn = {p.name for p in (clone / "cells").iterdir()}
    assert "network.png" in drawn and "network.svg" in drawn if shutil.which("dot") else drawn, drawn
