"""What every benchmark suite shares: the results file, the subprocess worker, and text tables.

A results file holds one entry per suite (``runs`` and ``records``); a record replaces the one with
the same ``key``, so long suites can run one piece per command. Every run records a machine
description (:func:`hdnas.core.machine.machine_info`: CPU, cores, torch and threads, date; no host
name). Timings are medians after warm-up; on a shared machine read them beside the load average and
dense-conv figure recorded with them. Comparisons are measured side by side in one run, never
against figures copied from another machine.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from hdnas.core.atomic import atomic_write_json, json_safe
from hdnas.core.errors import HdnasError
from hdnas.core.machine import machine_info

REPO_ROOT = Path(__file__).resolve().parents[2]
FORMAT = {"name": "hdnas-benchmark", "version": 1}
SUITES = ("search", "models", "quality", "latency", "ablation", "compress")

Log = Callable[[str], None]


class BenchmarkError(HdnasError):
    """A suite cannot run as asked (missing genotype, mismatched results file, bad option)."""


def print_line(msg: str) -> None:
    """The default ``log`` of every suite: flushed, so progress shows in piped output too."""
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------
# results file
# ------------------------------------------------------------------------------------------------
def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """The results file at ``path`` (an empty one if absent); refuses a file of another format."""
    path = Path(path)
    if not path.exists():
        return {"format": dict(FORMAT), "suites": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: not a valid results file ({exc.msg} at line {exc.lineno})") from None
    if data.get("format", {}).get("name") != FORMAT["name"]:
        raise BenchmarkError(f"{path}: not an hdnas benchmark results file (format.name)")
    data.setdefault("suites", {})
    return data


def merge_suite(
    results: dict[str, Any], suite: str, run: dict[str, Any], records: list[dict[str, Any]], protocol: dict | None = None
) -> dict[str, Any]:
    """Add one run of ``suite``: its records replace earlier ones with the same ``key``.

    ``protocol`` (quality): the settings that make records comparable; a results file holding
    records made under another protocol is refused rather than silently mixed.
    """
    entry = results["suites"].setdefault(suite, {"runs": [], "records": []})
    if protocol is not None:
        new = json_safe(protocol)
        old = entry.get("protocol")
        if old is not None and entry["records"] and old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise BenchmarkError(
                f"the results file holds '{suite}' records made under another protocol (differs in: {', '.join(diff)}); "
                f"write to another --json file or remove the old one"
            )
        entry["protocol"] = new
    run_id = max((r["id"] for r in entry["runs"]), default=-1) + 1
    entry["runs"].append({"id": run_id, **json_safe(run)})
    new_keys = {r["key"] for r in records}
    kept = [r for r in entry["records"] if r["key"] not in new_keys]
    entry["records"] = kept + [{**json_safe(r), "run": run_id} for r in records]
    used = {r["run"] for r in entry["records"]}
    entry["runs"] = [r for r in entry["runs"] if r["id"] in used]
    return results


@contextmanager
def file_lock(path: str | os.PathLike, block: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock on ``path`` (created if absent): yields True once held, or False at
    once when ``block`` is False and another process holds it.

    ``fcntl.flock``: the system drops the lock when its holder dies (a killed run leaves nothing to
    clean up). Where ``fcntl`` is missing (Windows) it yields True without locking.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield True
        return
    with open(path, "a+") as fh:
        held = True
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            held = False
        try:
            yield held
        finally:
            if held:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _results_lock(path: Path):
    return file_lock(path.with_name(path.name + ".lock"))


def save_suite(
    path: str | os.PathLike, suite: str, run: dict[str, Any], records: list[dict[str, Any]],
    protocol: dict | None = None, update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """:func:`merge_suite` into the results file itself: read, merge, ``update(entry)``, write, under a lock.

    Re-reading under the lock is what lets processes side by side, or one suite saving record by
    record, share one file without dropping each other's records. Returns the results written.
    """
    path = Path(path)
    with _results_lock(path):
        results = load_results(path)
        merge_suite(results, suite, run, records, protocol)
        if update is not None:
            update(results["suites"][suite])
        atomic_write_json(path, results)
    return results


def store_suite(path: str | os.PathLike, suite: str, entry: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    """Write one suite's ``entry`` (None: keep the file's, already saved by :func:`save_suite`) and its
    ``seconds_last_run`` into the results file, re-read under the lock so other suites' entries stay."""
    path = Path(path)
    with _results_lock(path):
        results = load_results(path)
        if entry is not None:
            results["suites"][suite] = entry
        results["suites"].setdefault(suite, {"runs": [], "records": []})["seconds_last_run"] = seconds
        atomic_write_json(path, results)
    return results


def run_info(config: Any) -> dict[str, Any]:
    """What a run records beside its records: date, machine, the suite's config and the command."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
            "config": cfg, "command": " ".join(sys.argv)}


def format_table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Aligned text table: the first ``left`` columns left-aligned, the rest (numbers) right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# subprocess worker (fresh process per configuration: meaningful peak RSS, hard time limits)
# ------------------------------------------------------------------------------------------------
_RESULT_TAG = "HDNAS_BENCH_RESULT "
_WORKER_PACKAGE = "hdnas.bench."


def run_worker(task: str, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run ``task`` (``"hdnas.bench.<suite>:<function>"``) with ``**spec`` in a fresh Python.

    Returns the function's result dict, or ``{"error": ...}``: never raises, so one failed
    configuration becomes one record with an error instead of losing the suite.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = "import sys; from hdnas.bench.common import worker_main; sys.exit(worker_main(sys.argv[1]))"
    arg = json.dumps({"task": task, **spec})
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=timeout_s,
                              cwd=str(REPO_ROOT), env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s", "wall_s": round(time.perf_counter() - t0, 1)}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            out = json.loads(line[len(_RESULT_TAG):])
            out.setdefault("wall_s", round(time.perf_counter() - t0, 1))
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
    return {"error": f"worker exited with {proc.returncode}: " + " | ".join(tail)}


def worker_main(arg: str) -> int:
    """The worker process: resolve the task by name (so this module needs no suite) and print its result."""
    spec = json.loads(arg)
    task = spec.pop("task")
    try:
        module, _, name = task.partition(":")
        if not module.startswith(_WORKER_PACKAGE) or not name:
            raise BenchmarkError(f"unknown worker task {task!r} (expected 'hdnas.bench.<suite>:<function>')")
        out = getattr(importlib.import_module(module), name)(**spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a record's error
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(_RESULT_TAG + json.dumps(json_safe(out)), flush=True)
    return 0


__all__ = [
    "FORMAT",
    "REPO_ROOT",
    "SUITES",
    "BenchmarkError",
    "Log",
    "file_lock",
    "format_table",
    "load_results",
    "merge_suite",
    "print_line",
    "run_info",
    "run_worker",
    "save_suite",
    "store_suite",
    "worker_main",
]
