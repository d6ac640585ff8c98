"""The multi-seed quality protocol (``tools/benchmark.py --suite quality --seeds``) on tiny settings:
a tiny search per seed, tiny images, a few steps. Only the protocol's bookkeeping is checked here
(records, ±5 % random nets, held-out choice, aggregates, reuse), never which net wins."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from conftest import load_tool
from test_benchmark import make_images

from hdnas.bench.common import BenchmarkError, file_lock
from hdnas.bench.quality import QualityBenchConfig, SeedsConfig, held_out_part, searched_genotype
from hdnas.bench.suites import run_suites
from hdnas.core.cost import cost_bounds, count
from hdnas.core.data import build_dataset
from hdnas.core.genotype import Genotype
from hdnas.core.space import SearchSpace
from hdnas.zoo import random_genotypes
from hdnas.zoo.sampler import _key

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_SEARCH = ["threads=1", "space.channels=8", "space.cells=2", "space.steps=2", "space.fusion_cells=1",
               "space.ops=[conv_1x1, conv_3x3, sep_conv_3x3, dil_conv_3x3]", "data.patch=8", "data.batch=4",
               "data.val_max_images=1", "search.epochs=2", "search.steps_per_epoch=2", "search.warmup_epochs=1"]
KINDS = ["searched", "rfdn", "random", "random", "random"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds_data")
    return make_images(root / "train", n=10), make_images(root / "Eval", n=2, seed=1)


def seeds_cfg(tmp_path: Path, data, **multi) -> QualityBenchConfig:
    train, evals = data
    opts = dict(steps=2, minutes=0.01, n_random=3, budget=None, search_overrides=list(TINY_SEARCH))
    return QualityBenchConfig(scale=2, data=[str(train)], eval_sets=[str(evals)], batch=2, patch=8, threads=1,
                              runs_dir=str(tmp_path / "runs"), seeds=[0, 1], multi=SeedsConfig(**{**opts, **multi}))


def test_seeds_protocol_records_aggregates_and_reuse(tmp_path, data):
    out = tmp_path / "seeds.json"
    lines: list[str] = []
    run_suites(["quality"], out, quality_cfg=seeds_cfg(tmp_path, data), log=lines.append)
    assert any(line.startswith("[quality] plan:") and "as two processes side by side" in line for line in lines)
    suite = json.loads(out.read_text())["suites"]["quality"]
    recs = {r["key"]: r for r in suite["records"]}
    evals = str(data[1])
    searched = {}
    for seed in (0, 1):
        search = recs[f"s{seed}|search"]
        path = Path(search["genotype_path"])
        geno = Genotype.from_dict(json.loads(path.read_text()))
        assert path.parent.name == f"s{seed}" and geno.provenance["seed"] == seed
        assert search["macs"] == count(geno).macs
        searched[seed] = path
        for arm in ("steps", "minutes"):
            unit = [recs[f"s{seed}|{arm}|{i}|{kind}"] for i, kind in enumerate(KINDS)]
            assert unit[0]["genotype"] == geno.to_dict()
            for r in unit:
                assert r["seed"] == seed and r["arm"] == arm and r["target_macs"] == search["macs"]
                assert r["macs"] == count(Genotype.from_dict(r["genotype"])).macs
                assert r["eval"][evals]["images"] == 2 and r["held_out"]["images"] == 1
                if arm == "steps":
                    assert r["train"]["steps"] == 2
            for r in unit[2:]:  # random nets of the same space within ±5 % of this seed's searched net
                assert 0.95 <= r["macs"] / search["macs"] <= 1.05
                assert r["genotype"]["provenance"]["tool"] == "hdnas.zoo.random_genotypes"
            assert len({json.dumps(r["genotype"]["cells"]) for r in unit[2:]} | {json.dumps(geno.to_dict()["cells"])}) == 4

    summary = suite["summary"]
    assert "held out of the training data" in summary["selection"]
    for arm in ("steps", "minutes"):
        a = summary["arms"][arm]
        assert set(a["kinds"]) == {"searched", "best_random", "mean_random", "rfdn"}
        for seed in (0, 1):
            row = a["per_seed"][str(seed)]
            rand = [recs[f"s{seed}|{arm}|{i}|random"] for i in (2, 3, 4)]
            best = max(rand, key=lambda r: r["held_out"]["psnr"])  # chosen on held-out images, not on the eval set
            assert row["best_random"]["name"] == best["name"]
            assert row["best_random"]["eval"][evals]["psnr"] == pytest.approx(best["eval"][evals]["psnr"], abs=1e-4)
            assert row["mean_random"]["eval"][evals]["psnr"] == pytest.approx(
                statistics.fmean(r["eval"][evals]["psnr"] for r in rand), abs=1e-4)
        st = a["kinds"]["searched"]["eval"][evals]["psnr"]
        values = [recs[f"s{s}|{arm}|0|searched"]["eval"][evals]["psnr"] for s in (0, 1)]
        assert st["n"] == 2 and st["mean"] == pytest.approx(statistics.fmean(values), abs=1e-4)
        assert st["std"] == pytest.approx(statistics.stdev(values), abs=1e-4)
        for name, other in (("searched-best_random", "best_random"), ("searched-rfdn", "rfdn")):
            m = a["margins"][name]["psnr_db"][evals]
            for seed in (0, 1):
                row = a["per_seed"][str(seed)]
                assert m["per_seed"][str(seed)] == pytest.approx(
                    row["searched"]["eval"][evals]["psnr"] - row[other]["eval"][evals]["psnr"], abs=2e-4)
            assert m["n"] == 2 and m["mean"] == pytest.approx(statistics.fmean(m["per_seed"].values()), abs=1e-4)
    report = "\n".join(lines)
    assert "searched - best random" in report and "mean ± std" in report

    # a second invocation reuses the searched genotypes and the finished models
    stamps = {s: p.stat().st_mtime_ns for s, p in searched.items()}
    again: list[str] = []
    run_suites(["quality"], out, quality_cfg=seeds_cfg(tmp_path, data), log=again.append)
    assert {s: p.stat().st_mtime_ns for s, p in searched.items()} == stamps
    assert not any("searching" in line for line in again)
    assert any("20 model(s) already done" in line for line in again)
    assert any("nothing left to do" in line for line in again)
    assert json.loads(out.read_text())["suites"]["quality"]["summary"] == summary

    # --redo trains again, still on the genotypes searched before; only the chosen models
    redo: list[str] = []
    cfg = seeds_cfg(tmp_path, data, redo=True, arms=["steps"])
    cfg.seeds, cfg.model_index = [1], [0]
    run_suites(["quality"], out, quality_cfg=cfg, log=redo.append)
    assert {s: p.stat().st_mtime_ns for s, p in searched.items()} == stamps
    assert sum("s1 steps 0: searched" in line for line in redo) == 1 and not any("searching" in x for x in redo)

    # a changed search config is refused, not silently mixed with the genotypes searched before
    with pytest.raises(BenchmarkError, match="searched with search.epochs"):
        searched_genotype(seeds_cfg(tmp_path, data, search_overrides=TINY_SEARCH + ["search.epochs=3"]), 0,
                          [str(data[0])], log=lambda m: None)


def test_random_genotypes_exclude_the_net_they_are_compared_with():
    space = SearchSpace(scale=2, channels=8, cells=2, steps=2, fusion_cells=1,
                        ops=["conv_1x1", "conv_3x3", "sep_conv_3x3", "dil_conv_3x3"])
    lo, hi = cost_bounds(space)
    everything = random_genotypes(space, 40, 0, (lo, hi))
    banned = everything[:5]
    drawn = random_genotypes(space, 40, 0, (lo, hi), exclude=banned)
    assert not {_key(g) for g in drawn} & {_key(g) for g in banned}


def test_held_out_part_is_disjoint_and_seeded(data):
    images = build_dataset([str(data[0])], 2, "train")
    train, held = held_out_part(images, 0.3, seed=0)
    assert len(held) == 3 and len(train) == 7 and not set(train.names) & set(held.names)
    assert held_out_part(images, 0.3, seed=0)[1].names == held.names
    assert held_out_part(images, 0.3, seed=1)[1].names != held.names


def test_file_lock_shares_work_between_holders(tmp_path):
    lock = tmp_path / "unit" / "claim.lock"
    with file_lock(lock, block=False) as first:
        assert first
        with file_lock(lock, block=False) as second:  # another open file: as another process would see it
            assert not second
    with file_lock(lock, block=False) as third:
        assert third


def test_cli_seeds_option_checks(tmp_path, capsys):
    tool = load_tool("benchmark")
    out = tmp_path / "cli.json"
    assert tool.main(["--suite", "quality", "--seeds", "0", "1", "--seed", "3", "--json", str(out)]) == 2
    assert "not used with --seeds" in capsys.readouterr().err
    assert tool.main(["--suite", "quality", "--seeds", "0", "0", "--json", str(out)]) == 2
    assert "distinct seeds" in capsys.readouterr().err
