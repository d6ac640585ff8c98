"""The benchmark harness on tiny settings: fields present, numbers positive, JSON written and merged.

Timings are never asserted (the machine is shared); only that they exist and are positive.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_tool
import torch
from PIL import Image

from hdnas.bench.common import FORMAT, BenchmarkError, load_results, merge_suite
from hdnas.bench.models import ModelsBenchConfig, run_models_suite
from hdnas.bench.quality import QualityBenchConfig, quality_models, run_quality_suite, train_for_minutes
from hdnas.bench.search import SearchBenchConfig, search_case
from hdnas.bench.suites import run_suites
from hdnas.core.atomic import atomic_write_json
from hdnas.core.cost import count
from hdnas.core.machine import machine_info
from hdnas.core.timing import dense_conv_gmacs, time_fn
from hdnas.core.genotype import CellGenotype, Genotype

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]

TINY_SPACE = """\
name: tiny
channels: 8
cells: 2
steps: 2
ops: [conv_1x1, conv_3x3, sep_conv_3x3, dil_conv_3x3]
esa: true
cell_inputs: 1
fusion_cells: 1
"""


def make_images(folder: Path, n: int = 4, size: int = 48, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
        Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(folder / f"img{i}.png")
    return folder


def tiny_genotype(scale: int = 2) -> Genotype:
    return Genotype(scale=scale, channels=8, cells=[CellGenotype(["conv_3x3", "sep_conv_3x3"], [0]),
                                                    CellGenotype(["conv_1x1", "dil_conv_3x3"], [1])], fusion=[1, 2])


def positive_timing(t: dict) -> bool:
    return t["n"] >= 1 and 0 < t["min"] <= t["median"] <= t["max"]


def test_machine_info_has_the_essentials_and_no_hostname():
    import socket

    info = machine_info()
    for key in ("cpu", "logical_cores", "torch", "torch_threads", "date", "python", "load_average"):
        assert key in info
    assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads()
    assert socket.gethostname() not in json.dumps(info)


def test_time_fn_counts_warmup_and_repeats():
    calls = []
    t = time_fn(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(t.times) == 3 and all(x >= 0 for x in t.times)
    assert set(t.as_ms()) == {"median", "min", "max", "n"}
    assert dense_conv_gmacs(channels=8, lr_size=(16, 16), warmup=0, repeats=1) > 0


def test_results_merge_replaces_by_key_and_checks_protocol(tmp_path):
    res = load_results(tmp_path / "r.json")
    merge_suite(res, "quality", {"date": "a"}, [{"key": "0", "v": 1}, {"key": "1", "v": 2}], protocol={"m": 8})
    merge_suite(res, "quality", {"date": "b"}, [{"key": "1", "v": 3}], protocol={"m": 8})
    recs = {r["key"]: r for r in res["suites"]["quality"]["records"]}
    assert recs["0"]["v"] == 1 and recs["1"]["v"] == 3 and recs["1"]["run"] == 1
    assert [r["id"] for r in res["suites"]["quality"]["runs"]] == [0, 1]
    merge_suite(res, "quality", {"date": "c"}, [{"key": "0", "v": 4}], protocol={"m": 8})
    assert [r["id"] for r in res["suites"]["quality"]["runs"]] == [1, 2]  # run 0 no longer referenced
    with pytest.raises(BenchmarkError, match="another protocol.*m"):
        merge_suite(res, "quality", {}, [{"key": "2"}], protocol={"m": 30})
    atomic_write_json(tmp_path / "r.json", res)
    assert load_results(tmp_path / "r.json") == json.loads((tmp_path / "r.json").read_text())
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BenchmarkError, match="not a valid results file"):
        load_results(tmp_path / "bad.json")


def test_search_case_in_process(tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    for order in (1, 2):
        r = search_case(str(space), scale=2, batch=2, patch=8, order=order, mixed="fused", warmup=1, repeats=1,
                          threads=1)
        assert r["order"] == order and r["threads"] == 1
        assert positive_timing(r["weight_ms"]) and positive_timing(r["arch_ms"])
        assert r["peak_rss_mib"] > 0 and r["weight_params"] > 0 and r["arch_params"] > 0 and r["data_ms"] >= 0


def test_search_suite_in_a_worker_writes_json(tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    cfg = SearchBenchConfig(spaces=[str(space)], scales=[2], batch=2, patch=8, orders=[1], mixed=["plain"],
                              warmup=0, repeats=1, threads=1, timeout_s=120)
    out = tmp_path / "bench.json"
    run_suites(["search"], out, search_cfg=cfg, log=lambda m: None)
    data = json.loads(out.read_text())
    suite = data["suites"]["search"]
    assert data["format"] == FORMAT
    assert suite["runs"][0]["machine"]["cpu"] and "dlsr_reference" not in suite["runs"][0]
    (rec,) = suite["records"]
    assert "error" not in rec, rec
    assert rec["key"] == "tiny|x2|b2|p8|plain|order1"
    assert positive_timing(rec["weight_ms"]) and positive_timing(rec["arch_ms"]) and rec["peak_rss_mib"] > 0


def test_models_suite_tiny(tmp_path):
    gpath = tmp_path / "tiny_x2.json"
    tiny_genotype(2).save(gpath)
    cfg = ModelsBenchConfig(models=["fsrcnn", "imdn", "bicubic"], genotypes=[str(gpath)], derived_dir=None,
                              scales=[2], hr_size=(24, 32), warmup=0, repeats=1, compile=False,
                              onnx=True, fvcore_full_size=False)
    records, dense = run_models_suite(cfg, log=lambda m: None)
    assert dense["before_channels_last"] > 0 and dense["after_channels_last"] > 0
    by = {r["name"]: r for r in records}
    assert set(by) == {str(gpath), "fsrcnn", "imdn", "bicubic"}
    for name, r in by.items():
        assert "error" not in r, r
        assert r["latency_lr_size"] == [12, 16]
        for variant in ("eager_nchw", "eager_channels_last"):
            assert positive_timing(r["latency_ms"][variant])
        assert "skipped" in r["latency_ms"]["compile"]
        if name != "bicubic":
            assert r["params"] == r["params_counted"] > 0 and r["macs"] > 0
            assert r["fvcore_plus_extras_equals_ours"] is True
            assert r["latency_ms"]["eager_channels_last"]["gmacs_per_s"] > 0
            ort = r["latency_ms"]["onnxruntime"]
            assert "skipped" in ort or (positive_timing(ort) and ort["max_abs_diff"] < 1e-3)
    assert by[str(gpath)]["macs"] == count(tiny_genotype(2)).macs
    assert by["fsrcnn"]["macs_paper_convention"] > by["fsrcnn"]["macs"]


def test_train_for_minutes_uses_the_retraining_engine(tmp_path):
    from hdnas.core.data import from_arrays

    rng = np.random.default_rng(0)
    data = from_arrays([(f"a{i}", (rng.random((32, 32, 3)) * 255).astype(np.uint8)) for i in range(2)], 2, "t")
    net, stats = train_for_minutes(tiny_genotype(2), data, minutes=5, seed=0, batch=2, patch=8, max_steps=3,
                                     run_dir=tmp_path / "q", threads=1, device="cpu")
    assert stats.steps == 3 and stats.seconds > 0 and stats.patches_per_s > 0
    assert not net.training and (tmp_path / "q" / "last.pt").is_file()
    net2, stats2 = train_for_minutes(tiny_genotype(2), data, minutes=0.002, seed=0, batch=2, patch=8,
                                       run_dir=tmp_path / "t", threads=1, device="cpu")
    assert 0 < stats2.seconds < 30 and np.isfinite(stats2.final_loss)  # stopped by the time budget, validated


def test_quality_suite_tiny_merges_model_by_model(tmp_path):
    train = make_images(tmp_path / "train", n=4)
    evals = make_images(tmp_path / "Eval", n=2, seed=1)
    gpath = tmp_path / "searched_x2.json"
    tiny_genotype(2).save(gpath)
    out = tmp_path / "q.json"
    base = dict(genotype=str(gpath), scale=2, minutes=0.005, data=[str(train)], eval_sets=[str(evals)], n_random=1,
                batch=2, patch=8, runs_dir=str(tmp_path / "runs"), threads=1)
    run_suites(["quality"], out, quality_cfg=QualityBenchConfig(**base, model_index=[0]), log=lambda m: None)
    run_suites(["quality"], out, quality_cfg=QualityBenchConfig(**base, model_index=[1, 2]), log=lambda m: None)
    suite = json.loads(out.read_text())["suites"]["quality"]
    recs = {r["key"]: r for r in suite["records"]}
    assert set(recs) == {"bicubic", "0|searched", "1|rfdn", "2|random"}
    target = suite["protocol"]["target_macs"]
    assert target == count(tiny_genotype(2)).macs
    assert 0.9 <= recs["2|random"]["macs_ratio_to_target"] <= 1.1
    for key, r in recs.items():
        ev = r["eval"][str(evals)]
        assert ev["images"] == 2 and ev["psnr"] > 0 and 0 < ev["ssim"] <= 1
        if key != "bicubic":
            assert r["train"]["steps"] >= 1 and r["params"] > 0
    with pytest.raises(BenchmarkError, match="another protocol"):
        run_suites(["quality"], out, quality_cfg=QualityBenchConfig(**{**base, "minutes": 0.01}, model_index=[2]),
                     log=lambda m: None)
    with pytest.raises(BenchmarkError, match="--model-index 7"):
        run_quality_suite(QualityBenchConfig(**base, model_index=[7]), log=lambda m: None)


def test_quality_without_genotype_says_what_to_do(tmp_path):
    with pytest.raises(BenchmarkError, match="no searched genotype"):
        quality_models(QualityBenchConfig(genotype=str(tmp_path / "missing_x4.json")))


def test_cli_models_suite(tmp_path, capsys):
    tool = load_tool("benchmark")
    out = tmp_path / "cli.json"
    rc = tool.main(["--suite", "models", "--models", "fsrcnn", "--scales", "3", "--hr-size", "24", "33", "--repeats",
                    "1", "--warmup", "0", "--no-compile", "--no-onnx", "--no-derived", "--threads", "1", "--json",
                    str(out)])
    assert rc == 0
    assert "fsrcnn" in capsys.readouterr().out
    rec = json.loads(out.read_text())["suites"]["models"]["records"][0]
    assert rec["key"] == "fsrcnn|x3|33x24" and rec["latency_ms"]["onnxruntime"]["skipped"]
    assert tool.main(["--suite", "quality", "--genotype", str(tmp_path / "none_x4.json"), "--json", str(out)]) == 2
