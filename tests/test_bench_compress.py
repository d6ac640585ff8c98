"""The compress benchmark suite on a tiny net: every part's record in the JSON, the baselines at DRC's
widths, DIPNet's stages at zero inference cost until pruning, the separate latency pass, and the
order the parts need. Timings are never asserted (the machine is shared), only that they exist."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import load_tool
from hdnas.bench.common import BenchmarkError
from hdnas.bench.compress import CompressBenchConfig, run_compress_suite
from hdnas.bench.suites import run_suites
from hdnas.core.space import SearchSpace
from hdnas.zoo.sampler import random_genotype
from test_benchmark import make_images

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(tmp_path: Path, **extra) -> CompressBenchConfig:
    space = SearchSpace(scale=2, channels=16, cells=2, steps=2, cell_inputs=2, fusion_cells=2, esa=True,
                        ops=["conv_3x3", "sep_conv_3x3"])
    geno = tmp_path / "g.json"
    random_genotype(space, rng=5).save(geno)
    train = make_images(tmp_path / "train", 6, 80, 0)  # LR 40: the last progressive stage's patch 32 fits
    evalset = make_images(tmp_path / "Tiny5", 2, 32, 1)
    small = ["train.steps=2", "data.batch=2"]
    cfg = dict(genotype=str(geno), base_minutes=1.0, minutes=1.0, rates=[0.5], data=[str(train)],
               eval_sets=[str(evalset)], threads=1, val_every=2, hr_size=(32, 48), step_rate=0.25, tolerance=100.0,
               prune_rounds=2,
               compress_overrides=small + ["data.patch=8", "drc.steps=2", "drc.saliency_batches=1", "drc.round_to=2",
                                           "iterative.min_width=2"],
               retrain_overrides=small, runs_dir=str(tmp_path / "runs"))
    cfg.update(extra)
    return CompressBenchConfig(**cfg)


def test_compress_suite_tiny_writes_every_part_then_a_latency_pass(tmp_path):
    cfg = tiny_config(tmp_path)
    out = tmp_path / "compress.json"
    lines: list[str] = []
    run_suites(["compress"], out, compress_cfg=cfg, log=lines.append)
    data = json.loads(out.read_text())
    entry = data["suites"]["compress"]
    recs = {r["key"]: r for r in entry["records"]}
    assert set(recs) == {"base", "base+ft", "drc@0.5", "l1@0.5", "scratch@0.5", "dip:plain", "dip:reparam", "dip:distill",
                         "dip:progressive", "dip:iterative"}
    assert entry["protocol"]["minutes"] == 1.0 and entry["protocol"]["rates"] == [0.5]
    assert entry["protocol"]["clock"].startswith("process CPU time")
    for r in recs.values():
        assert r["macs"] > 0 and r["params"] > 0 and r["seconds"] >= 0
        assert set(r["eval"]) == {"Tiny5"} and math.isfinite(r["eval"]["Tiny5"]["psnr"]) and r["eval"]["Tiny5"]["images"] == 2
        assert r["latency_ms"] > 0 and isinstance(r["latency"]["loaded_machine"], bool)
        assert r["latency"]["hr_size"] == [32, 48] and r["latency"]["dense_conv_gmacs_per_round"][0] > 0
    base = recs["base"]
    ft = recs["base+ft"]
    assert ft["macs"] == base["macs"] and ft["net_params"] == base["net_params"] and ft["train"]["steps"] == 2
    # the baselines sit at DRC's widths: same net size
    drc = recs["drc@0.5"]
    assert drc["macs"] < base["macs"] and drc["widths"]
    for k in ("l1@0.5", "scratch@0.5"):
        assert recs[k]["widths"] == drc["widths"] and recs[k]["macs"] == drc["macs"]
        assert recs[k]["widths_from"].endswith("drc_0.5/genotype.json")
    assert drc["search"]["steps"] == 2 and drc["train"]["steps"] == 2
    # DIPNet: every stage before pruning is the base net at inference (reparam folds exactly)
    for s in ("plain", "reparam", "distill", "progressive"):
        r = recs[f"dip:{s}"]
        assert r["macs"] == base["macs"] and r["net_params"] == base["net_params"] == base["params"]
        assert r["latency_ms"] == base["latency_ms"]  # one net, measured once in the run
    assert recs["dip:plain"]["recipe"] == []
    assert recs["dip:progressive"]["recipe"][:1] == ["reparam.enabled=true"]
    assert any(x.startswith("train.progressive=") for x in recs["dip:progressive"]["recipe"])
    it = recs["dip:iterative"]
    assert it["macs"] < base["macs"] and it["iterative"]["kept_round"] == 2
    assert it["train_minutes"] + it["prune_minutes"] == pytest.approx(1.0)
    assert any("dip:iterative" in line for line in lines)

    # a latency-only pass: every record measured again, the earlier figure kept beside it
    run_suites(["compress"], out, compress_cfg=tiny_config(tmp_path / "again", parts=["latency"], latency_rounds=2),
               log=lambda m: None)
    again = {r["key"]: r for r in json.loads(out.read_text())["suites"]["compress"]["records"]}
    assert set(again) == set(recs)
    for k, r in again.items():
        assert r["latency"]["measured"].startswith("separate latency pass") and r["latency_ms"] > 0
        assert len(r["latency"]["rounds_ms"]) == 2 and len(r["latency"]["dense_conv_gmacs_per_round"]) == 2
        assert r["latency_previous"]["latency_ms"] == recs[k]["latency_ms"]
        assert r["eval"] == recs[k]["eval"]
        assert r["made_in_run"]["command"] and r["made_in_run"]["machine"]["cpu"]  # who made it, kept


def test_compress_suite_parts_need_their_inputs_first(tmp_path):
    cfg = tiny_config(tmp_path, parts=["l1@0.5"], base_checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(BenchmarkError, match="missing.pt: not found; run the part 'base' first"):
        run_compress_suite(cfg, log=lambda m: None)
    with pytest.raises(BenchmarkError, match="unknown part 'drc@0.4'"):
        run_compress_suite(tiny_config(tmp_path, parts=["drc@0.4"]), log=lambda m: None)


def test_cli_compress_suite_base_part(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    ck_cfg = tiny_config(tmp_path, parts=["base"])
    run_compress_suite(ck_cfg, log=lambda m: None)  # trains the base into runs/base
    base = Path(cfg.runs_dir) / "base" / "best.pt"
    out = tmp_path / "cli.json"
    code = load_tool("benchmark").main(["--suite", "compress", "--parts", "base", "--base-checkpoint", str(base),
                                        "--genotype", cfg.genotype, "--data", *cfg.data, "--eval", *cfg.eval_sets,
                                        "--threads", "1", "--minutes", "2", "--hr-size", "32", "48", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    entry = json.loads(out.read_text())["suites"]["compress"]
    (rec,) = entry["records"]
    assert rec["key"] == "base" and rec["checkpoint"] == str(base) and rec["latency"]["hr_size"] == [32, 48]
    assert entry["protocol"]["base"] == str(base) and entry["protocol"]["minutes"] == 2.0
    assert "unpruned (given base)" in capsys.readouterr().out


def test_dip_stages_at_equal_steps(tmp_path):
    """--steps: a DIPNet stage trains for exactly those steps, with no time limit, and says so."""
    cfg = tiny_config(tmp_path, parts=["dip:plain", "dip:reparam"], steps=3, retrain_overrides=["data.batch=2"],
                      latency=False)
    records, protocol = run_compress_suite(cfg, log=lambda line: None)
    assert protocol["dip_steps"] == 3
    for rec in records:
        assert rec["step_budget"] == 3 and rec["minutes"] is None and rec["train"]["steps"] == 3
    with pytest.raises(BenchmarkError, match="dip:iterative"):
        tiny_config(tmp_path, parts=["dip:iterative"], steps=3).validate()
    with pytest.raises(BenchmarkError, match="--steps"):
        tiny_config(tmp_path, parts=["dip:plain"], steps=0).validate()
