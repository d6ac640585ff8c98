"""The ablation suite on a tiny config: the JSON schema, and runs that differ only in their loss terms."""

from __future__ import annotations

import json

import pytest
from conftest import load_tool

from hdnas.bench.ablation import RUNS, AblationBenchConfig, default_json, run_ablation_suite
from hdnas.bench.common import BenchmarkError
from hdnas.bench.suites import run_suites
from hdnas.core.config import first_difference
from test_benchmark import make_images, tiny_genotype

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def tiny(tmp_path):
    """Tiny images, a tiny student and a wider teacher genotype, the suite's options for them."""
    train = make_images(tmp_path / "train", n=6, size=40)
    for name, seed in (("Set5", 1), ("Set14", 2)):
        make_images(tmp_path / name, n=2, size=32, seed=seed)
    student, teacher = tmp_path / "student_x2.json", tmp_path / "teacher_x2.json"
    tiny_genotype(2).save(student)
    wide = tiny_genotype(2)
    wide.channels = 12
    wide.save(teacher)
    base = dict(genotype=str(student), steps=3, seed=0, data=[str(train)],
                eval_sets=[str(tmp_path / "Set5"), str(tmp_path / "Set14")], teacher_genotype=str(teacher),
                teacher_steps=2, threads=1, device="cpu", runs_dir=str(tmp_path / "runs"),
                overrides=["data.patch=8", "data.batch=2", "loss.importance.rounds=2"])
    return tmp_path, base


def test_ablation_json_records_and_runs_that_differ_only_in_the_terms(tiny):
    tmp_path, base = tiny
    out = tmp_path / "ablation.json"
    run_suites(["ablation"], out, ablation_cfg=AblationBenchConfig(**base), log=lambda m: None)
    suite = json.loads(out.read_text())["suites"]["ablation"]
    recs = {r["key"]: r for r in suite["records"]}
    assert set(recs) == {"teacher", "bicubic", *RUNS}
    assert suite["protocol"]["steps"] == 3 and suite["protocol"]["seed"] == 0
    teacher = recs["teacher"]["teacher"]
    assert teacher.endswith("last.pt") and recs["teacher"]["steps"] == 2
    assert recs["teacher"]["forward_ms_per_batch"]["median"] > 0 and recs["c"]["teacher_outputs_seconds"] >= 0 and recs["d"]["teacher_outputs_seconds"] is not None
    for key in RUNS:
        r = recs[key]
        assert {"name", "terms", "teacher", "steps", "minutes", "eval"} <= set(r)
        assert r["steps"] == 3 and r["minutes"] > 0 and r["terms"] == list(RUNS[key][1])
        assert set(r["eval"]) == {"Set5", "Set14"}
        for v in r["eval"].values():
            assert v["psnr"] > 0 and 0 < v["ssim"] <= 1 and v["images"] == 2
        uses = bool({"distill", "importance"} & set(r["terms"]))
        assert r["teacher"] == (teacher if uses else None) and r["teacher_cache"] == uses
    # the runs differ only in the loss terms switched on (and in the teacher the teacher runs get)
    terms = {"loss.l1.enabled", "loss.dual.enabled", "loss.distill.enabled", "loss.importance.enabled",
             "teacher.weights"}
    a = recs["a"]["config"]
    for key in "bcde":
        cfg = json.loads(json.dumps(recs[key]["config"]))
        while (diff := first_difference(a, cfg)) is not None:
            assert diff[0] in terms, diff
            section, name = diff[0].rsplit(".", 1)
            node = cfg
            for part in section.split("."):
                node = node[part]
            node[name] = diff[1]
    # every term changed the result: no two runs scored the same
    scores = {recs[k]["eval"]["Set5"]["psnr"] for k in RUNS}
    assert len(scores) == len(RUNS)
    # a variant of the importance runs lands beside them; the teacher is reused, not trained again
    variant = AblationBenchConfig(**{**base, "overrides": base["overrides"] + ["loss.importance.normalize=true"]},
                                  runs=["c"], tag="norm")
    run_suites(["ablation"], out, ablation_cfg=variant, log=lambda m: None)
    recs2 = {r["key"]: r for r in json.loads(out.read_text())["suites"]["ablation"]["records"]}
    assert set(recs2) == set(recs) | {"c|norm"} and recs2["c|norm"]["config"]["loss"]["importance"]["normalize"]
    assert recs2["c|norm"]["eval"] != recs["c"]["eval"]
    # no runs: the teacher alone is scored again (its training time read from its checkpoint)
    run_suites(["ablation"], out, ablation_cfg=AblationBenchConfig(**base, runs=[]), log=lambda m: None)
    t = {r["key"]: r for r in json.loads(out.read_text())["suites"]["ablation"]["records"]}["teacher"]
    assert t["train"]["train_seconds"] > 0 and t["minutes"] > 0 and t["eval"] == recs["teacher"]["eval"]
    with pytest.raises(BenchmarkError, match="another protocol"):
        run_suites(["ablation"], out, ablation_cfg=AblationBenchConfig(**{**base, "steps": 4}, runs=["a"]),
                   log=lambda m: None)


def test_ablation_refuses_what_would_make_runs_differ_in_more_than_terms(tiny):
    _, base = tiny
    with pytest.raises(BenchmarkError, match="sets loss.dual.enabled itself"):
        run_ablation_suite(AblationBenchConfig(**{**base, "overrides": ["loss.dual.enabled=false"]}))
    with pytest.raises(BenchmarkError, match="sets teacher.cache itself"):
        run_ablation_suite(AblationBenchConfig(**{**base, "overrides": ["teacher.cache=false"]}))
    with pytest.raises(BenchmarkError, match="need a teacher"):
        run_ablation_suite(AblationBenchConfig(**{**base, "teacher_genotype": None}))
    with pytest.raises(BenchmarkError, match="--runs f"):
        run_ablation_suite(AblationBenchConfig(**base, runs=["a", "f"]))
    assert default_json(AblationBenchConfig(**base)).name.startswith("ablation_x2_")


def test_cli_ablation_runs_a_and_b_without_teacher(tiny, capsys, monkeypatch):
    tmp_path, base = tiny
    monkeypatch.chdir(tmp_path)  # the default run folder is ./runs/benchmark/ablation
    out = tmp_path / "cli.json"
    rc = load_tool("benchmark").main([
        "--suite", "ablation", "--genotype", base["genotype"], "--steps", "2", "--runs", "a", "b", "--threads", "1",
        "--data", *base["data"], "--retrain-overrides", "data.patch=8", "data.batch=2", "--eval", *base["eval_sets"],
        "--json", str(out)])
    assert rc == 0
    recs = {r["key"] for r in json.loads(out.read_text())["suites"]["ablation"]["records"]}
    assert recs == {"bicubic", "a", "b"} and (tmp_path / "runs" / "benchmark" / "ablation").is_dir()
    assert "(b) L1 + dual" in capsys.readouterr().out
    assert load_tool("benchmark").main(["--suite", "models", "--retrain-overrides", "loss.dual.enabled=false"]) == 2
