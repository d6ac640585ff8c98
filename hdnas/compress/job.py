"""The job behind ``tools/compress.py``: a trained checkpoint in, a smaller trained net out.

``OUT/best.pt`` (a retrain checkpoint: ``load_model``, ``tools/evaluate.py`` and ``tools/export.py``
read it), ``OUT/genotype.json`` (version 2, with the widths chosen; ``tools/summary.py`` counts it,
``tools/render.py`` draws it); for DRC and the baselines the fine-tuning's ``OUT/last.pt`` too, for
DRC the channel search's checkpoint and logs under ``OUT/search/``, and for iterative pruning one
fine-tuning run per round under ``OUT/round<r>/``. Every check on the inputs runs before any work.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hdnas import __version__
from hdnas.core.config import load_config, to_dict
from hdnas.core.cost import count
from hdnas.core.errors import HdnasError
from hdnas.core.genotype import Genotype, load_genotype
from hdnas.core.network import DerivedNet
from hdnas.core.run import check_folder, load_checkpoint
from hdnas.core.surgery import prune
from hdnas.core.weights import CHECKPOINT_FORMAT, genotype_mismatch, load_model
from hdnas.compress.config import CompressConfig, CompressError, check_rate
from hdnas.compress.drc import (ChannelSearch, ChannelSearchResult, search_run_dir, select_channels, uniform_widths,
                                widths_genotype)
from hdnas.compress.prune import Clock, IterativeResult, finetune, iterative_prune, l1_prune, train_from_scratch, widths_of
from hdnas.train.trainer import TrainResult


def load_compress_config(config=None, overrides=()) -> CompressConfig:
    """defaults <- ``--config`` YAML <- ``key=value`` overrides (the rate is checked first, by name)."""
    for item in overrides:
        if isinstance(item, str) and item.startswith("rate="):
            check_rate(item[len("rate="):])
    return load_config(CompressConfig, config, overrides)


def load_source(checkpoint: str | os.PathLike, genotype: Genotype | None = None,
                scale: int | None = None) -> tuple[DerivedNet, dict | None]:
    """The trained net to compress and its dual model's weights (None when the run had none).

    Refused, naming the file: not a checkpoint; a checkpoint of another genotype (``genotype``) or
    scale (``scale``); an adaptive (AdaDSR) net.
    """
    try:
        state = load_checkpoint(checkpoint)
    except HdnasError as exc:
        raise CompressError(str(exc)) from None
    if state.get("format") != CHECKPOINT_FORMAT:
        if genotype is None:
            what = state.get("format", "no format tag")
            raise CompressError(f"{checkpoint}: not an hdnas retrain checkpoint ({what}); compress a best.pt or "
                                f"last.pt of tools/retrain.py, or pass --genotype with a bare state dict")
    else:
        if genotype is not None:
            why = genotype_mismatch(state["genotype"], genotype)
            if why is not None:
                raise CompressError(f"{checkpoint}: a checkpoint of another genotype: {why}")
        saved_scale = state["genotype"].get("scale")
        if scale is not None and saved_scale != scale:
            raise CompressError(f"{checkpoint}: a checkpoint for ×{saved_scale}, not ×{scale}")
        if state.get("adaptive"):
            raise CompressError(f"{checkpoint}: an adaptive (AdaDSR) net; compress a plain retrained net")
    try:
        net, geno = load_model(checkpoint, genotype)
    except HdnasError as exc:
        raise CompressError(str(exc)) from None
    if scale is not None and geno.scale != scale:
        raise CompressError(f"{checkpoint}: a net for ×{geno.scale}, not ×{scale}")
    dual = state.get("dual") if state.get("format") == CHECKPOINT_FORMAT else None
    return net, dual


@dataclass
class CompressResult:
    out: Path
    method: str
    genotype: Genotype
    widths: dict[str, int]
    macs_before: int
    params_before: int
    macs: int
    params: int
    target_macs: int | None  # None for iterative pruning (the tolerance decides how far it goes)
    search: ChannelSearchResult | None
    train: TrainResult | None  # None when iterative pruning kept no round
    seconds: float
    iterative: IterativeResult | None = None


def run_compress(cfg: CompressConfig, checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                 genotype: Genotype | None = None, scale: int | None = None, widths_from: str | None = None,
                 resume: bool = False, force: bool = False, progress: bool = True, log: bool = True,
                 train_set=None, val_set=None, search_data=None, clock: Clock = time.monotonic) -> CompressResult:
    """Compress ``checkpoint`` by ``cfg.method`` into ``out`` (module docstring).

    ``widths_from``: for ``l1`` / ``scratch``, a genotype JSON (e.g. a DRC run's ``genotype.json``) whose
    widths to use; default the uniform widths of ``cfg.rate``. ``iterative`` reads no rate: its
    ``iterative`` section (step rate, tolerance) decides the widths. ``clock`` measures ``cfg.minutes``
    (``time.process_time``: CPU time, so a loaded machine does not shorten the run).
    """
    t0 = time.monotonic()
    out = check_folder(out, "the compression output folder", CompressError)
    net, dual_state = load_source(checkpoint, genotype, scale)
    geno = net.genotype
    pinned = None
    if widths_from is not None:
        pinned_geno = load_genotype(widths_from)
        why = genotype_mismatch(pinned_geno.to_dict(), geno)
        if why is not None:
            raise CompressError(f"{widths_from}: widths of another genotype: {why}")
        pinned = widths_of(pinned_geno)
    if not resume and not force:
        for name in ("last.pt", "genotype.json", "search/checkpoint.pt", "round1/last.pt"):
            if (out / name).exists():
                raise CompressError(f"{out / name}: exists; pass --resume to continue, --force to start over, or "
                                    f"--out <another folder>")
    if pinned is not None and cfg.method in ("drc", "iterative"):
        raise CompressError(f"--widths applies to the baselines (l1, scratch); {cfg.method} chooses its own widths")
    target_widths = pinned or uniform_widths(geno, cfg.rate, cfg.drc.round_to)
    target = None if cfg.method == "iterative" else count(widths_genotype(geno, target_widths)).macs
    before = count(geno)
    search = iterative = None
    minutes_left = cfg.minutes
    if cfg.method == "drc":
        searcher = ChannelSearch(cfg, net, search_run_dir(out), dual_state=dual_state, data=search_data,
                                 progress=progress, log=log, clock=clock)
        searcher.start(resume=resume and searcher.ckpt_path.exists(), force=force)
        search = searcher.run()
        widths = search.widths
        pruned = prune(net, select_channels(searcher.scores, widths))
        if cfg.minutes is not None:  # the search's time (over resumes) comes off the total
            minutes_left = cfg.minutes - search.seconds / 60.0
        result = finetune(pruned, net, cfg, out, minutes_left, resume=resume, force=force, train_set=train_set,
                          val_set=val_set, progress=progress, log=log, clock=clock, dual_state=dual_state)
    elif cfg.method == "l1":
        widths = target_widths
        result = finetune(l1_prune(net, widths), net, cfg, out, minutes_left, resume=resume, force=force,
                          train_set=train_set, val_set=val_set, progress=progress, log=log, clock=clock,
                          dual_state=dual_state)
    elif cfg.method == "iterative":
        iterative = iterative_prune(net, cfg, out, minutes_left, resume=resume, force=force, train_set=train_set,
                                    val_set=val_set, progress=progress, log=log, clock=clock, dual_state=dual_state)
        widths = widths_of(iterative.net.genotype)
        result = iterative.train
    else:
        widths = target_widths
        result = train_from_scratch(geno, widths, cfg, out, minutes_left, resume=resume, force=force,
                                    train_set=train_set, val_set=val_set, progress=progress, log=log, clock=clock)
    pruned_geno = iterative.net.genotype if iterative is not None else widths_genotype(geno, widths)
    pruned_geno = Genotype.from_dict(pruned_geno.to_dict())  # a copy: the provenance is this run's
    after = count(pruned_geno)
    pruned_geno.provenance = {
        "tool": "hdnas compress",
        "hdnas_version": __version__,
        "method": cfg.method,
        "rate": None if iterative is not None else cfg.rate,
        "source_checkpoint": str(checkpoint),
        "source_macs": before.macs,
        "target_macs": target,
        "macs": after.macs,
        "params": after.params,
        "val_psnr": iterative.reference_psnr if result is None else result.best_psnr,
        "config": to_dict(cfg),
        "date": _dt.date.today().isoformat(),
        "source_provenance": geno.provenance,
    }
    if iterative is not None:
        pruned_geno.provenance["iterative"] = iterative.summary()
    pruned_geno.save(out / "genotype.json")
    return CompressResult(out=out, method=cfg.method, genotype=pruned_geno, widths=widths, macs_before=before.macs,
                          params_before=before.params, macs=after.macs, params=after.params, target_macs=target,
                          search=search, train=result, seconds=time.monotonic() - t0, iterative=iterative)
