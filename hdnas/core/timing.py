"""Wall-clock timing and memory probes: medians after warm-up, the machine's dense-conv ceiling."""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn


@dataclass
class Timing:
    """Seconds of the timed repeats (warm-up excluded)."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def as_ms(self) -> dict[str, Any]:
        return {
            "median": round(self.median * 1e3, 3),
            "min": round(min(self.times) * 1e3, 3),
            "max": round(max(self.times) * 1e3, 3),
            "n": len(self.times),
        }


def time_fn(fn: Callable[[], Any], warmup: int = 1, repeats: int = 5) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (wall clock, perf_counter)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(times)


# glibc's mallopt parameters (malloc.h) and their defaults, restored after timing.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_TRIM_THRESHOLD, _GLIBC_MMAP_MAX = 128 * 1024, 65536


def _libc() -> Any | None:
    """The C library when it has glibc's ``mallopt`` and ``malloc_trim`` (None elsewhere: macOS, musl)."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") and hasattr(lib, "gnu_get_libc_version")):
        return None
    return lib


@contextmanager
def kept_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, freed memory stays in the process (glibc: no mmap, no trim); yields whether it applied.

    Why: with glibc's defaults a large tensor (a 32-channel map at ×2 of 720p is 29.5 MB) is mmapped
    afresh on each allocation and its pages are faulted in and zeroed on first touch, so a memory-bound
    op (depthwise, 1×1, element-wise) ran 2–4× slower than its arithmetic needs, by an amount that
    depends on the process's allocation history (glibc moves its mmap threshold as chunks are freed).
    Parts timed that way do not add up to nets, and the same net moves between processes. Keeping the
    memory, as jemalloc or tcmalloc do in a tuned deployment, makes a forward after warm-up reuse it.
    On exit the defaults come back (the threshold then stays fixed) and the heap is trimmed."""
    lib = _libc() if enabled else None
    if lib is None:
        yield False
        return
    applied = bool(lib.mallopt(_M_MMAP_MAX, 0)) and bool(lib.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    try:
        yield applied
    finally:
        lib.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
        lib.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
        lib.malloc_trim(0)


def minor_faults_per_call(fn: Callable[[], Any], warmup: int = 3, repeats: int = 5) -> float:
    """Median minor page faults of one ``fn()`` after ``warmup`` calls: how many calls the heap takes to
    settle depends on the kernels the processor gets (one on AVX-512 here, two on another machine)."""
    for _ in range(warmup):
        fn()
    per = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        per.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return float(statistics.median(per))


def dense_conv_gmacs(
    channels: int = 64, lr_size: tuple[int, int] = (180, 320), channels_last: bool = True, warmup: int = 2, repeats: int = 5
) -> float:
    """This machine's dense 3×3 conv throughput now (GMAC/s, median): the ceiling nets are measured against."""
    conv = nn.Conv2d(channels, channels, 3, padding=1).eval()
    x = torch.rand(1, channels, *lr_size)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    macs = channels * channels * 9 * lr_size[0] * lr_size[1]
    with torch.inference_mode():
        t = time_fn(lambda: conv(x), warmup, repeats)
    return macs / t.median / 1e9


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None
