"""A measured latency model of a target device: per-part times, a genotype's prediction, the expected latency.

What is timed
-------------
Every part of a derived net at the size it runs at (batch 1, LR = 1280×720 // scale, the space's
width): each candidate op of the registry (:mod:`hdnas.core.ops`), the cell shell (distillation
1×1s, the per-step residual add and LeakyReLU, the last 3×3, the cell's 1×1 fusion and ESA), the input
combination of a cell with n > 1 inputs (concatenation + 1×1), and the backbone (mean shift, stem, the
final fusion's concatenation + 1×1 + LeakyReLU, body conv + long skip, upsampler with its bicubic skip
and pixel shuffle).

Each part is first timed alone as a module. Alone, the memory-bound parts (depthwise convs, the
shell's element-wise work) ran 1.3–1.9× slower on this CPU than inside a net, and by a varying amount,
so the default (``method="in_context"``) times ops, shell and backbone *inside* whole probe nets: one
net per op with that op at every step of every live cell, and one with fewer live cells; differences
between them give each op, the shell and the backbone (:func:`_in_context`). The table has the shape of
the Multi-Adds table (:class:`hdnas.core.cost.CostTable`), so a genotype's prediction is the same sum
and the expected latency under softmax(α, β) is :func:`hdnas.core.cost.expected_cost` of it:
differentiable, and equal to the table sum at one-hot α/β.

Memory
------
Parts and nets are timed with freed memory kept in the process (``Target.keep_memory``, default on;
:func:`hdnas.core.timing.kept_memory`). With glibc's defaults every large map is mmapped afresh and
its pages faulted in on each forward, which made memory-bound parts several times slower than their
arithmetic, by an amount that depended on what the process had allocated before: times that neither
add up nor repeat. The cache key records the setting.

Correction
----------
After the parts, a few seeded random genotypes of the space are measured whole. If the sum of the
parts misses their measured latency by more than :data:`CORRECTION_THRESHOLD` (median ratio), the
model keeps the least-squares factor ``measured ≈ factor · sum`` and predictions are ``factor · sum``
(still differentiable); otherwise the factor is 1. Both are reported.

Speed reference
---------------
This CPU's speed drifts by 10–20 % over minutes. The build times a fixed reference net
(:func:`reference_genotype`) first and last and records both (``fit["reference_ms"]``); it warns when
they differ by more than :data:`STEADY_TOLERANCE`. The latency suite times the reference beside each
net it checks, so its accuracy figures can be read with the machine's drift taken out.

Targets and the cache
---------------------
:class:`Target`: backend ``torch`` (eager; channels-last by default) or ``onnxruntime`` (CPU
provider), device ``cpu`` or ``cuda``, threads (0: ``torch.get_num_threads()``). A table is cached
as JSON under ``$HDNAS_CACHE_DIR/latency/`` (default ``~/.cache/hdnas/latency/``), one file per key:
CPU model (and GPU name on CUDA), threads, torch (and onnxruntime) version, backend, layout, output
size and the space fields that change what is timed (scale, width, steps, ESA, upsampler, fused
cells, inputs per cell, the registry's ops). Files are written atomically; an unreadable or
mismatched file is rebuilt with a warning naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import statistics
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
from tqdm import tqdm

from hdnas.core.atomic import atomic_write_json
from hdnas.core.blocks import DistillCell, MeanShift, Upsampler, conv1x1, conv3x3, lrelu
from hdnas.core.cost import HR_SIZE, CostTable, expected_cost, lr_size_for
from hdnas.core.errors import ConfigError
from hdnas.core.genotype import CellGenotype, Genotype, random_genotype
from hdnas.core.machine import machine_info
from hdnas.core.network import DerivedNet
from hdnas.core.ops import OPS, build_op
from hdnas.core.space import ArchProbs, SearchSpace
from hdnas.core.timing import kept_memory, time_fn

FORMAT = "hdnas-latency/2"
BACKENDS = ("torch", "onnxruntime")
DEVICES = ("cpu", "cuda")
#: The sum of parts is corrected only when it misses whole-net measurements by more than this (median).
CORRECTION_THRESHOLD = 0.03
#: Random genotypes measured whole to fit the correction (seeded; kept apart from any benchmark's).
CORRECTION_SAMPLES = 4
CORRECTION_SEED = 1_000_003
#: A table whose speed reference moved more than this between the start and the end of its build was
#: measured on an unsteady machine: it is kept, with a warning.
STEADY_TOLERANCE = 0.10


class LatencyError(ConfigError):
    """A latency target that cannot be measured here, or a cache that cannot be used."""


@dataclass(frozen=True)
class Target:
    """Where latency is measured. Defaults: this CPU, torch eager, channels-last, torch's threads."""

    backend: str = "torch"
    device: str = "cpu"
    threads: int = 0  # 0: torch.get_num_threads() at build time
    channels_last: bool = True
    warmup: int = 3  # at least; warm-up lasts MIN_SECONDS too
    repeats: int = 7  # at least; small parts get more
    keep_memory: bool = True  # time with freed memory kept in the process (hdnas.core.timing.kept_memory)

    def resolved(self) -> "Target":
        if self.backend not in BACKENDS:
            raise LatencyError(f"latency target: backend must be one of {BACKENDS}, got '{self.backend}'")
        if self.device not in DEVICES:
            raise LatencyError(f"latency target: device must be one of {DEVICES}, got '{self.device}'")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise LatencyError("latency target: device 'cuda' asked for, but no CUDA device is available")
        if self.backend == "onnxruntime" and self.device != "cpu":
            raise LatencyError("latency target: the onnxruntime backend is measured on its CPU provider only")
        return replace(self, threads=self.threads or torch.get_num_threads())

    @property
    def keeps_memory(self) -> bool:
        """Whether timings keep freed memory (a CPU allocator setting: no effect on CUDA)."""
        return self.keep_memory and self.device == "cpu"

    def describe(self) -> str:
        t = self.resolved()
        engine = "torch eager" if t.backend == "torch" else "onnxruntime"
        layout = ", channels-last" if t.backend == "torch" and t.channels_last else ""
        where = "CUDA" if t.device == "cuda" else f"CPU, {t.threads} thread{'s' if t.threads != 1 else ''}"
        memory = ", memory kept" if t.keeps_memory else ""
        return f"{engine}{layout}, {where}{memory}"


# -- the parts ------------------------------------------------------------------------------------
class _Combine(nn.Module):
    """A cell's input combination: concatenation of n maps, then the 1×1 back to C."""

    def __init__(self, n: int, c: int):
        super().__init__()
        self.n = n
        self.conv = conv1x1(n * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x] * self.n, dim=1))


class _Backbone(nn.Module):
    """Everything outside the cells, as :class:`~hdnas.core.network.DerivedNet` runs it."""

    def __init__(self, c: int, scale: int, fused: int, upsampler: str):
        super().__init__()
        self.fused = fused
        self.sub_mean = MeanShift(-1)
        self.stem = conv3x3(3, c)
        self.fusion = conv1x1(fused * c, c)
        self.body = conv3x3(c, c)
        self.upsampler = Upsampler(c, scale, upsampler)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        s = self.stem(self.sub_mean(lr))
        fused = lrelu(self.fusion(torch.cat([s] * self.fused, dim=1)))
        return self.upsampler(self.body(fused) + s, lr)


@dataclass
class Part:
    """One timed part: a module and the input it runs on (built on demand, so a fake timer needs neither)."""

    name: str
    build: Callable[[], nn.Module]
    in_channels: int


def _table_space_fields(space: SearchSpace) -> dict[str, Any]:
    return {
        "scale": space.scale,
        "channels": space.channels,
        "steps": space.steps,
        "esa": space.esa,
        "upsampler": space.upsampler,
        "fusion_cells": space.fusion_cells,
        "max_inputs": min(space.cell_inputs, space.cells),
        "ops": list(OPS),
    }


def parts_of(space: SearchSpace) -> list[Part]:
    """What is timed for ``space``: every registry op, the cell shell, each combination width, the backbone."""
    c = space.channels
    parts = [Part(f"op:{name}", (lambda name=name: build_op(name, c, c)), c) for name in OPS]
    parts.append(Part("shell", lambda: DistillCell([nn.Identity() for _ in range(space.steps)], c, space.esa), c))
    for n in range(2, min(space.cell_inputs, space.cells) + 1):
        parts.append(Part(f"combine:{n}", (lambda n=n: _Combine(n, c)), c))
    parts.append(Part("backbone", lambda: _Backbone(c, space.scale, space.fusion_cells, space.upsampler), 3))
    return parts


# -- measuring --------------------------------------------------------------------------------------
#: A timer: (part or net name, module, input, target) -> seconds. Tests inject a fake one.
Timer = Callable[[str, nn.Module, torch.Tensor, Target], float]


#: Warm-up and timed runs each last at least this long (small parts get more runs): the first
#: forwards of a part are several times slower (allocation, kernel selection), and a median of a
#: few 1 ms runs is noisy.
MIN_SECONDS = 0.25


def _median_seconds(fn: Callable[[], Any], target: Target, sync: Callable[[], None] = lambda: None) -> float:
    def run():
        fn()
        sync()

    t0, n = time.perf_counter(), 0
    while n < target.warmup or time.perf_counter() - t0 < MIN_SECONDS:
        run()
        n += 1
    once = (time.perf_counter() - t0) / n
    repeats = max(target.repeats, min(200, int(MIN_SECONDS / max(once, 1e-9))))
    return time_fn(run, 0, repeats).median


def measure(name: str, module: nn.Module, x: torch.Tensor, target: Target) -> float:
    """Median seconds of ``module(x)`` on ``target`` after warm-up: the default timer, and the one nets are
    measured with, so parts and whole nets are timed alike."""
    target = target.resolved()
    module = module.eval()
    if target.backend == "onnxruntime":
        with kept_memory(target.keeps_memory):
            return _ort_seconds(module, x, target)
    with on_target(module, x, target) as (module, x, sync):
        return _median_seconds(lambda: module(x), target, sync)


@contextmanager
def on_target(module: nn.Module, x: torch.Tensor, target: Target) -> Iterator[tuple[nn.Module, torch.Tensor, Callable]]:
    """``module`` and ``x`` placed as ``target`` runs them (device, layout, threads, memory kept, inference
    mode), with the device's sync; what every torch timing runs inside."""
    target = target.resolved()
    previous = torch.get_num_threads()
    torch.set_num_threads(target.threads)
    try:
        if target.device == "cuda":
            module, x = module.cuda(), x.cuda()
            sync = torch.cuda.synchronize
        else:
            sync = lambda: None  # noqa: E731
        if target.channels_last:
            module = module.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        with kept_memory(target.keeps_memory), torch.inference_mode():
            yield module, x, sync
    finally:
        torch.set_num_threads(previous)


def _ort_seconds(module: nn.Module, x: torch.Tensor, target: Target) -> float:
    import tempfile

    try:
        import onnxruntime as ort  # optional and heavy: only for this target
    except ImportError as exc:
        raise LatencyError(f"latency target onnxruntime: {exc} (pip install hdnas[onnx])") from None
    with tempfile.TemporaryDirectory(prefix="hdnas-latency-") as d:
        path = os.path.join(d, "part.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), path, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = target.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        return _median_seconds(lambda: sess.run(None, {"x": xn}), target)


def measure_genotype(genotype: Genotype, target: Target | None = None, hr_size: tuple[int, int] = HR_SIZE,
                     timer: Timer | None = None) -> float:
    """Measured latency (ms) of ``DerivedNet(genotype)`` on ``target``: median of forwards after warm-up."""
    target = (target or Target()).resolved()
    torch.manual_seed(0)
    net = DerivedNet(genotype)
    x = torch.rand(1, 3, *lr_size_for(genotype.scale, hr_size))
    return 1e3 * (timer or measure)("net", net, x, target)


# -- the model ----------------------------------------------------------------------------------------
@dataclass
class LatencyModel:
    """Measured part times (ms) of one target and space sizes, and the correction for what the sum misses."""

    key: dict[str, Any]
    parts_ms: dict[str, float]
    factor: float = 1.0  # the correction: prediction = factor · sum of parts (1: no correction)
    fit: dict[str, Any] = field(default_factory=dict)  # what the correction was fitted on
    build_seconds: float | None = None
    path: Path | None = None

    def table(self, space: SearchSpace) -> CostTable:
        """The part times (ms) as a :class:`~hdnas.core.cost.CostTable` over ``space``'s ops and cells."""
        self._check(space)
        p = self.parts_ms
        return CostTable.of(space, (p[f"op:{o}"] for o in space.ops), p["shell"],
                            lambda n: p[f"combine:{n}"] if n > 1 else 0.0, p["backbone"], "ms")

    def _check(self, space: SearchSpace) -> None:
        want = _table_space_fields(space)
        have = {k: self.key.get(k) for k in want}
        if have != want:
            diff = ", ".join(f"{k} {have[k]!r} != {want[k]!r}" for k in want if have[k] != want[k])
            raise LatencyError(f"this latency table was measured for other sizes ({diff})")

    def predict(self, genotype: Genotype, corrected: bool = True) -> float:
        """Predicted latency (ms) of ``DerivedNet(genotype)``: the sum of its parts [× the correction].
        A pruned genotype is refused (:func:`check_unpruned`)."""
        check_unpruned(genotype)
        space = space_of(genotype)
        total = self.table(space).total(genotype, space.ops)
        return total * (self.factor if corrected else 1.0)

    @property
    def reference_ms(self) -> float | None:
        """The speed reference's time while the table was built (mean of its start and end); None for a
        table built before it was recorded."""
        ref = self.fit.get("reference_ms")
        return (ref["start"] + ref["end"]) / 2 if ref else None

    def expected(self, space: SearchSpace, probs: ArchProbs, corrected: bool = True) -> torch.Tensor:
        """E[latency] (ms) under α/β probabilities (float64 scalar, differentiable)."""
        e = expected_cost(space, probs, self.table(space))
        return e * self.factor if corrected else e

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "parts_ms": self.parts_ms, "factor": self.factor,
                "fit": self.fit, "build_seconds": self.build_seconds}


def check_unpruned(genotype: Genotype) -> None:
    """Refuse a genotype with per-layer widths: the table holds the times of unpruned parts only.

    Why refuse rather than scale: a narrower conv's time is not its Multi-Adds' share of the full one's
    (small widths waste vector lanes and memory bandwidth dominates), so any guess would be presented
    as a measurement. A pruned net is measured whole instead (:func:`measure_genotype`).
    """
    if genotype.has_widths:
        raise LatencyError(
            f"the latency model cannot predict a pruned genotype (it records widths: {', '.join(genotype.width_fields())}): "
            "its table times the unpruned ops and cells only; measure the net instead "
            "(hdnas.core.latency.measure_genotype)"
        )


def space_of(genotype: Genotype) -> SearchSpace:
    """The sizes a genotype runs at, as a space (its ops: the registry's, which every table times)."""
    return SearchSpace(scale=genotype.scale, channels=genotype.channels, cells=len(genotype.cells),
                       steps=genotype.steps, ops=list(OPS), esa=genotype.esa,
                       cell_inputs=max(len(c.inputs) for c in genotype.cells),
                       fusion_cells=len(genotype.fusion), upsampler=genotype.upsampler)


def target_key(space: SearchSpace, target: Target | None = None, hr_size: tuple[int, int] = HR_SIZE) -> dict[str, Any]:
    """Everything a table depends on: the machine, the software, the target and the sizes that are timed."""
    t = (target or Target()).resolved()
    key: dict[str, Any] = {
        "format": FORMAT,
        "cpu": machine_info()["cpu"],
        "threads": t.threads,
        "torch": torch.__version__,
        "backend": t.backend,
        "device": t.device,
        "channels_last": t.channels_last if t.backend == "torch" else False,
        "keep_memory": t.keeps_memory,
        "hr_size": list(hr_size),
        **_table_space_fields(space),
    }
    if t.device == "cuda":
        key["gpu"] = torch.cuda.get_device_name()
    if t.backend == "onnxruntime":
        try:
            import onnxruntime as ort

            key["onnxruntime"] = ort.__version__
        except ImportError as exc:
            raise LatencyError(f"latency target onnxruntime: {exc} (pip install hdnas[onnx])") from None
    return key


def cache_dir() -> Path:
    """``$HDNAS_CACHE_DIR/latency`` or ``~/.cache/hdnas/latency``."""
    root = os.environ.get("HDNAS_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "hdnas") / "latency"


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{key['backend']}_{key['device']}_x{key['scale']}_c{key['channels']}_{digest}.json"


def _read_cache(path: Path, key: dict[str, Any]) -> LatencyModel | None:
    """The cached model, or None (with a warning naming the file) when it cannot be used."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("key") != key:
            raise ValueError("its key does not match the target (another machine, torch or space)")
        parts = {str(k): float(v) for k, v in data["parts_ms"].items()}
        if not all(v > 0 for v in parts.values()):
            raise ValueError("a part time is not positive")
        factor = float(data.get("factor", 1.0))
        if not factor > 0:
            raise ValueError(f"correction factor {factor} is not positive")
        return LatencyModel(key, parts, factor, dict(data.get("fit") or {}), data.get("build_seconds"), path)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        warnings.warn(f"latency cache {path} is unusable ({type(exc).__name__}: {exc}); rebuilding it", stacklevel=3)
        return None


#: How parts are timed. ``in_context``: ops, cell shell and backbone from whole probe nets (below);
#: ``isolated``: each part alone as a module (the ops' isolated times are recorded either way).
METHODS = ("in_context", "isolated")


def probe_genotypes(space: SearchSpace) -> tuple[Callable[[str], Genotype], Genotype | None]:
    """Probe nets for in-context timing: ``every(op)`` has every cell live (a chain ending in the fused
    cells) with ``op`` at every step; ``few`` (None when cells == fused cells) keeps only the first
    ``fusion_cells`` cells live, with the cheapest-to-build op. Each cell reads its nearest earlier outputs."""
    n, m = space.cells, space.fusion_cells

    def geno(op: str, fusion: list[int]) -> Genotype:
        cells = [CellGenotype([op] * space.steps, list(range(i - space.inputs_kept(i), i))) for i in range(1, n + 1)]
        return Genotype(scale=space.scale, channels=space.channels, cells=cells, fusion=fusion, esa=space.esa,
                        upsampler=space.upsampler)

    every = lambda op: geno(op, list(range(n - m + 1, n + 1)))  # noqa: E731
    return every, (geno(BASE_OP, list(range(1, m + 1))) if n > m else None)


#: The probe nets' reference op: its isolated time is taken as its in-net time (it is the smallest).
BASE_OP = "conv_1x1"


def reference_genotype(space: SearchSpace) -> Genotype:
    """The machine's speed reference: the probe net with the base op at every step. Why: this CPU's speed
    drifts by 10–20 % over minutes (other tenants, clocks), so a table and the nets it is checked against,
    timed minutes apart, can disagree by the drift alone; the reference timed beside each makes it visible."""
    return probe_genotypes(space)[0](BASE_OP)


def _in_context(space: SearchSpace, isolated: dict[str, float], net_ms: Callable[[Genotype], float],
                bar) -> tuple[dict[str, float], dict[str, Any]]:
    """Op, shell and backbone times (ms) as they run inside a net: differences of whole probe nets.

    T(every op o) − T(every base op) = N·K·(t_o − t_base); T(every base) − T(few base) = (N − m)·(shell
    + K·t_base) + their combinations; the backbone is what remains of T(few base). Combinations and the
    base op keep their isolated times. Times are floored at 1 % of the isolated time (noise can make a
    difference negative)."""
    every, few = probe_genotypes(space)
    n, m, k = space.cells, space.fusion_cells, space.steps
    comb = [isolated.get(f"combine:{space.inputs_kept(i)}", 0.0) for i in range(1, n + 1)]
    t_base = isolated[f"op:{BASE_OP}"]
    probes: dict[str, float] = {}
    for name in OPS:
        bar.set_postfix_str(f"probe net {name}")
        probes[name] = net_ms(every(name))
        bar.update()
    out = dict(isolated)
    for name in OPS:
        if name != BASE_OP:
            out[f"op:{name}"] = max(t_base + (probes[name] - probes[BASE_OP]) / (n * k), 0.01 * isolated[f"op:{name}"])
    if few is not None:
        bar.set_postfix_str("probe net (fewer live cells)")
        probes["few"] = net_ms(few)
        bar.update()
        shell = (probes[BASE_OP] - probes["few"] - sum(comb[m:])) / (n - m) - k * t_base
        out["shell"] = max(shell, 0.01 * isolated["shell"])
        rest = probes["few"] - m * (out["shell"] + k * t_base) - sum(comb[:m])
    else:  # every cell is fused: shell and backbone cannot be told apart; split as isolated
        cells = probes[BASE_OP] - n * k * t_base - sum(comb)
        w = n * isolated["shell"] / (n * isolated["shell"] + isolated["backbone"])
        out["shell"], rest = w * cells / n, (1 - w) * cells
    out["backbone"] = max(rest, 0.01 * isolated["backbone"])
    return out, {"probe_nets_ms": {k_: round(v, 3) for k_, v in probes.items()}}


def build_model(space: SearchSpace, target: Target | None = None, hr_size: tuple[int, int] = HR_SIZE,
                timer: Timer | None = None, progress: bool = True, correction: bool = True,
                method: str = "in_context") -> LatencyModel:
    """Time every part of ``space`` on ``target`` (a progress bar on stderr), then fit the correction."""
    if method not in METHODS:
        raise LatencyError(f"latency table method: expected one of {METHODS}, got '{method}'")
    target = (target or Target()).resolved()
    timer = timer or DEFAULT_TIMER
    key = target_key(space, target, hr_size)
    h, w = lr_size_for(space.scale, hr_size)
    t0 = time.perf_counter()
    parts = parts_of(space)
    samples = _correction_genotypes(space) if correction else []
    probes = (len(OPS) + (space.cells > space.fusion_cells)) if method == "in_context" else 0
    bar = tqdm(total=len(parts) + probes + len(samples) + 2, desc=f"latency table ×{space.scale}", unit="part",
               disable=not progress, leave=False)
    isolated: dict[str, float] = {}
    reference = reference_genotype(space)
    try:
        bar.set_postfix_str("speed reference")
        ref_start = measure_genotype(reference, target, hr_size, timer)
        bar.update()
        torch.manual_seed(0)
        for part in parts:
            bar.set_postfix_str(part.name)
            x = torch.rand(1, part.in_channels, h, w)
            isolated[part.name] = 1e3 * timer(part.name, part.build(), x, target)
            bar.update()
        extra: dict[str, Any] = {"method": method, "isolated_ms": {k: round(v, 3) for k, v in isolated.items()}}
        parts_ms = isolated
        if method == "in_context":
            parts_ms, more = _in_context(space, isolated, lambda g: measure_genotype(g, target, hr_size, timer), bar)
            extra.update(more)
        model = LatencyModel(key, parts_ms)
        sums, measured = [], []
        for g in samples:
            bar.set_postfix_str("whole nets (correction)")
            sums.append(model.predict(g, corrected=False))
            measured.append(measure_genotype(g, target, hr_size, timer))
            bar.update()
        bar.set_postfix_str("speed reference")
        ref_end = measure_genotype(reference, target, hr_size, timer)
        bar.update()
    finally:
        bar.close()
    model.factor, model.fit = fit_correction(sums, measured)
    model.fit.update(extra)
    drift = ref_end / ref_start - 1
    model.fit["reference_ms"] = {"start": round(ref_start, 3), "end": round(ref_end, 3), "drift": round(drift, 4)}
    if abs(drift) > STEADY_TOLERANCE:
        warnings.warn(f"latency table ×{space.scale}: the speed reference took {ref_start:.1f} ms before the build and "
                      f"{ref_end:.1f} ms after it ({drift:+.0%}): the machine was not steady; rebuild it on an idle "
                      "machine for a trustworthy table", stacklevel=2)
    model.build_seconds = round(time.perf_counter() - t0, 2)
    return model


def fit_correction(sums: Iterable[float], measured: Iterable[float]) -> tuple[float, dict[str, Any]]:
    """Least-squares factor of ``measured ≈ factor · sum``; 1 unless the median miss exceeds the threshold."""
    sums, measured = list(sums), list(measured)
    if not sums:
        return 1.0, {"samples": 0, "note": "no whole nets measured: no correction"}
    ratios = [m / s for s, m in zip(sums, measured)]
    ls = sum(s * m for s, m in zip(sums, measured)) / sum(s * s for s in sums)
    median = statistics.median(ratios)
    used = abs(median - 1.0) > CORRECTION_THRESHOLD
    return (ls if used else 1.0), {
        "samples": len(sums), "seed": CORRECTION_SEED, "sum_ms": [round(s, 3) for s in sums],
        "measured_ms": [round(m, 3) for m in measured], "median_ratio": round(median, 4),
        "least_squares_factor": round(ls, 4), "applied": used, "threshold": CORRECTION_THRESHOLD,
    }


def _correction_genotypes(space: SearchSpace) -> list[Genotype]:
    rng = random.Random(CORRECTION_SEED)
    return [random_genotype(space, rng) for _ in range(CORRECTION_SAMPLES)]


def latency_model(space: SearchSpace, target: Target | None = None, hr_size: tuple[int, int] = HR_SIZE,
                  timer: Timer | None = None, progress: bool = True, rebuild: bool = False) -> LatencyModel:
    """The cached latency model of ``space`` on ``target``, built (and cached atomically) when missing,
    unreadable or made under another key; ``rebuild`` measures afresh."""
    key = target_key(space, target, hr_size)
    path = cache_path(key)
    if not rebuild:
        cached = _read_cache(path, key)
        if cached is not None:
            return cached
    model = build_model(space, target, hr_size, timer, progress)
    try:
        atomic_write_json(path, model.to_dict())
        model.path = path
    except OSError as exc:
        warnings.warn(f"latency cache {path} not written ({exc}); the table is used uncached", stacklevel=2)
    return model


def predict_ms(genotype: Genotype, target: Target | None = None, hr_size: tuple[int, int] = HR_SIZE,
               progress: bool = True) -> tuple[float, LatencyModel]:
    """Predicted latency (ms) of a genotype on ``target`` (default: this CPU) and the model behind it."""
    check_unpruned(genotype)  # before measuring a table it could not use
    model = latency_model(space_of(genotype), target, hr_size, progress=progress)
    return model.predict(genotype), model


#: The timer :func:`build_model` uses when none is passed (tests swap in a fake one).
DEFAULT_TIMER: Timer = measure


def parse_duration_ms(value: Any, field_name: str = "value") -> float:
    """``"120ms"``, ``"0.12s"``, ``"120"`` or ``120`` (ms) -> milliseconds (positive)."""
    text = str(value).strip().lower() if not isinstance(value, (int, float)) or isinstance(value, bool) else value
    try:
        if isinstance(text, bool):
            raise ValueError
        if isinstance(text, (int, float)):
            ms = float(text)
        elif text.endswith("ms"):
            ms = float(text[:-2])
        elif text.endswith("s"):
            ms = 1e3 * float(text[:-1])
        else:
            ms = float(text)
    except ValueError:
        raise ConfigError(f"{field_name}: expected a duration such as 120ms or 0.12s, got {value!r}") from None
    if not ms > 0 or ms == float("inf"):
        raise ConfigError(f"{field_name}: expected a positive duration such as 120ms, got {value!r}")
    return ms


__all__ = [
    "DEFAULT_TIMER", "LatencyError", "LatencyModel", "Part", "Target", "build_model", "cache_dir", "cache_path",
    "check_unpruned", "fit_correction", "latency_model", "measure", "measure_genotype", "on_target", "parse_duration_ms", "parts_of",
    "predict_ms", "reference_genotype", "space_of", "target_key",
]
