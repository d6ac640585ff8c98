"""Genotypes: the discrete architecture a search finds, as a dataclass and a versioned JSON file.

The JSON is meant to be read, diffed and hand-edited, so loading validates every field and names
the one at fault (``cells[2].inputs[0]``) instead of failing later inside a network constructor.
Node numbering used throughout: output 0 is the stem, output i (1..N) is cell i.

Widths (format version 2)
-------------------------
Compression prunes channels, so a genotype may record the width of every conv whose output width is
free. Which are free follows from the architecture:

* **Tied** (never recorded): the trunk. Each refinement step is ``x_k = lrelu(op_k(x_{k-1}) + x_{k-1})``,
  so every op's output and every x_k has the cell's input width; the cell output (ESA's gate on the
  fusion 1×1) feeds later cells' residuals, the input combinations and the network fusion; the stem
  feeds the long skip, which adds it to the body conv's output. All of them are ``channels`` (C).
* **Free** (recorded per cell, ``cells[i].widths``): ``distill`` — each step's distillation 1×1 output
  (default C/2), read only by the cell's concat; ``last`` — the last 3×3's output (default C/2), same;
  ``esa`` — ESA's inner width f (default C/4): its reduce 1×1 and every conv after it up to the expand
  1×1 (``c3 + conv_f(c1_)`` ties the branches to one f); ``ops`` — per step, the internal width of an
  op that has one (:mod:`hdnas.core.ops`: only the separable conv's, between its first pointwise and
  second depthwise conv, default C), ``null`` for the others.
* **Free** (network level, ``fusion_width``): the network fusion 1×1's output (default C), read only by
  the body conv.

Absent widths mean the defaults, so a version-1 file is a version-2 genotype without widths. Saving
writes version 1 when no width is recorded (byte-identical to before) and version 2 otherwise;
loading reads both. Every width is an integer from 1 to its unpruned (default) width.

Backbone variants (either version)
----------------------------------
Four optional keys say how the fixed parts differ from this project's default, for nets of a space
that follows the reference DLSR code (``search_spaces/dlsr.yaml``): ``op_bias`` (false: the searched
ops' convs have no bias), ``combine_lrelu`` (true: a LeakyReLU follows the 1×1 conv that merges a
cell's inputs), ``rgb_range`` (the pixel units inside the net, e.g. 255) and ``mean_shift`` (false: no
RGB mean subtracted). A key at its default is not written, so files without them read and save as
before.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from hdnas.core.atomic import atomic_write_text
from hdnas.core.errors import ConfigError
from hdnas.core.ops import OPS
from hdnas.core.space import SCALES, UPSAMPLERS

FORMAT_NAME = "hdnas-genotype"
#: The newest format (per-layer widths); files without widths are still written as version 1.
FORMAT_VERSION = 2
PLAIN_VERSION = 1
READ_VERSIONS = (1, 2)
#: Widest channel count a genotype may ask for. Lightweight SR nets use 32-64 (EDSR, a heavy net,
#: 256); 512 keeps a mistyped width from building a net of many GB before anything can stop it.
MAX_CHANNELS = 512


@dataclass
class CellWidths:
    """The free widths of one cell (module docstring, "Widths"); ``esa`` is None without ESA, an
    ``ops`` entry None for an op without an internal width."""

    distill: list[int]
    last: int
    esa: int | None
    ops: list[int | None]

    @classmethod
    def default(cls, channels: int, ops: list[str], esa: bool) -> "CellWidths":
        return cls(distill=[channels // 2] * len(ops), last=channels // 2, esa=channels // 4 if esa else None,
                   ops=[channels if OPS[o].mid_width else None for o in ops])

    def to_dict(self) -> dict[str, Any]:
        return {"distill": list(self.distill), "last": self.last, "esa": self.esa, "ops": list(self.ops)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CellWidths":
        return cls(distill=list(data["distill"]), last=data["last"], esa=data.get("esa"), ops=list(data["ops"]))


@dataclass
class CellGenotype:
    """One information-distillation cell: the op of each refinement step and the outputs feeding it."""

    ops: list[str]
    inputs: list[int]  # earlier outputs (0 = stem, j = cell j); more than one -> 1×1 conv over their concat
    widths: CellWidths | None = None  # pruned widths (format version 2); None: the defaults


@dataclass
class Genotype:
    scale: int
    channels: int
    cells: list[CellGenotype]
    fusion: list[int]  # cells whose outputs are concatenated into the final 1×1 fusion conv
    esa: bool = True
    upsampler: str = "pixelshuffle"
    provenance: dict[str, Any] = field(default_factory=dict)
    fusion_width: int | None = None  # the network fusion 1×1's output width (version 2); None: channels
    # backbone variants (module docstring); the defaults are this project's nets
    op_bias: bool = True
    combine_lrelu: bool = False
    rgb_range: float = 1.0
    mean_shift: bool = True

    @property
    def steps(self) -> int:
        return len(self.cells[0].ops) if self.cells else 0

    @property
    def has_widths(self) -> bool:
        """Whether any width is recorded (then the genotype is saved as format version 2)."""
        return self.fusion_width is not None or any(c.widths is not None for c in self.cells)

    def width_fields(self) -> list[str]:
        """The JSON fields that record widths, e.g. ``["cells[1].widths", "fusion_width"]``."""
        names = [f"cells[{i}].widths" for i, c in enumerate(self.cells) if c.widths is not None]
        return names + (["fusion_width"] if self.fusion_width is not None else [])

    def cell_widths(self, i: int) -> CellWidths:
        """The widths of cell ``i`` (1-based): the recorded ones, else the defaults."""
        cell = self.cells[i - 1]
        return cell.widths if cell.widths is not None else CellWidths.default(self.channels, cell.ops, self.esa)

    @property
    def fusion_channels(self) -> int:
        return self.channels if self.fusion_width is None else self.fusion_width

    def live_cells(self) -> list[int]:
        """Cells whose output reaches the fusion (a path in :meth:`graph`); the others are dead code a
        derived net skips."""
        return list(_live_cells(self._wiring()))

    def depth(self) -> int:
        """The longest chain of live cells from the stem to the fusion: how deep the net really is
        (weight-sharing search tends to wire every cell to the stem, which gives depth 1)."""
        return _depth(self._wiring())

    def build_order(self) -> list[int]:
        """The live cells in an order a network can compute them (each after its inputs).

        Raises :class:`ConfigError` naming a cycle: a genotype built in code is not necessarily
        validated, and a builder must not index an output that is not computed yet.
        """
        return list(_build_order(self._wiring()))

    def graph(self) -> nx.DiGraph:
        """The network as a graph: output 0 (stem) -> cells 1..N -> ``fusion`` -> ``upsampler``, plus
        the long skip from the stem. Edges carry their ``role``; cells their ``ops`` and ``live``."""
        g = _graph(self._wiring()).copy()
        live = set(self.live_cells())
        g.nodes[0].update(kind="stem", label="stem conv 3×3")
        for i, cell in enumerate(self.cells, start=1):
            g.nodes[i].update(kind="cell", ops=list(cell.ops), live=i in live)
        g.nodes["fusion"].update(kind="fusion")
        g.nodes["upsampler"].update(kind="upsampler", scale=self.scale)
        return g

    def _wiring(self) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
        """What the graph depends on, hashable: the graph functions below cache on it."""
        return tuple(tuple(c.inputs) for c in self.cells), tuple(self.fusion)

    def validate(self) -> None:
        validate_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: version 1 without widths (as before widths existed), version 2 with them."""
        data: dict[str, Any] = {
            "format": {"name": FORMAT_NAME, "version": FORMAT_VERSION if self.has_widths else PLAIN_VERSION},
            "scale": self.scale,
            "channels": self.channels,
            "steps": self.steps,
            "esa": self.esa,
            "upsampler": self.upsampler,
            **{k: getattr(self, k) for k, default in BACKBONE_DEFAULTS.items() if getattr(self, k) != default},
            "cells": [_cell_dict(c) for c in self.cells],
            "fusion": list(self.fusion),
        }
        if self.fusion_width is not None:
            data["fusion_width"] = self.fusion_width
        data["provenance"] = self.provenance
        return data

    @classmethod
    def from_dict(cls, data: Any, expected_scale: int | None = None) -> "Genotype":
        validate_dict(data, expected_scale)
        return cls(
            scale=data["scale"],
            channels=data["channels"],
            cells=[CellGenotype(ops=list(c["ops"]), inputs=list(c["inputs"]),
                                widths=CellWidths.from_dict(c["widths"]) if "widths" in c else None)
                   for c in data["cells"]],
            fusion=list(data["fusion"]),
            esa=data.get("esa", True),
            upsampler=data.get("upsampler", "pixelshuffle"),
            provenance=dict(data.get("provenance", {})),
            fusion_width=data.get("fusion_width"),
            **{k: data.get(k, default) for k, default in BACKBONE_DEFAULTS.items()},
        )

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    def save(self, path: str | os.PathLike, force: bool = True) -> Path:
        """Atomic write (temp file + ``os.replace``) so a killed run never leaves half a genotype."""
        self.validate()
        path = Path(path)
        if path.exists() and not force:
            raise ConfigError(f"{path}: exists; pass --force to overwrite")
        atomic_write_text(path, self.to_json() + "\n")
        return path



#: The optional backbone keys (module docstring, "Backbone variants") and their defaults.
BACKBONE_DEFAULTS: dict[str, Any] = {"op_bias": True, "combine_lrelu": False, "rgb_range": 1.0, "mean_shift": True}


def space_backbone(space) -> dict[str, Any]:
    """The genotype fields that a search space fixes (:class:`hdnas.core.space.SearchSpace`), for the
    genotypes derived or drawn from it."""
    return {"scale": space.scale, "channels": space.channels, "esa": space.esa, "upsampler": space.upsampler,
            "op_bias": space.op_bias, "combine_lrelu": space.input_merge == "concat",
            "rgb_range": float(space.rgb_range), "mean_shift": space.mean_shift}


def _cell_dict(cell: CellGenotype) -> dict[str, Any]:
    data: dict[str, Any] = {"ops": list(cell.ops), "inputs": list(cell.inputs)}
    if cell.widths is not None:
        data["widths"] = cell.widths.to_dict()
    return data


# -- the network as a graph (networkx); cached on the wiring, since genotypes are tiny and asked often --
_Wiring = tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]


@functools.lru_cache(maxsize=1024)
def _graph(wiring: _Wiring) -> nx.DiGraph:
    inputs, fusion = wiring
    g = nx.DiGraph()
    g.add_nodes_from([0, *range(1, len(inputs) + 1), "fusion", "upsampler"])
    g.add_edges_from((j, i, {"role": "input"}) for i, ins in enumerate(inputs, start=1) for j in ins)
    g.add_edges_from((j, "fusion", {"role": "fusion"}) for j in fusion)
    g.add_edge("fusion", "upsampler", role="body")
    g.add_edge(0, "upsampler", role="long_skip")
    nx.freeze(g)
    return g


@functools.lru_cache(maxsize=1024)
def _live_cells(wiring: _Wiring) -> tuple[int, ...]:
    return tuple(sorted(n for n in nx.ancestors(_graph(wiring), "fusion") if isinstance(n, int) and n > 0))


@functools.lru_cache(maxsize=1024)
def _depth(wiring: _Wiring) -> int:
    inputs, _ = wiring
    live = set(_live_cells(wiring))
    chain: dict[int, int] = {0: 0}
    for i in _build_order(wiring):
        chain[i] = 1 + max(chain[j] for j in inputs[i - 1])
    return max((chain[i] for i in live), default=0)


@functools.lru_cache(maxsize=1024)
def _build_order(wiring: _Wiring) -> tuple[int, ...]:
    g = _graph(wiring)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        live = set(_live_cells(wiring))
        order = nx.lexicographical_topological_sort(g, key=lambda n: (n, "") if isinstance(n, int) else (len(g), n))
        return tuple(n for n in order if n in live)
    path = " -> ".join(str(a) for a, _ in cycle) + f" -> {cycle[0][0]}"
    raise ConfigError(f"genotype: the cells' inputs form a cycle ({path}); a cell may only read earlier outputs")


def _dumps(data: Any, indent: int = 2, level: int = 0) -> str:
    """JSON with lists of scalars on one line, so a genotype diff reads cell by cell; strings untouched."""
    pad, inner = " " * (indent * level), " " * (indent * (level + 1))
    if isinstance(data, dict) and data:
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_dumps(v, indent, level + 1)}" for k, v in data.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        return "[\n" + ",\n".join(inner + _dumps(v, indent, level + 1) for v in data) + "\n" + pad + "]"
    return json.dumps(data, ensure_ascii=False)


def _require(data: dict, key: str, types: type | tuple, where: str = "") -> Any:
    name = f"{where}{key}"
    if key not in data:
        raise ConfigError(f"genotype field '{name}' is missing")
    value = data[key]
    if isinstance(value, bool) and types is not bool and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigError(f"genotype field '{name}': expected {getattr(types, '__name__', types)}, got {value!r}")
    if not isinstance(value, types):
        tname = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise ConfigError(f"genotype field '{name}': expected {tname}, got {value!r}")
    return value


def validate_dict(data: Any, expected_scale: int | None = None) -> None:
    """Check a genotype's JSON form; raise :class:`ConfigError` naming the offending field."""
    if not isinstance(data, dict):
        raise ConfigError(f"genotype: expected a JSON object, got {type(data).__name__}")
    fmt = _require(data, "format", dict)
    if fmt.get("name") != FORMAT_NAME:
        raise ConfigError(f"genotype field 'format.name': expected '{FORMAT_NAME}', got {fmt.get('name')!r}")
    version = fmt.get("version")
    if isinstance(version, bool) or version not in READ_VERSIONS:
        raise ConfigError(
            f"genotype field 'format.version': unsupported version {version!r} "
            f"(this hdnas reads versions {', '.join(map(str, READ_VERSIONS))})"
        )
    scale = _require(data, "scale", int)
    if scale not in SCALES:
        raise ConfigError(f"genotype field 'scale': expected one of {SCALES}, got {scale}")
    if expected_scale is not None and scale != expected_scale:
        raise ConfigError(f"genotype field 'scale': genotype is for ×{scale} but ×{expected_scale} was asked for")
    channels = _require(data, "channels", int)
    if channels < 4 or channels % 4 or channels > MAX_CHANNELS:
        raise ConfigError(
            f"genotype field 'channels': expected a multiple of 4 from 4 to {MAX_CHANNELS}, got {channels}"
        )
    if "esa" in data:
        _require(data, "esa", bool)
    if "upsampler" in data and data["upsampler"] not in UPSAMPLERS:
        raise ConfigError(f"genotype field 'upsampler': expected one of {UPSAMPLERS}, got {data['upsampler']!r}")
    for key in ("op_bias", "combine_lrelu", "mean_shift"):
        if key in data:
            _require(data, key, bool)
    if "rgb_range" in data:
        r = _require(data, "rgb_range", (int, float))
        if not r > 0:
            raise ConfigError(f"genotype field 'rgb_range': expected a positive number, got {r!r}")
    cells = _require(data, "cells", list)
    if not cells:
        raise ConfigError("genotype field 'cells': expected at least one cell")
    steps = data.get("steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"genotype field 'steps': expected a positive integer, got {steps!r}")
    for i, cell in enumerate(cells):
        where = f"cells[{i}]"
        if not isinstance(cell, dict):
            raise ConfigError(f"genotype field '{where}': expected an object with 'ops' and 'inputs'")
        unknown = sorted(set(cell) - {"ops", "inputs", "widths"})
        if unknown:
            raise ConfigError(f"genotype field '{where}.{unknown[0]}': unknown key")
        ops = _require(cell, "ops", list, where + ".")
        want = steps if steps is not None else len(cells[0].get("ops", [])) if isinstance(cells[0], dict) else None
        if not ops or (want is not None and len(ops) != want):
            raise ConfigError(f"genotype field '{where}.ops': expected {want} steps (field 'steps'), got {len(ops)}")
        for k, op in enumerate(ops):
            if op not in OPS:
                raise ConfigError(
                    f"genotype field '{where}.ops[{k}]': unknown operation {op!r} (registered: {', '.join(OPS)})"
                )
        inputs = _require(cell, "inputs", list, where + ".")
        if not inputs:
            raise ConfigError(f"genotype field '{where}.inputs': expected at least one input")
        for k, j in enumerate(inputs):
            if isinstance(j, bool) or not isinstance(j, int):
                raise ConfigError(f"genotype field '{where}.inputs[{k}]': expected an integer, got {j!r}")
            if j < 0:
                raise ConfigError(f"genotype field '{where}.inputs[{k}]': {j} is not an output (0 = stem, 1..N = cells)")
            if j > i:
                raise ConfigError(
                    f"genotype field '{where}.inputs[{k}]': cell {i + 1} cannot read output {j} "
                    f"(a later cell or itself: the network would have a cycle)"
                )
        if len(set(inputs)) != len(inputs):
            raise ConfigError(f"genotype field '{where}.inputs': an input is listed twice")
        if "widths" in cell:
            _needs_v2(version, f"{where}.widths")
            _validate_widths(cell["widths"], f"{where}.widths", channels, ops, data.get("esa", True))
    fusion = _require(data, "fusion", list)
    if not fusion:
        raise ConfigError("genotype field 'fusion': expected at least one cell")
    for k, j in enumerate(fusion):
        if isinstance(j, bool) or not isinstance(j, int) or not 1 <= j <= len(cells):
            raise ConfigError(f"genotype field 'fusion[{k}]': expected a cell number 1..{len(cells)}, got {j!r}")
    if len(set(fusion)) != len(fusion):
        raise ConfigError("genotype field 'fusion': a cell is listed twice")
    if "fusion_width" in data:
        _needs_v2(version, "fusion_width")
        _check_width(data["fusion_width"], "fusion_width", channels, "C")
    if "provenance" in data and not isinstance(data["provenance"], dict):
        raise ConfigError("genotype field 'provenance': expected an object")
    known = {"format", "scale", "channels", "steps", "esa", "upsampler", "cells", "fusion", "fusion_width",
             "provenance", *BACKBONE_DEFAULTS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"genotype field '{unknown[0]}': unknown key (known: {', '.join(sorted(known))})")


def _needs_v2(version: int, name: str) -> None:
    if version < FORMAT_VERSION:
        raise ConfigError(f"genotype field '{name}': widths need format version {FORMAT_VERSION}, "
                          f"the file says version {version}")


def _check_width(value: Any, name: str, full: int, what: str) -> None:
    """A width is an integer from 1 to its unpruned width ``full`` (``what``: how that is named)."""
    top = min(full, MAX_CHANNELS)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise ConfigError(f"genotype field '{name}': expected an integer from 1 to {top} "
                          f"(the unpruned width, {what}), got {value!r}")


def _validate_widths(widths: Any, where: str, channels: int, ops: list[str], esa: bool) -> None:
    """One cell's ``widths`` object (module docstring, "Widths"); every error names its field."""
    if not isinstance(widths, dict):
        raise ConfigError(f"genotype field '{where}': expected an object with 'distill', 'last', 'esa' and 'ops'")
    unknown = sorted(set(widths) - {"distill", "last", "esa", "ops"})
    if unknown:
        raise ConfigError(f"genotype field '{where}.{unknown[0]}': unknown key (known: distill, esa, last, ops)")
    half = channels // 2
    distill = _require(widths, "distill", list, where + ".")
    if len(distill) != len(ops):
        raise ConfigError(f"genotype field '{where}.distill': expected {len(ops)} widths (one per step), "
                          f"got {len(distill)}")
    for k, d in enumerate(distill):
        _check_width(d, f"{where}.distill[{k}]", half, f"C/2 = {half}")
    if "last" not in widths:
        raise ConfigError(f"genotype field '{where}.last' is missing")
    _check_width(widths["last"], f"{where}.last", half, f"C/2 = {half}")
    if esa:
        if "esa" not in widths:
            raise ConfigError(f"genotype field '{where}.esa' is missing")
        _check_width(widths["esa"], f"{where}.esa", channels // 4, f"C/4 = {channels // 4}")
    elif widths.get("esa") is not None:
        raise ConfigError(f"genotype field '{where}.esa': the genotype has no ESA (field 'esa'); expected null")
    op_widths = _require(widths, "ops", list, where + ".")
    if len(op_widths) != len(ops):
        raise ConfigError(f"genotype field '{where}.ops': expected {len(ops)} entries (one per step), "
                          f"got {len(op_widths)}")
    for k, (op, m) in enumerate(zip(ops, op_widths)):
        if OPS[op].mid_width:
            _check_width(m, f"{where}.ops[{k}]", channels, f"C = {channels}, the internal width of {op}")
        elif m is not None:
            raise ConfigError(f"genotype field '{where}.ops[{k}]': {op} has no internal width; expected null, got {m!r}")


def scale_from_filename(path: str | os.PathLike) -> int | None:
    """``derived/x4.json`` -> 4, so a file whose name and content disagree is caught."""
    m = re.search(r"(?:^|[^a-z0-9])x([234])(?:[^0-9]|$)", Path(path).stem.lower())
    return int(m.group(1)) if m else None


def load_genotype(path: str | os.PathLike, scale: int | None = None) -> Genotype:
    """Read and validate a genotype file; every error names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: genotype file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    try:
        geno = Genotype.from_dict(data, expected_scale=scale)
        named = scale_from_filename(path)
        if named is not None and named != geno.scale:
            raise ConfigError(f"genotype field 'scale': is {geno.scale} but the file name says ×{named}")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return geno


def random_genotype(space, rng: random.Random | int | None = None) -> Genotype:
    """A uniformly random derivable genotype of a search space (the NAS sanity baseline; also what the
    latency model measures whole to fit its correction). ``space``: a :class:`hdnas.core.space.SearchSpace`."""
    space.validate()
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    shared_ops = [rng.choice(space.ops) for _ in range(space.steps)]
    cells = []
    for i in range(1, space.cells + 1):
        ops = list(shared_ops) if space.shared_alpha else [rng.choice(space.ops) for _ in range(space.steps)]
        inputs = sorted(rng.sample(space.input_candidates(i), space.inputs_kept(i)))
        cells.append(CellGenotype(ops=ops, inputs=inputs))
    fusion = sorted(rng.sample(range(1, space.cells + 1), space.fusion_cells))
    return Genotype(cells=cells, fusion=fusion, **space_backbone(space))
