#!/usr/bin/env python
"""Benchmarks: search speed, model size/speed, the fixed-budget quality protocol and the latency model.

    python tools/benchmark.py --quick                              # every suite on tiny settings (~2 min)
    python tools/benchmark.py --suite search                       # both spaces, x2/x4, batch 8, patch 32
    python tools/benchmark.py --suite search --spaces dlsr --scales 2 --orders 1
    python tools/benchmark.py --suite search --reference ../DLSR-PyTorch --reference-only --threads 1   # beside the reference code
    python tools/benchmark.py --suite models --models rfdn imdn --scales 4
    python tools/benchmark.py --suite quality --genotype derived/x4.json --model-index 0   # one model per command
    python tools/benchmark.py --suite quality --minutes 30 --json runs/benchmark/quality30.json
    python tools/benchmark.py --suite quality --steps 3000                 # equal steps instead of equal minutes
    python tools/benchmark.py --suite quality --seeds 0 1 2 --threads 1    # per seed: search, random, RFDN; 2 arms
    python tools/benchmark.py --suite quality --seeds 0 --arms steps --model-index 0 1   # a part of it
    python tools/benchmark.py --suite latency                      # predictor accuracy, x2/x3/x4 (+ scatter PNG)
    python tools/benchmark.py --suite latency --no-accuracy --budget-genotypes G.json --compare A.json B.json
    python tools/benchmark.py --suite ablation --teacher-genotype derived/x4_25G.json --teacher-steps 2000 \
        --steps 400 --threads 1                                    # loss terms (a)-(e) -> benchmarks/ablation_x4_<date>.json
    python tools/benchmark.py --suite ablation --teacher runs/big/best.pt --runs c e --tag gentle \
        --retrain-overrides loss.importance.alpha=30 loss.importance.b=0.03   # a variant of the importance runs
    python tools/benchmark.py --suite compress --base-checkpoint runs/x4/best.pt --minutes 5 --threads 1
    python tools/benchmark.py --suite compress --base-checkpoint runs/x4/best.pt --minutes 5 --parts drc@0.3 l1@0.3
    python tools/benchmark.py --suite compress --parts latency --threads 2     # latencies again, on a quiet machine

Results merge into --json (default runs/benchmark/benchmark.json, --quick: runs/benchmark/quick.json,
the ablation alone: benchmarks/ablation_x<scale>_<date>.json, --suite compress alone: benchmarks/compress_x<scale>_<date>.json):
a record replaces the one with the same key, so a suite can run piece by piece. Without --suite,
the search and models suites run (quality trains for about an hour; ask for it by name).
All logic lives in hdnas.bench (one module per suite); this file parses arguments and prints.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

# The checkout this tool lives in comes first, so a tool always runs the library beside it
# (not another checkout's editable install).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hdnas.bench.ablation import AblationBenchConfig, default_json  # noqa: E402
from hdnas.bench.common import REPO_ROOT, SUITES, BenchmarkError  # noqa: E402
from hdnas.bench.compress import CompressBenchConfig  # noqa: E402
from hdnas.bench.latency import LatencyBenchConfig  # noqa: E402
from hdnas.bench.models import ModelsBenchConfig  # noqa: E402
from hdnas.bench.quality import QualityBenchConfig  # noqa: E402
from hdnas.bench.search import SearchBenchConfig  # noqa: E402
from hdnas.bench.suites import run_suites  # noqa: E402
from hdnas.core.config import parse_count  # noqa: E402
from hdnas.core.genotype import load_genotype  # noqa: E402
from hdnas.core.errors import HdnasError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", nargs="+", choices=SUITES, help="suites to run (default: search models)")
    p.add_argument("--json", metavar="OUT", help="results file to merge into")
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the harness, numbers are not meaningful")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    g = p.add_argument_group("search suite")
    g.add_argument("--spaces", nargs="+", help="space names or YAML files (default: default dlsr)")
    g.add_argument("--scales", nargs="+", type=int, help="scales (search default: 2 4; models default: 2 3 4)")
    g.add_argument("--batch", type=int, help="batch (search default 8, quality default 16)")
    g.add_argument("--patch", type=int, help="LR patch side (search default 32, quality default 32)")
    g.add_argument("--orders", nargs="+", type=int, choices=(1, 2), help="architecture step orders (default: 1 2)")
    g.add_argument("--mixed", nargs="+", choices=("fused", "plain"), help="MixedOp paths (default: fused plain)")
    g.add_argument("--repeats", type=int, help="timed repeats (median reported; default 5)")
    g.add_argument("--warmup", type=int, help="untimed warm-up runs (default 1)")
    g.add_argument("--timeout", type=float, help="seconds allowed per search configuration (default 570)")
    g.add_argument("--reference", metavar="DIR", help="a checkout of DawnHH/DLSR-PyTorch: time its search steps "
                                                       "beside dlsr.yaml at x2, like for like (skipped without)")
    g.add_argument("--reference-rounds", type=int, help="workers per side, alternating (default 3)")
    g.add_argument("--reference-only", action="store_true", help="only the comparison with --reference")
    g = p.add_argument_group("models suite")
    g.add_argument("--models", nargs="+", help="reference nets (default: rfdn imdn imdn_space fsrcnn bicubic)")
    g.add_argument("--no-derived", action="store_true", help="skip derived/*.json")
    g.add_argument("--hr-size", nargs=2, type=int, metavar=("H", "W"), help="latency output size (default 720 1280)")
    g.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    g.add_argument("--compile-timeout", type=float, help="seconds allowed per compiled net (default 420)")
    g.add_argument("--no-onnx", action="store_true", help="skip onnxruntime")
    g = p.add_argument_group("quality suite")
    g.add_argument("--genotype", nargs="+", help="searched genotype (quality; default derived/x4.json); "
                                                 "models: extra genotypes to measure")
    g.add_argument("--minutes", type=float, help="training minutes per model (quality default 8; with --seeds: the "
                                                 "equal-minutes arm, default 5; compress default 5)")
    g.add_argument("--steps", type=int, help="train every model for these steps instead of --minutes (quality; with "
                                             "--seeds: the equal-steps arm, default 400); "
                                             "steps of --compare (latency, default 2000); "
                                             "compress: the DIPNet stages train for these steps instead of --minutes")
    g.add_argument("--data", nargs="+", metavar="DIR", help="training folders (default: T91 BSD200 under $HDNAS_DATA)")
    g.add_argument("--eval", nargs="+", metavar="SET", help="evaluation sets (default: Set5 Set14)")
    g.add_argument("--model-index", nargs="+", type=int, help="run only these models of the protocol (0 searched, "
                                                              "1 RFDN-style, 2.. random)")
    g.add_argument("--n-random", type=int, help="random genotypes (default 5; with --seeds 3)")
    g.add_argument("--target-macs", help="Multi-Adds to match (default: the searched genotype's), e.g. 5G")
    g.add_argument("--seed", type=int, help="seed (default 0)")
    g.add_argument("--seeds", nargs="+", type=int, help="the multi-seed protocol: per seed a search (reused when "
                   "already under the runs folder), random nets within +-5%% of it, RFDN-style, trained in both arms")
    g.add_argument("--arms", nargs="+", choices=("steps", "minutes"), help="--seeds: arms to run (default: both)")
    g.add_argument("--search-budget", help="--seeds: Multi-Adds budget of each search (default 10G; 'none': the "
                                           "search config's)")
    g.add_argument("--search-config", help="--seeds: run config YAML of each search (default: the project default)")
    g.add_argument("--search-overrides", nargs="+", metavar="KEY=VALUE", help="--seeds: search config overrides, as "
                                                                              "tools/search.py takes them")
    g.add_argument("--held-out", type=float, help="--seeds: share of the training images held out to pick the best "
                                                  "random net (default 0.1)")
    g.add_argument("--redo", action="store_true", help="--seeds: train again models already done")
    g.add_argument("--runs-dir", help="quality: folder of the models' runs and, with --seeds, of the searched genotypes "
                                      "(default runs/benchmark/quality); ablation: of its runs and teacher "
                                      "(default runs/benchmark/ablation); compress: of its runs "
                                      "(default runs/benchmark/compress)")
    g.add_argument("--plan-only", action="store_true", help="--seeds: print the CPU-time estimate (after short probes) "
                                                            "and stop")
    g = p.add_argument_group("latency suite")
    g.add_argument("--n-random-latency", type=int, help="random genotypes per scale (default 20)")
    g.add_argument("--no-accuracy", action="store_true", help="skip the predictor-accuracy part")
    g.add_argument("--no-rebuild", action="store_true", help="use cached latency tables (default: measure afresh)")
    g.add_argument("--budget-genotypes", nargs="+", metavar="G", help="genotypes measured against their latency budget")
    g.add_argument("--compare", nargs="+", metavar="G", help="genotypes trained for --steps and scored on --eval")
    g.add_argument("--plot", help="scatter PNG (default: the results file with .png)")
    g = p.add_argument_group("ablation suite (also --genotype, --steps, --seed, --data, --eval, --runs-dir)")
    g.add_argument("--runs", nargs="*", help="runs of the ablation (default: a b c d e; none: score the teacher alone)")
    g.add_argument("--teacher", help="trained teacher checkpoint for runs c, d, e")
    g.add_argument("--teacher-genotype", help="train this genotype as the teacher first (instead of --teacher)")
    g.add_argument("--teacher-steps", type=int, help="steps of that teacher (default 2000)")
    g.add_argument("--no-teacher-cache", action="store_true",
                   help="run the teacher on every batch instead of once per training image")
    g.add_argument("--tag", help="record key suffix for a variant (e.g. of the importance options)")
    g.add_argument("--retrain-overrides", nargs="+", metavar="KEY=VALUE",
                   help="retraining config overrides for every run, as tools/retrain.py takes them "
                        "(not the terms, seed, steps or teacher, which the suite sets)")
    g = p.add_argument_group("compress suite (also --genotype, --minutes, --data, --eval, --seed, --scales)")
    g.add_argument("--base-checkpoint", metavar="CK", help="the retrained net to compress (default: retrain --genotype "
                                                            "for --base-minutes first)")
    g.add_argument("--base-minutes", type=float, help="minutes of the base retraining (default 30)")
    g.add_argument("--rates", nargs="+", type=float, help="DRC rates (default 0.3 0.5)")
    g.add_argument("--parts", nargs="+", help="run only these parts: base, drc@R, l1@R, scratch@R, dip:plain, "
                                              "dip:reparam, dip:distill, dip:progressive, dip:iterative, latency")
    g.add_argument("--step-rate", type=float, help="dip:iterative: share of channels cut per round (default 0.1)")
    g.add_argument("--tolerance", type=float, help="dip:iterative: held-out PSNR drop allowed, dB (default 0.05)")
    g.add_argument("--prune-fraction", type=float, help="dip:iterative: share of --minutes for pruning (default 0.4)")
    g.add_argument("--prune-rounds", type=int, help="dip:iterative: rounds at most (default 2)")
    g.add_argument("--wall-clock", action="store_true", help="compress: --minutes of wall time (default: CPU time of "
                                                              "the process, fair on a shared machine)")
    g.add_argument("--no-latency", action="store_true", help="compress: no latency beside each record")
    g.add_argument("--latency-threads", type=int, help="compress: threads of the latency measurements "
                                                        "(default: --threads)")
    g.add_argument("--latency-rounds", type=int, help="compress, --parts latency: interleaved passes over the nets "
                                                       "(median; default 5)")
    return p.parse_args(argv)


def _set(cfg, **values) -> None:
    for k, v in values.items():
        if v is not None:
            setattr(cfg, k, v)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        suites = args.suite or (["search", "models", "quality"] if args.quick else ["search", "models"])
        if args.retrain_overrides and "ablation" not in suites:
            raise BenchmarkError("--retrain-overrides: for the ablation suite")
        scale = args.scales[0] if args.scales and len(args.scales) == 1 else 4
        if args.genotype and "compress" in suites:
            scale = load_genotype(args.genotype[0]).scale
        if args.json:
            out = args.json
        elif suites == ["compress"]:
            out = str(REPO_ROOT / "benchmarks" / f"compress_x{scale}_{datetime.date.today().isoformat()}.json")
        else:
            out = str(REPO_ROOT / "runs" / "benchmark" / ("quick.json" if args.quick else "benchmark.json"))

        s = SearchBenchConfig.quick() if args.quick else SearchBenchConfig()
        _set(s, spaces=args.spaces, scales=args.scales, batch=args.batch, patch=args.patch, orders=args.orders,
             mixed=args.mixed, repeats=args.repeats, warmup=args.warmup, threads=args.threads or None,
             timeout_s=args.timeout, reference=args.reference, reference_rounds=args.reference_rounds)
        if args.reference_only:
            if not args.reference:
                raise BenchmarkError("--reference-only needs --reference DIR")
            s.matrix = False

        m = ModelsBenchConfig.quick() if args.quick else ModelsBenchConfig()
        _set(m, models=args.models, scales=args.scales, repeats=args.repeats, warmup=args.warmup,
             hr_size=tuple(args.hr_size) if args.hr_size else None, compile_timeout_s=args.compile_timeout,
             threads=args.threads or None)
        if "models" in suites and args.genotype:
            m.genotypes = list(args.genotype)
        if args.no_derived:
            m.derived_dir = None
        if args.no_compile:
            m.compile = False
        if args.no_onnx:
            m.onnx = False

        q = QualityBenchConfig.quick() if args.quick else QualityBenchConfig()
        if args.genotype and len(args.genotype) > 1 and "quality" in suites:
            raise BenchmarkError("--genotype: the quality suite takes one searched genotype")
        _set(q, genotype=args.genotype[0] if args.genotype else None, minutes=args.minutes, data=args.data,
             eval_sets=args.eval, model_index=args.model_index, n_random=args.n_random, seed=args.seed,
             batch=args.batch, patch=args.patch, threads=args.threads or None,
             runs_dir=args.runs_dir, target_macs=parse_count(args.target_macs, "--target-macs") if args.target_macs else None)
        if args.scales and len(args.scales) == 1:
            q.scale = args.scales[0]
        q.steps = args.steps if "quality" in suites else None
        if args.seeds is not None:
            clash = [o for o, v in (("--genotype", args.genotype), ("--target-macs", args.target_macs),
                                    ("--seed", args.seed)) if v is not None]
            if clash:
                raise BenchmarkError(f"{', '.join(clash)}: not used with --seeds (each seed searches its own genotype)")
            q.seeds, q.steps = args.seeds, None
            _set(q.multi, arms=args.arms, steps=args.steps, minutes=args.minutes, n_random=args.n_random,
                 search_config=args.search_config, search_overrides=args.search_overrides, held_out=args.held_out)
            if args.search_budget is not None:
                q.multi.budget = None if args.search_budget.lower() == "none" else args.search_budget
            q.multi.redo, q.multi.plan_only = args.redo, args.plan_only

        lat = LatencyBenchConfig.quick() if args.quick else LatencyBenchConfig()
        _set(lat, scales=args.scales, n_random=args.n_random_latency, seed=args.seed, repeats=args.repeats,
             warmup=args.warmup, threads=args.threads or None, genotypes=args.budget_genotypes, compare=args.compare,
             compare_steps=args.steps, data=args.data, eval_sets=args.eval, plot=args.plot)
        if args.no_accuracy:
            lat.accuracy = False
        if args.no_rebuild:
            lat.rebuild = False

        ab = AblationBenchConfig()
        _set(ab, genotype=args.genotype[0] if args.genotype else None, steps=args.steps, seed=args.seed,
             data=args.data, eval_sets=args.eval, runs=args.runs, teacher=args.teacher,
             teacher_genotype=args.teacher_genotype, teacher_steps=args.teacher_steps, tag=args.tag,
             threads=args.threads or None, overrides=args.retrain_overrides, runs_dir=args.runs_dir)
        if args.no_teacher_cache:
            ab.teacher_cache = False
        if suites == ["ablation"] and not args.json:
            out = str(default_json(ab))

        c = CompressBenchConfig()
        if args.genotype and len(args.genotype) > 1 and "compress" in suites:
            raise BenchmarkError("--genotype: the compress suite takes one genotype")
        _set(c, genotype=args.genotype[0] if args.genotype else None, scale=scale, minutes=args.minutes,
             base_checkpoint=args.base_checkpoint, base_minutes=args.base_minutes, rates=args.rates, parts=args.parts,
             data=args.data, eval_sets=args.eval, seed=args.seed, threads=args.threads or None,
             step_rate=args.step_rate, tolerance=args.tolerance, prune_fraction=args.prune_fraction,
             prune_rounds=args.prune_rounds, latency_threads=args.latency_threads, latency_rounds=args.latency_rounds,
             hr_size=tuple(args.hr_size) if args.hr_size else None, runs_dir=args.runs_dir,
             steps=args.steps if "compress" in suites else None)
        if args.no_latency:
            c.latency = False
        if args.wall_clock:
            c.cpu_clock = False

        run_suites(suites, out, s, m, q, lat, ablation_cfg=ab, compress_cfg=c, quick=args.quick)
    except HdnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; suites finished so far are in the results file", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
