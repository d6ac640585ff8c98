"""The latency model: cache reuse and invalidation, corrupt caches, the expected latency (one-hot sum,
gradients), the latency budget in the search, summary's ``latency_ms``. A fake timer (conftest) stands in
for the clock, so no test times a real conv at full size."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import REPO_ROOT, fake_latency_timer, load_tool
from hdnas.core import latency
from hdnas.core.config import ConfigError
from hdnas.core.cost import expected_cost, indicator_probs
from hdnas.core.genotype import random_genotype
from hdnas.core.space import ArchProbs, SearchSpace

pytestmark = pytest.mark.usefixtures("single_thread")


class CountingTimer:
    def __init__(self):
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return fake_latency_timer(*args)


def small_space(**kw) -> SearchSpace:
    fields = dict(scale=4, channels=8, cells=3, steps=2, cell_inputs=2, fusion_cells=2)
    fields.update(kw)
    return SearchSpace(**fields)


HR = (48, 80)


def test_cached_table_is_reused_and_rebuilt_when_its_key_changes():
    timer = CountingTimer()
    space = small_space()
    first = latency.latency_model(space, hr_size=HR, timer=timer, progress=False)
    n = timer.calls
    assert n > 0 and first.path is not None and first.path.is_file()
    again = latency.latency_model(space, hr_size=HR, timer=timer, progress=False)
    assert timer.calls == n and again.parts_ms == first.parts_ms  # read from the cache
    latency.latency_model(space, latency.Target(threads=torch.get_num_threads() + 1), hr_size=HR, timer=timer,
                          progress=False)
    assert timer.calls == 2 * n  # threads are in the key
    other = latency.latency_model(small_space(channels=12), hr_size=HR, timer=timer, progress=False)
    assert timer.calls == 3 * n and other.path != first.path  # so are the sizes
    latency.latency_model(space, latency.Target(keep_memory=False), hr_size=HR, timer=timer, progress=False)
    assert timer.calls == 4 * n  # and how memory is kept while timing
    # a space that differs only in its op list reads the same table (every registry op is timed)
    latency.latency_model(small_space(ops=["conv_3x3", "sep_conv_3x3"]), hr_size=HR, timer=timer, progress=False)
    assert timer.calls == 4 * n


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "hdnas-latency/1", "key": {}}),
                                     json.dumps({"format": "other"})])
def test_corrupt_cache_is_rebuilt_with_a_warning_naming_it(content):
    space = small_space()
    path = latency.cache_path(latency.target_key(space, hr_size=HR))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    timer = CountingTimer()
    with pytest.warns(UserWarning, match=path.name):
        model = latency.latency_model(space, hr_size=HR, timer=timer, progress=False)
    assert timer.calls > 0 and model.path == path
    assert json.loads(path.read_text())["parts_ms"] == model.parts_ms  # rewritten, readable


def test_expected_latency_equals_the_table_sum_at_one_hot():
    space = small_space()
    model = latency.latency_model(space, hr_size=HR, progress=False)
    rng = random.Random(0)
    for _ in range(8):
        g = random_genotype(space, rng)
        probs = indicator_probs(g, space)
        for corrected in (True, False):
            assert float(model.expected(space, probs, corrected)) == pytest.approx(model.predict(g, corrected), rel=1e-9)
        manual = model.parts_ms["backbone"] + sum(
            model.parts_ms["shell"] + (model.parts_ms[f"combine:{len(g.cells[i - 1].inputs)}"]
                                       if len(g.cells[i - 1].inputs) > 1 else 0.0)
            + sum(model.parts_ms[f"op:{o}"] for o in g.cells[i - 1].ops) for i in g.live_cells())
        assert model.predict(g, corrected=False) == pytest.approx(manual, rel=1e-9)


def test_expected_latency_gradient_reaches_alpha_and_beta():
    space = small_space()
    model = latency.latency_model(space, hr_size=HR, progress=False)
    torch.manual_seed(0)
    alpha = torch.randn(space.cells, space.steps, len(space.ops), requires_grad=True)
    betas = [torch.randn(i, requires_grad=True) for i in range(1, space.cells + 1)]
    fusion = torch.randn(space.cells, requires_grad=True)
    probs = ArchProbs(alpha.softmax(-1), [b.softmax(-1) for b in betas], fusion.softmax(-1))
    e = model.expected(space, probs)
    assert e.requires_grad
    e.backward()
    assert alpha.grad.abs().sum() > 0 and fusion.grad.abs().sum() > 0
    assert any(b.grad is not None and b.grad.abs().sum() > 0 for b in betas[1:])


class SlowingTimer(CountingTimer):
    """The fake timer on a machine that slows by ``step`` per call: the drift the speed reference catches."""

    def __init__(self, step: float):
        super().__init__()
        self.step = step

    def __call__(self, *args):
        self.calls += 1
        return fake_latency_timer(*args) * (1 + self.step * self.calls)


def test_the_table_records_its_speed_reference_and_warns_when_the_machine_moved():
    space = small_space()
    steady = latency.build_model(space, hr_size=HR, timer=CountingTimer(), progress=False)
    ref = steady.fit["reference_ms"]
    assert ref["start"] == ref["end"] > 0 and ref["drift"] == 0 and steady.reference_ms == ref["start"]
    # the reference is one of the probe nets: timed alike, so the in-context table holds its time too
    assert steady.fit["probe_nets_ms"][latency.BASE_OP] == pytest.approx(ref["start"], abs=1e-3)
    with pytest.warns(UserWarning, match="not steady"):
        moved = latency.build_model(space, hr_size=HR, timer=SlowingTimer(0.02), progress=False)
    assert moved.fit["reference_ms"]["drift"] > latency.STEADY_TOLERANCE
    assert latency.LatencyModel(steady.key, steady.parts_ms).reference_ms is None  # a table from before


def test_the_correction_is_applied_only_when_measurement_shows_one():
    assert latency.fit_correction([100, 200], [101, 199])[0] == 1.0
    factor, fit = latency.fit_correction([100, 200], [70, 140])
    assert factor == pytest.approx(0.7) and fit["applied"]
    assert latency.fit_correction([], [])[0] == 1.0


def test_expected_cost_serves_multi_adds_and_latency_alike():
    space = small_space()
    g = random_genotype(space, 3)
    table = latency.latency_model(space, hr_size=HR, progress=False).table(space)
    assert float(expected_cost(space, indicator_probs(g, space), table)) == pytest.approx(table.total(g, space.ops))


@pytest.mark.parametrize("text,ms", [("120ms", 120.0), ("0.12s", 120.0), ("120", 120.0), (85, 85.0), (" 7.5MS ", 7.5)])
def test_parse_duration(text, ms):
    assert latency.parse_duration_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("bad", ["-5ms", "0ms", "abc", "12 parsecs", True])
def test_parse_duration_refuses(bad):
    with pytest.raises(ConfigError, match="search.latency_budget"):
        latency.parse_duration_ms(bad, "search.latency_budget")


def test_latency_budget_reaches_the_architect(tmp_path):
    from test_search import make_images, tiny_overrides

    from hdnas.core.cost import table_bounds
    from hdnas.search.engine import SearchError, Searcher, load_search_config

    images = make_images(tmp_path / "imgs")
    cfg = load_search_config(None, None, tiny_overrides(tmp_path, images))
    model = latency.latency_model(cfg.space, progress=False)
    lo, hi = (v * model.factor for v in table_bounds(cfg.space, model.table(cfg.space)))
    budget = (lo + hi) / 2
    for extra in ([], ["search.budget=900M"]):  # alone, and beside the Multi-Adds budget
        # margin 0: the tiny net's argmax may sit within the default ±5 % band, where the pull is zero
        cfg = load_search_config(None, None, tiny_overrides(tmp_path, images) + [f"search.latency_budget={budget}ms",
                                                                                "search.penalty_margin=0"] + extra)
        s = Searcher(cfg, progress=False, log=False)
        assert s.architect.latency_budget == pytest.approx(budget)
        pen, _, expected_ms = s.architect.penalty()
        assert pen.requires_grad and float(expected_ms.detach()) > 0
        grads = torch.autograd.grad(pen, s.architect.arch_params, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    cfg = load_search_config(None, None, tiny_overrides(tmp_path, images) + [f"search.latency_budget={lo / 10}ms"])
    with pytest.raises(SearchError, match="latency_budget .* outside"):
        Searcher(cfg, progress=False, log=False)


def test_latency_search_records_its_budget_and_prediction(tmp_path):
    from test_search import make_images, tiny_overrides

    from hdnas.search.engine import run_search, load_search_config

    images = make_images(tmp_path / "imgs")
    cfg = load_search_config(None, None, tiny_overrides(tmp_path, images))
    model = latency.latency_model(cfg.space, progress=False)
    from hdnas.core.cost import table_bounds

    lo, hi = (v * model.factor for v in table_bounds(cfg.space, model.table(cfg.space)))
    budget = lo + 0.3 * (hi - lo)
    cfg = load_search_config(None, None, tiny_overrides(tmp_path, images) + [f"search.latency_budget={budget}ms"])
    out = run_search(cfg, tmp_path / "g.json", progress=False, command=["test"])
    prov = out.genotype.provenance
    assert prov["latency_budget_ms"] == pytest.approx(budget)
    assert isinstance(prov["budget_swaps"], list) and isinstance(prov["argmax_latency_ms"], float)
    assert prov["latency_ms_predicted"] == pytest.approx(model.predict(out.genotype), abs=0.01)


@pytest.mark.parametrize("value", ["-5ms", "fast"])
def test_search_tool_refuses_a_bad_latency_budget(value, capsys):
    assert load_tool("search").main(["--latency-budget", value]) == 2
    err = capsys.readouterr().err
    assert "search.latency_budget" in err and value in err


def test_summary_json_and_text_report_latency(capsys):
    tool = load_tool("summary")
    path = str(REPO_ROOT / "derived" / "x4.json")
    assert tool.main([path, "--json", "--no-fvcore"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["latency_ms"] > 0 and info["latency_ms_sum_of_parts"] > 0
    assert "CPU" in info["latency_target"]
    assert tool.main([path, "--no-fvcore"]) == 0
    assert f"{info['latency_ms']:.1f} ms predicted" in capsys.readouterr().out
    assert tool.main([path, "--json", "--no-fvcore", "--no-latency"]) == 0
    assert "latency_ms" not in json.loads(capsys.readouterr().out)


def test_real_timer_on_a_tiny_table():
    """The real clock end to end, at a tiny size (a few ms)."""
    space = small_space()
    target = latency.Target(warmup=1, repeats=1)
    model = latency.build_model(space, target, hr_size=(16, 24), timer=latency.measure, progress=False)
    assert all(v > 0 for v in model.parts_ms.values()) and model.fit["samples"] == latency.CORRECTION_SAMPLES


_FAULTS_SCRIPT = """
import torch
from hdnas.core.timing import _libc, kept_memory, minor_faults_per_call
torch.set_num_threads(1)
conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16).eval()
x = torch.rand(1, 16, 512, 1024)  # 32 MiB maps: above glibc's largest mmap threshold

def faults():
    with torch.inference_mode():
        return minor_faults_per_call(lambda: conv(x))

default = faults()
with kept_memory() as applied:
    kept = faults()
after = faults()
with kept_memory(enabled=False) as off:
    pass
print(_libc() is not None, applied, off, default, kept, after)
"""


def test_kept_memory_stops_page_faults_on_reallocation_and_restores_after():
    """In a fresh process (the allocator's state is process-wide and earlier tests change it)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT).stdout.split()
    glibc, applied, off = (v == "True" for v in out[:3])
    if not glibc:
        pytest.skip("not glibc: kept_memory does nothing here")
    default, kept, after = map(float, out[3:])
    assert applied and not off
    # the output's 8,192 pages of 4 KiB are faulted in on every forward by default (fewer with huge pages),
    # reused inside the block, and faulted again once the defaults are back
    assert kept < 100 < min(default, after), (default, kept, after)


def test_onnxruntime_target_times_a_part():
    pytest.importorskip("onnxruntime")
    t = latency.Target(backend="onnxruntime", warmup=1, repeats=1)
    assert latency.measure("op", torch.nn.Conv2d(4, 4, 3, padding=1), torch.rand(1, 4, 8, 8), t) > 0
    assert "onnxruntime" in latency.target_key(small_space(), t, HR)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_target_builds_a_table():
    target = latency.Target(device="cuda", warmup=1, repeats=1)
    model = latency.build_model(small_space(), target, hr_size=(16, 24), timer=latency.measure, progress=False)
    assert model.key["device"] == "cuda" and "gpu" in model.key and all(v > 0 for v in model.parts_ms.values())


def test_cuda_target_is_refused_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(latency.LatencyError, match="cuda"):
        latency.Target(device="cuda").resolved()


def test_latency_suite_statistics():
    from hdnas.bench.latency import accuracy_stats, spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    recs = [{"measured_ms": m, "predicted_ms": {"corrected": p, "sum_of_parts": p * 2}}
            for m, p in [(100, 110), (200, 190), (300, 300)]]
    st = accuracy_stats(recs)
    assert st["corrected"]["median_rel_error"] == pytest.approx(0.05) and st["corrected"]["worst_rel_error"] == pytest.approx(0.1)
    assert st["corrected"]["spearman"] == pytest.approx(1.0)


def test_latency_suite_tiny_records_memory_and_parts_alone(tmp_path):
    """The accuracy part end to end at a tiny size: the allocator record first, then the table and nets,
    each net predicted by the in-context table and by the parts timed alone."""
    from hdnas.bench.latency import LatencyBenchConfig, run_latency_suite

    cfg = LatencyBenchConfig(scales=[4], n_random=3, hr_size=(32, 48), repeats=1, warmup=1, threads=1,
                             derived_dir=None, runs_dir=str(tmp_path))
    lines: list[str] = []
    records, summary = run_latency_suite(cfg, log=lines.append)
    assert records[0]["kind"] == "memory"
    mem = records[0]["parts_alone_ms"]
    assert set(mem) == {"default", "kept"} and set(mem["default"]) == set(mem["kept"]) and "op:conv_3x3" in mem["kept"]
    assert set(records[0]["minor_page_faults_per_forward"]["kept"]) == set(mem["kept"])
    nets = [r for r in records if r["kind"] == "random"]
    assert len(nets) == 3 and all(r["predicted_ms"]["isolated_parts"] > 0 for r in nets)
    assert {"corrected", "sum_of_parts", "isolated_parts", "speed_adjusted"} <= set(summary["x4"])
    for r in nets:  # the reference timed beside each net scales the prediction by the machine's speed now
        assert r["reference_speed"] > 0
        assert r["predicted_ms"]["speed_adjusted"] == pytest.approx(r["predicted_ms"]["corrected"] * r["reference_speed"], rel=1e-3)
        assert r["rel_error_speed_adjusted"] == pytest.approx(r["predicted_ms"]["speed_adjusted"] / r["measured_ms"] - 1, abs=1e-3)
    assert "memory kept" in summary["target"] and any("allocator defaults / memory kept" in line for line in lines)
