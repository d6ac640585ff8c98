"""Wall-clock timing and memory probes: medians after warm-up, the machine's dense-conv ceiling."""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
