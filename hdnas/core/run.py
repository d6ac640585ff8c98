"""The run scaffold every training loop of hdnas stands on (search, retrain, and next compress).

A loop subclasses :class:`Run` and keeps only what is its own: its steps and its state. The
scaffold holds, once, what the loops must agree on:

* seeded per-step generators (:func:`step_generator`): a batch depends on (seed, step, stream) only;
* atomic checkpoints (format tag, config as JSON, RNG states, history) that load with
  ``weights_only=True`` (the temporary file + ``os.replace`` means a reader sees the previous
  checkpoint or the new one, never half of one, even after SIGKILL);
* the resume rules (:data:`RESUME_FREE`, :meth:`Run.start`, :meth:`Run.resume`);
* output folders checked before any work starts (:func:`check_folder`, :func:`check_file`);
* the held-out split and training patches (:func:`build_data`, :func:`patch_datasets`);
* the TensorBoard writer, progress bars (:class:`Progress`), and logging failures reported once.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from hdnas.core.atomic import atomic_write
from hdnas.core.config import DataConfig, first_difference, merge, to_dict
from hdnas.core.data import PatchDataset, SRImageSet, build_dataset, find_pairs
from hdnas.core.distributed import DistContext, resolve_device
from hdnas.core.errors import DataError, HdnasError

T = TypeVar("T")

#: Config keys a resumed run may change, in every loop: they name or place the run, or set how fast
#: it goes, never what it computes (the genotype *path* may move; the architecture is checked apart).
#: Any other difference is an error naming the field.
RESUME_FREE = frozenset({"name", "runs_dir", "device", "threads", "train.minutes", "genotype"})


class RunError(HdnasError):
    """A run cannot start or go on (bad output path, mismatched resume, missing checkpoint)."""


class RunWarning(UserWarning):
    """Something the user should know and did not ask for: images left out, built-in data used, a log lost."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, carrying the checkpoint a ``--resume`` would continue (None: nothing saved)."""

    def __init__(self, checkpoint: Path | None):
        super().__init__()
        self.checkpoint = checkpoint


def interrupted_message(exc: BaseException) -> str:
    """What the tools print on Ctrl-C: ``--resume`` is offered only when a checkpoint exists."""
    ckpt = getattr(exc, "checkpoint", None)
    if ckpt is not None:
        return f"interrupted: the last checkpoint is {ckpt}; continue with --resume"
    return "interrupted before the first checkpoint: nothing was saved, so there is nothing to resume"


def run_job(job: Callable[[], T]) -> tuple[T | None, int]:
    """What a tool does around a long job: ``(result, 0)``, or ``(None, 2)`` after printing an
    :class:`HdnasError` as ``error: …``, or ``(None, 130)`` after Ctrl-C with :func:`interrupted_message`."""
    try:
        return job(), 0
    except HdnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, 2
    except KeyboardInterrupt as exc:
        print(interrupted_message(exc), file=sys.stderr)
        return None, 130


def warn(message: str) -> None:
    """A :class:`RunWarning` from the main process only (under torchrun every rank would repeat it)."""
    if os.environ.get("RANK", "0") == "0":
        warnings.warn(message, RunWarning, stacklevel=3)


# ------------------------------------------------------------------------------ checkpoints, RNG


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file, fsync, ``os.replace``."""
    return atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HdnasError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise HdnasError(f"{path}: not a readable hdnas checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise HdnasError(f"{path}: holds a {type(state).__name__}, not a checkpoint or a state dict")
    return state


def rng_state() -> dict[str, Any]:
    """Global RNG states in a ``weights_only``-loadable form (tensors, ints, lists)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A fresh generator per (seed, step, stream): a batch does not depend on what ran before it,
    so a resumed run draws exactly what an uninterrupted one would have."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 7 + stream) % (2**63 - 1))
    return g


# ----------------------------------------------------------------------------------- output paths


def check_folder(path: str | os.PathLike, what: str, error: type[HdnasError] = RunError) -> Path:
    """Refuse, before any work, a folder that cannot be made: it or a parent exists as a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise error(f"{p}: exists and is not a folder (needed for {what} {path})")
    return path


def check_file(path: str | os.PathLike, what: str, force: bool, exists_hint: str,
               error: type[HdnasError] = RunError) -> Path:
    """Refuse, before any work, a file path that cannot be written: a folder, under a file, or present without ``force``."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a folder; {what} must name a file")
    check_folder(path.parent, f"the folder of {what}", error)
    if path.exists() and not force:
        raise error(f"{path}: exists; {exists_hint}")
    return path


# -------------------------------------------------------------------------------------------- data


def held_out_split(n: int, n_val: int, seed: int, parts: int = 1) -> tuple[list[list[int]], list[int]]:
    """Indices ``0..n-1`` as ``parts`` disjoint training parts and ``n_val`` validation indices.

    One seeded numpy permutation (the one :func:`hdnas.core.data.split_train_val` uses, so a search's
    halves are as before): the first ``n_val`` are held out, the rest dealt into ``parts`` contiguous
    parts, the first parts taking the extra items. Each part keeps index order.
    """
    if n - n_val < parts:
        raise DataError(f"data: {n} image(s) leave {n - n_val} for training after holding out {n_val} for "
                        f"validation; need at least {parts} (add images or pass data.val_paths)")
    perm = np.random.default_rng(seed).permutation(n)
    rest = perm[n_val:]
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + (len(rest) - bounds[-1] + parts - i - 1) // (parts - i))
    train = [sorted(rest[a:b].tolist()) for a, b in zip(bounds, bounds[1:])]
    return train, sorted(perm[:n_val].tolist())


def build_data(cfg: DataConfig, scale: int, seed: int = 0, parts: int = 1) -> tuple[list[SRImageSet], SRImageSet]:
    """(``parts`` disjoint training sets, validation set) by the rules of :class:`DataConfig`.

    Validation: ``val_paths``; else the source's val split (the sample set's, DIV2K's); else
    ``val_fraction`` of the images held out (:func:`held_out_split`). No ``paths``: the built-in
    sample set, with a warning, so nobody trains on it without knowing.
    """
    images = build_dataset(cfg.paths or None, scale, "train")
    if not cfg.paths:
        warn(f"no --data given: using the built-in sample set ({len(images)} photos); pass --data DIR to use "
             "your own images")
    n_val = 0
    if cfg.val_paths:
        val = build_dataset(cfg.val_paths, scale, "val")
    elif not cfg.paths:
        val = build_dataset(None, scale, "val")
    elif all(find_pairs(p, scale, "train")[1] != find_pairs(p, scale, "val")[1] for p in cfg.paths):
        val = build_dataset(cfg.paths, scale, "val")
    else:
        val = None
        n_val = max(1, round(cfg.val_fraction * len(images)))
    train_idx, val_idx = held_out_split(len(images), n_val, seed, parts)
    if val is None:
        val = images.subset(val_idx, name=f"{images.name} (held out)")
    if cfg.val_max_images > 0:
        val = val.subset(range(min(cfg.val_max_images, len(val))))
    return [images.subset(idx) for idx in train_idx], val


def patch_datasets(sets: list[SRImageSet], cfg: DataConfig) -> list[PatchDataset]:
    """Patch samplers over ``sets``; images smaller than a patch (T91 has 78x78 ones) are left out, with one warning."""
    out = [PatchDataset(s, cfg.patch, augment=cfg.augment, skip_small=True) for s in sets]
    total, kept = sum(len(s) for s in sets), sum(len(p.images) for p in out)
    if kept < total:
        warn(f"{total - kept} of {total} training images are smaller than the LR patch {cfg.patch} "
             f"(x{sets[0].scale}) and are left out")
    return out


# ---------------------------------------------------------------------------------------- progress


class Progress:
    """A console bar toward what ends the run: the steps, or the wall-clock budget when one is set
    (then the bar counts seconds of the budget and the step count is a figure beside it)."""

    def __init__(self, desc: str, steps: int, done: int = 0, *, minutes: float | None = None, seconds: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, enabled: bool = True, file: Any = None):
        self.steps, self.budget = steps, None if minutes is None else minutes * 60.0
        self.clock, self.bar = clock, None
        if not enabled:
            return
        if self.budget is None:
            self.bar = tqdm(total=steps, initial=done, desc=desc, dynamic_ncols=True, file=file)
        else:
            self.bar = tqdm(total=round(self.budget), initial=min(round(seconds), round(self.budget)), desc=desc,
                            unit="s", dynamic_ncols=True, file=file,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s of the time budget "
                                       "[{elapsed}<{remaining}{postfix}]")
            self.start = clock() - seconds  # the budget counts the time of earlier sessions too

    def advance(self, done: int, **figures: str) -> None:
        """``done`` steps so far, and the figures to show beside the bar."""
        if self.bar is None:
            return
        if self.budget is not None:
            figures = {"step": f"{done}/{self.steps}", **figures}
            target = round(min(self.clock() - self.start, self.budget))
        else:
            target = done
        self.bar.set_postfix(figures, refresh=False)
        self.bar.update(target - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------ the base


class RunConfig(Protocol):
    """What the scaffold reads from a loop's config dataclass."""

    seed: int
    device: str
    threads: int
    data: DataConfig


class Run:
    """The shared base of a loop: device, run folder, checkpoint, resume, TensorBoard, progress.

    A subclass sets :attr:`kind`, :attr:`checkpoint_format`, :attr:`Error` and :attr:`elsewhere`, and
    provides :meth:`loop_state` / :meth:`load_loop_state` (what evolves in its loop) and
    :attr:`position` (its step count, where TensorBoard resumes).
    """

    kind: ClassVar[str] = "run"
    checkpoint_format: ClassVar[str] = "hdnas-run-checkpoint/1"
    Error: ClassVar[type[HdnasError]] = RunError
    elsewhere: ClassVar[str] = "name=<new name>"  # how to start a run beside an existing one

    def __init__(self, cfg: RunConfig, run_dir: str | os.PathLike, checkpoint: str = "checkpoint.pt", *,
                 dist_ctx: DistContext | None = None, progress: bool = True, log: bool = True):
        self.run_dir = check_folder(run_dir, "the run folder", self.Error)
        self.ckpt_path = self.run_dir / checkpoint
        self.cfg = cfg
        self.dist = dist_ctx or DistContext()
        self.progress = progress and self.dist.is_main
        self.log = log and self.dist.is_main
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.device = self.dist.device if self.dist.enabled else resolve_device(cfg.device)
        if cfg.data.batch % self.dist.world_size:
            raise self.Error(f"data.batch {cfg.data.batch} does not split evenly over {self.dist.world_size} processes")
        self.history: list[dict] = []
        self.writer = None
        self.has_checkpoint = False  # saved or resumed by this object: what Ctrl-C can offer to --resume
        self._unlogged: set[str] = set()
        seed_everything(cfg.seed)

    # -- what a loop provides ---------------------------------------------------------------------
    @property
    def position(self) -> int:
        raise NotImplementedError

    def loop_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_loop_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def check_checkpoint(self, state: dict[str, Any], where: str | os.PathLike) -> None:
        """Extra checks before a checkpoint is loaded (retrain: the genotype)."""

    def generator(self, step: int, stream: int = 0) -> torch.Generator:
        return step_generator(self.cfg.seed, step, stream)

    # -- checkpoints and resume -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"format": self.checkpoint_format, "config": json.dumps(to_dict(self.cfg), sort_keys=True),
                **self.loop_state(), "rng": rng_state(), "history": json.dumps(self.history)}

    def load_state_dict(self, state: dict[str, Any], where: str | os.PathLike | None = None) -> None:
        """Load a checkpoint of this loop whose config differs at most in :data:`RESUME_FREE` keys."""
        where = where or self.ckpt_path
        if state.get("format") != self.checkpoint_format:
            raise self.Error(f"{where}: not an hdnas {self.kind} checkpoint")
        self.check_checkpoint(state, where)
        # a field added to the config since the checkpoint was written reads as its default there
        saved = merge(to_dict(type(self.cfg)()), json.loads(state["config"]))
        diff = first_difference(saved, to_dict(self.cfg), ignore=RESUME_FREE)
        if diff is not None:
            raise self.Error(f"{where}: --resume with a different config: '{diff[0]}' was {diff[1]!r} in the "
                             f"checkpoint, now {diff[2]!r}")
        self.load_loop_state(state)
        set_rng_state(state["rng"])
        self.history = json.loads(state["history"])

    def resume(self, missing_ok: bool = False) -> bool:
        """Continue from the run's checkpoint; True when it did.

        With no checkpoint there this is an error naming the path it looked for, in every loop: a
        typo in ``name=`` or ``--out`` must not silently start a fresh run. ``missing_ok`` returns
        False instead.
        """
        if not self.ckpt_path.exists():
            if missing_ok:
                return False
            raise self.Error(f"{self.ckpt_path}: nothing to resume (no checkpoint there; check name=, runs_dir= "
                             f"or --out)")
        self.load_state_dict(load_checkpoint(self.ckpt_path, map_location=self.device), self.ckpt_path)
        self.has_checkpoint = True
        return True

    def start(self, resume: bool = False, force: bool = False) -> None:
        """The rules before :meth:`run`: ``resume`` continues the checkpoint (an error when there is none);
        otherwise an existing checkpoint is refused unless ``force``, so no work is overwritten by accident."""
        if resume:
            self.resume()
        elif self.ckpt_path.exists() and not force:
            raise self.Error(f"{self.ckpt_path}: this run folder has a checkpoint; pass --resume to continue it, "
                             f"--force to start over, or {self.elsewhere}")

    def save(self, *also: Path) -> None:
        """Write the checkpoint (and copies at ``also``) atomically from the main process."""
        if self.dist.is_main:
            state = self.state_dict()
            save_checkpoint(state, self.ckpt_path)
            for path in also:
                save_checkpoint(state, path)
        self.has_checkpoint = True
        self.dist.barrier()

    # -- logs and progress ------------------------------------------------------------------------
    def open_writer(self) -> None:
        """TensorBoard under ``<run>/tb``; events past the resumed position are purged."""
        if not self.log or self.writer is not None:
            return
        try:  # optional: the run goes on without logs, and says so
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            self._report("TensorBoard logs", exc)
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=self.position)

    def _report(self, what: str, exc: BaseException) -> None:
        if what not in self._unlogged:
            self._unlogged.add(what)
            warn(f"{what} not logged ({type(exc).__name__}: {exc}); the run goes on (said once)")

    @contextmanager
    def logging(self, what: str) -> Iterator[None]:
        """Run a logging block; a failure is reported as a warning naming ``what`` (once), never raised or hidden."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - a log must never stop a run, but must not fail silently
            self._report(what, exc)

    @contextmanager
    def session(self, steps: int, done: int, *, minutes: float | None = None, seconds: float = 0.0,
                clock: Callable[[], float] = time.monotonic) -> Iterator[Progress]:
        """The frame of a loop's ``run()``: writer open, a progress bar, and on the way out the bar
        closed, logs flushed, and Ctrl-C turned into :class:`Interrupted` naming what can be resumed."""
        self.open_writer()
        bar = Progress(self.run_dir.name, steps, done, minutes=minutes, seconds=seconds, clock=clock,
                       enabled=self.progress, file=sys.stderr)
        try:
            yield bar
        except KeyboardInterrupt:
            raise Interrupted(self.ckpt_path if self.has_checkpoint else None) from None
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.flush()
