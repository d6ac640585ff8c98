"""Shared test fixtures.

* ``shared_data`` -- the standard image sets (Set5, Set14, T91, BSD200) at ``$HDNAS_DATA``, by
  default ``<repo>/../shared/data``; tests that need them are skipped, with the path in the reason,
  when they are absent.  ``shared_data_dir(name)`` does the same from plain code/parametrisation.
* ``seeded`` -- seeds Python, numpy and torch with 0 and returns a fresh ``torch.Generator``.
* ``single_thread`` -- runs a test with one torch thread (restored after).  On this 2-core machine,
  while another process keeps a core busy, 2 OpenMP threads made the Set5 evaluation ~10x slower
  (barrier spinning); with 1 thread it stays ~0.5 s.  Use it for small-tensor CPU tests:
  ``pytestmark = pytest.mark.usefixtures("single_thread")``.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # tests run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))


def load_tool(name: str):
    """``tools/<name>.py`` as a module (its ``main(argv)`` runs a tool in-process), under a name that
    cannot clash with an installed package."""
    spec = importlib.util.spec_from_file_location(f"hdnas_tool_{name}", REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_data_root() -> Path:
    """``$HDNAS_DATA`` or ``<repo>/../shared/data`` (may not exist)."""
    env = os.environ.get("HDNAS_DATA")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def shared_data_dir(name: str | None = None) -> Path:
    """The shared data root (or its subfolder ``name``), or skip the calling test with the reason."""
    root = shared_data_root()
    path = root / name if name else root
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set HDNAS_DATA to the folder holding Set5, Set14, ...)")
    return path


@pytest.fixture
def shared_data() -> Path:
    """Root of the shared SR image sets; skips the test when absent."""
    return shared_data_dir()


@pytest.fixture
def seeded() -> torch.Generator:
    """Seed Python, numpy and torch with 0; return a torch Generator seeded with 0."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return torch.Generator().manual_seed(0)


@pytest.fixture
def single_thread():
    """One torch thread for the test, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fake_latency_timer(name, module, x, target) -> float:
    """Seconds from the module's size and the input's area: deterministic, and no conv is ever run."""
    params = sum(p.numel() for p in module.parameters())
    return 1e-4 + 1e-11 * (params + 64) * x.shape[-1] * x.shape[-2]


@pytest.fixture(autouse=True)
def latency_sandbox(tmp_path_factory, monkeypatch):
    """Every test gets an empty latency cache and a fake timer: no test times real convs at full size
    (tests that want the real timer pass ``timer=hdnas.core.latency.measure``)."""
    from hdnas.core import latency

    monkeypatch.setenv("HDNAS_CACHE_DIR", str(tmp_path_factory.mktemp("hdnas_cache")))
    monkeypatch.setattr(latency, "DEFAULT_TIMER", fake_latency_timer)
