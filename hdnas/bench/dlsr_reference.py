"""The reference DLSR code beside hdnas: the same supernet, the same search steps, timed side by side.

The reference (Huang et al. 2021, github.com/DawnHH/DLSR-PyTorch) is another project's code and is no
part of hdnas: the search suite takes the path of a local checkout (``tools/benchmark.py --suite
search --reference DIR``) and skips the comparison without one. It is written for CUDA. To run it on
a CPU, :func:`load_reference` copies its two model files into a temporary folder with the only edits
that needs, and records them: every ``.cuda()`` call removed, and the unused ``import ipdb`` (a
debugger) dropped. Nothing else changes.

What is compared, like for like:

* the nets: the reference's search supernet ``RFDN_beta1`` (×2: it hard-codes its upsampler) and
  ``SuperNet`` of ``search_spaces/dlsr.yaml`` at ×2. :func:`check_same_function` copies the
  reference's weights, α and β into ours (:func:`hdnas_state_dict`) and compares the outputs, the
  reference on [0, 255] and ours on [0, 1];
* the weight step: forward, L1, backward, Adam (the reference's ``train``; ours is
  :meth:`hdnas.search.engine.Searcher._weight_step`, which also clips the gradient norm);
* the architecture step: first order, data term L1 on the training batch plus L1 on the held-out
  batch, Adam on α and β (the reference's ``train`` after its warm-up epochs; ours is the Architect
  with ``search.arch_loss=train+val`` and no budget, since the reference's parameter penalty is a
  constant computed from ``alphas.data``, without a gradient). The reference's loss also adds
  0.2·HFEN (an edge loss from its ``losses`` package); both sides use L1 alone here.

Each side runs in fresh worker processes (peak RSS is that process's), alternating between the two
sides round by round so that a change in the machine's load hits both alike.
"""

from __future__ import annotations

import importlib
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hdnas.bench.common import REPO_ROOT, BenchmarkError, Log, format_table, print_line, run_worker
from hdnas.bench.search import REFERENCE_KEY, SearchBenchConfig, search_case
from hdnas.core.timing import Timing, current_rss_mib, peak_rss_mib

#: The reference's files that its search supernet needs, relative to the checkout.
REFERENCE_FILES = ("models/rfdn_block_6_beta_search.py", "models/operations_hh.py")
REFERENCE_MODULE = "models.rfdn_block_6_beta_search"
REFERENCE_NET = "RFDN_beta1"
#: The reference's search supernet upscales ×2 whatever its ``upscale`` argument says.
REFERENCE_SCALE = 2
RGB_RANGE = 255.0
#: The reference search script's optimiser settings (its argparse defaults and literals).
W_LR, W_BETAS, W_WEIGHT_DECAY = 5e-4, (0.9, 0.999), 1e-8
A_LR, A_BETAS, A_WEIGHT_DECAY = 3e-4, (0.5, 0.999), 1e-8
#: The reference's ESA layer names -> ours (hdnas.core.blocks.ESA).
_ESA_NAMES = {"conv1": "reduce", "conv2": "down", "conv_max": "conv_max", "conv3": "conv3", "conv3_": "conv3_",
              "conv_f": "conv_f", "conv4": "expand"}


def _cpu_edits(text: str) -> tuple[str, list[str]]:
    """The reference source with the CPU edits applied, and a description of each."""
    edits = []
    n = text.count(".cuda()")
    if n:
        text = text.replace(".cuda()", "")
        edits.append(f"{n} × '.cuda()' removed")
    lines = text.split("\n")
    kept = [line for line in lines if line.strip() != "import ipdb"]
    if len(kept) != len(lines):
        edits.append("unused 'import ipdb' dropped")
    return "\n".join(kept), edits


def load_reference(reference: str | Path) -> tuple[Any, dict[str, list[str]]]:
    """The reference's search-model module, imported from a CPU-edited copy of ``reference``'s files,
    and the edits made per file. Meant for a fresh process: it imports a top-level package ``models``."""
    root = Path(reference)
    missing = [f for f in REFERENCE_FILES if not (root / f).is_file()]
    if missing:
        raise BenchmarkError(f"--reference {root}: not a checkout of DawnHH/DLSR-PyTorch ({missing[0]} not found)")
    loaded = sys.modules.get("models")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(tempfile.gettempdir()):
        raise BenchmarkError("another package named 'models' is already imported; run the reference in a fresh process")
    tmp = Path(tempfile.mkdtemp(prefix="hdnas-dlsr-reference-"))
    (tmp / "models").mkdir()
    (tmp / "models" / "__init__.py").write_text("")
    edits = {}
    for rel in REFERENCE_FILES:
        text, edits[rel] = _cpu_edits((root / rel).read_text(encoding="utf-8"))
        (tmp / rel).write_text(text, encoding="utf-8")
    sys.path.insert(0, str(tmp))
    return importlib.import_module(REFERENCE_MODULE), edits


def hdnas_state_dict(ref: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The reference supernet's weights, α and β under the names of ``SuperNet`` of ``dlsr.yaml``."""
    out: dict[str, torch.Tensor] = {}
    fixed = {"fea_conv": "stem", "LR_conv": "body", "upsampler.0": "upsampler.conv", "c6.0": "fusion"}
    for key, value in ref.state_dict().items():
        head, _, leaf = key.rpartition(".")
        m = re.fullmatch(r"B(\d)\.(.+)", head)
        if m:
            cell, part = f"cells.{int(m.group(1)) - 1}", m.group(2)
            if d := re.fullmatch(r"c(\d)_d", part):
                name = f"{cell}.distill.{int(d.group(1)) - 1}"
            elif r := re.fullmatch(r"c(\d)_r\.layers\.(\d+)\.op\.(\d+)", part):
                step, op, layer = int(r.group(1)) - 1, int(r.group(2)), r.group(3)
                # a plain conv is Sequential(conv) there and the conv itself here
                inner = "" if isinstance(ref.B1.c1_r.layers[op].op[0], torch.nn.Conv2d) else f".{layer}"
                name = f"{cell}.ops.{step}.ops.{op}{inner}"
            elif part in ("c4", "c5"):
                name = f"{cell}.{'last' if part == 'c4' else 'fuse'}"
            elif e := re.fullmatch(r"esa\.(\w+)", part):
                name = f"{cell}.esa.{_ESA_NAMES[e.group(1)]}"
            else:
                raise BenchmarkError(f"reference parameter {key!r} has no counterpart in hdnas")
        elif c := re.fullmatch(r"c([2-5])\.0", head):  # the input merge of cell c + 1
            name = f"combine.cell{int(c.group(1)) + 1}"
        elif head in fixed:
            name = fixed[head]
        else:
            raise BenchmarkError(f"reference parameter {key!r} has no counterpart in hdnas")
        out[f"{name}.{leaf}"] = value
    out["alpha"] = ref.alphas.detach()[None]
    for j, beta in enumerate(ref.betas):
        out[f"beta_inputs.{j}"] = beta.detach()
    return out


def _hdnas_supernet(fused: bool = True):
    from hdnas.core.space import load_space
    from hdnas.search.supernet import SuperNet

    return SuperNet(load_space(REPO_ROOT / "search_spaces" / "dlsr.yaml", scale=REFERENCE_SCALE), fused=fused)


def check_same_function(reference: str, seed: int = 0, size: tuple[int, int] = (20, 24)) -> dict[str, Any]:
    """Both supernets with the reference's weights and random α, β: parameter counts and the largest
    output difference (fused and plain mixed ops), ours on [0, 1] against the reference's on [0, 255] / 255."""
    module, edits = load_reference(reference)
    torch.manual_seed(seed)
    ref = getattr(module, REFERENCE_NET)()
    with torch.no_grad():
        for p in ref.arch_parameters():
            p.normal_()  # far from uniform, so that a mix-up of α or β rows would show
    x = torch.rand(2, 3, *size)
    out: dict[str, Any] = {"reference_edits": edits,
                           "reference_weight_params": sum(p.numel() for p in ref.parameters()),
                           "reference_arch_params": sum(p.numel() for p in ref.arch_parameters())}
    with torch.no_grad():
        want = ref(x * RGB_RANGE) / RGB_RANGE
        for fused in (True, False):
            net = _hdnas_supernet(fused).eval()
            net.load_state_dict(hdnas_state_dict(ref), strict=True)
            out[f"max_abs_diff_{'fused' if fused else 'plain'}"] = float((net(x) - want).abs().max())
    out["hdnas_weight_params"] = sum(p.numel() for p in net.weight_parameters())
    out["hdnas_arch_params"] = sum(p.numel() for p in net.arch_parameters())
    out["output_max_abs"] = float(want.abs().max())
    return out


def reference_case(reference: str, batch: int, patch: int, warmup: int, repeats: int, threads: int = 0,
                   seed: int = 0) -> dict[str, Any]:
    """Time the reference's weight and architecture steps (module docstring) in this process."""
    if threads:
        torch.set_num_threads(threads)
    module, edits = load_reference(reference)
    torch.manual_seed(seed)
    model = getattr(module, REFERENCE_NET)()
    model.train()
    w_opt = torch.optim.Adam(model.parameters(), W_LR, betas=W_BETAS, weight_decay=W_WEIGHT_DECAY)
    a_opt = torch.optim.Adam(model.arch_parameters(), A_LR, betas=A_BETAS, weight_decay=A_WEIGHT_DECAY)
    s = REFERENCE_SCALE
    steps = warmup + repeats
    batches = [[(torch.rand(batch, 3, patch, patch) * RGB_RANGE, torch.rand(batch, 3, patch * s, patch * s) * RGB_RANGE)
                for _ in range(2)] for _ in range(steps)]
    setup_rss = current_rss_mib()
    w_times, a_times = [], []
    for step, ((lr, hr), (val_lr, val_hr)) in enumerate(batches):
        t0 = time.perf_counter()
        w_opt.zero_grad()
        F.l1_loss(model(lr), hr).backward()
        w_opt.step()
        t1 = time.perf_counter()
        a_opt.zero_grad()
        loss = F.l1_loss(model(lr), hr) + F.l1_loss(model(val_lr), val_hr)
        loss.backward()
        a_opt.step()
        t2 = time.perf_counter()
        if step >= warmup:
            w_times.append(t1 - t0)
            a_times.append(t2 - t1)
    return {"weight_s": w_times, "arch_s": a_times, "setup_rss_mib": setup_rss, "peak_rss_mib": peak_rss_mib(),
            "threads": torch.get_num_threads(), "weight_params": sum(p.numel() for p in model.parameters()),
            "arch_params": sum(p.numel() for p in model.arch_parameters()), "reference_edits": edits}


def hdnas_case(batch: int, patch: int, warmup: int, repeats: int, threads: int = 0, seed: int = 0) -> dict[str, Any]:
    """Time hdnas's steps on ``dlsr.yaml`` at ×2 as the reference runs its search (module docstring)."""
    r = search_case(str(REPO_ROOT / "search_spaces" / "dlsr.yaml"), REFERENCE_SCALE, batch, patch, order=1,
                    mixed="fused", warmup=warmup, repeats=repeats, threads=threads, seed=seed, arch_loss="train+val",
                    budget=False, raw=True)
    return {"weight_s": r["weight_s"], "arch_s": r["arch_s"], "setup_rss_mib": r["setup_rss_mib"],
            "peak_rss_mib": r["peak_rss_mib"], "threads": r["threads"], "weight_params": r["weight_params"],
            "arch_params": r["arch_params"]}


SIDES = {"reference": "hdnas.bench.dlsr_reference:reference_case", "hdnas": "hdnas.bench.dlsr_reference:hdnas_case"}


def run_reference_comparison(cfg: SearchBenchConfig, log: Log = print_line) -> list[dict[str, Any]]:
    """The search suite's comparison with the reference code: ``cfg.reference`` is a checkout's path;
    without one it is skipped (no records), saying so."""
    if cfg.reference is None:
        log("[search] no reference checkout given (--reference DIR): the side-by-side comparison with the "
            "reference DLSR code is skipped")
        return []
    return compare_with_reference(cfg.reference, cfg.batch, cfg.patch, cfg.reference_rounds, cfg.warmup, cfg.repeats,
                                  cfg.threads, cfg.timeout_s, log)


def compare_with_reference(reference: str, batch: int, patch: int, rounds: int, warmup: int, repeats: int,
                           threads: int = 0, timeout_s: float = 570.0, log: Log = print_line) -> list[dict[str, Any]]:
    """The side-by-side comparison: the same-function check, then ``rounds`` rounds of one worker per
    side (order alternating), each timing ``repeats`` steps after ``warmup``. Records per side, and
    one of the ratios (hdnas / reference) of the medians over all timed steps and of peak RSS."""
    if rounds < 1:
        raise BenchmarkError(f"reference rounds: expected at least 1, got {rounds}")
    log("[search] reference: same function? ...")
    same = run_worker("hdnas.bench.dlsr_reference:check_same_function", {"reference": str(reference)}, timeout_s)
    if "error" in same:
        raise BenchmarkError(f"the reference comparison cannot run: {same['error']}")
    log(f"[search]   weights {same['hdnas_weight_params']} vs {same['reference_weight_params']}, "
        f"arch {same['hdnas_arch_params']} vs {same['reference_arch_params']}, largest output difference "
        f"{same['max_abs_diff_fused']:.2g} (fused), {same['max_abs_diff_plain']:.2g} (plain)")
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    spec = dict(batch=batch, patch=patch, warmup=warmup, repeats=repeats, threads=threads)
    for r in range(rounds):
        for side in (("reference", "hdnas") if r % 2 == 0 else ("hdnas", "reference")):
            extra = {"reference": str(reference)} if side == "reference" else {}
            log(f"[search] reference comparison, round {r + 1}/{rounds}: {side} ...")
            out = run_worker(SIDES[side], {**extra, **spec}, timeout_s)
            if "error" in out:
                raise BenchmarkError(f"reference comparison, {side} side: {out['error']}")
            runs[side].append(out)
            log(f"[search]   weight {statistics.median(out['weight_s']) * 1e3:.0f} ms, arch "
                f"{statistics.median(out['arch_s']) * 1e3:.0f} ms, peak RSS {out['peak_rss_mib']:.0f} MiB")
    records = []
    base = f"x{REFERENCE_SCALE}|b{batch}|p{patch}|t{threads or 'default'}"
    summary: dict[str, dict[str, Any]] = {}
    for side, outs in runs.items():
        weight = Timing([t for o in outs for t in o["weight_s"]])
        arch = Timing([t for o in outs for t in o["arch_s"]])
        peak = statistics.median(o["peak_rss_mib"] for o in outs)
        setup = [o["setup_rss_mib"] for o in outs if o["setup_rss_mib"] is not None]
        grown = statistics.median(o["peak_rss_mib"] - o["setup_rss_mib"] for o in outs if o["setup_rss_mib"] is not None)
        summary[side] = {"weight": weight.median, "arch": arch.median, "peak": peak, "grown": grown}
        records.append({
            "key": f"{REFERENCE_KEY}{side}|{base}", "space": "dlsr", "side": side, "scale": REFERENCE_SCALE,
            "batch": batch, "patch": patch, "threads": outs[0]["threads"], "rounds": rounds,
            "weight_ms": weight.as_ms(), "arch_ms": arch.as_ms(),
            "weight_ms_per_round": [round(statistics.median(o["weight_s"]) * 1e3, 1) for o in outs],
            "arch_ms_per_round": [round(statistics.median(o["arch_s"]) * 1e3, 1) for o in outs],
            "peak_rss_mib": round(peak, 1), "setup_rss_mib": round(statistics.median(setup), 1) if setup else None,
            "peak_over_setup_mib": round(grown, 1),
            "weight_params": outs[0]["weight_params"], "arch_params": outs[0]["arch_params"],
            **({"reference_edits": outs[0]["reference_edits"]} if side == "reference" else {}),
        })
    ours, ref = summary["hdnas"], summary["reference"]
    records.append({
        "key": f"{REFERENCE_KEY}ratio|{base}", "space": "dlsr", "side": "hdnas / reference", "scale": REFERENCE_SCALE,
        "batch": batch, "patch": patch, "rounds": rounds,
        "weight_step": round(ours["weight"] / ref["weight"], 3), "arch_step": round(ours["arch"] / ref["arch"], 3),
        "iteration": round((ours["weight"] + ours["arch"]) / (ref["weight"] + ref["arch"]), 3),
        "peak_rss": round(ours["peak"] / ref["peak"], 3),
        "peak_over_setup": round(ours["grown"] / ref["grown"], 3), "same_function": same,
    })
    return records


def reference_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        if not r["key"].startswith(REFERENCE_KEY):
            continue
        if "weight_step" in r:
            rows.append([r["side"], f"{r['batch']}/{r['patch']}", f"{r['weight_step']:.2f}×", f"{r['arch_step']:.2f}×",
                         f"{r['iteration']:.2f}×", f"{r['peak_rss']:.2f}×", f"{r['peak_over_setup']:.2f}×"])
        else:
            w, a = r["weight_ms"]["median"], r["arch_ms"]["median"]
            rows.append([r["side"], f"{r['batch']}/{r['patch']}", f"{w:.0f} ms", f"{a:.0f} ms", f"{w + a:.0f} ms",
                         f"{r['peak_rss_mib']:.0f} MiB", f"{r['peak_over_setup_mib']:.0f} MiB"])
    return format_table(["dlsr ×2 vs reference", "batch/patch", "weight step", "arch step", "iteration", "peak RSS",
                         "peak − setup"], rows)


__all__ = [
    "REFERENCE_FILES",
    "check_same_function",
    "compare_with_reference",
    "run_reference_comparison",
    "hdnas_case",
    "hdnas_state_dict",
    "load_reference",
    "reference_case",
    "reference_table",
]
