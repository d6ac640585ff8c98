"""Where a run happened: CPU, cores, memory, software and threads, recorded with every figure.

Search provenance and benchmark results both record it, so it lives in the core.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Any

import torch


# ================================================================================================
# machine and timing
# ================================================================================================
def _cpuinfo() -> tuple[str, int | None, list[str]]:
    model, cores, flags = platform.processor() or platform.machine(), None, []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, cores, flags
    pairs, phys = set(), None
    for line in text.splitlines():
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "model name" and model in ("", platform.processor(), platform.machine()):
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            pairs.add((phys, value))
        elif key == "flags" and not flags:
            flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in value.split()]
    return model, (len(pairs) or None), flags


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """What a reader needs to interpret a timing: CPU, cores, memory, software, threads, load, date."""
    model, physical, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": model,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "usable_cores": usable,
        "memory_gib": _mem_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "cuda": torch.cuda.is_available(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except Exception:  # noqa: BLE001 - optional
        info["onnxruntime"] = None
    return info


def available_memory() -> int | None:
    """Bytes the kernel says a new allocation can have now (``MemAvailable``); None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
