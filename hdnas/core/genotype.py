"""Genotypes: the discrete architecture a search finds, as a dataclass and a versioned JSON file.

The JSON is meant to be read, diffed and hand-edited, so loading validates every field and names
the one at fault (``cells[2].inputs[0]``) instead of failing later inside a network constructor.
Node numbering used throughout: output 0 is the stem, output i (1..N) is cell i.
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
FORMAT_VERSION = 1
#: Widest channel count a genotype may ask for. Lightweight SR nets use 32-64 (EDSR, a heavy net,
#: 256); 512 keeps a mistyped width from building a net of many GB before anything can stop it.
MAX_CHANNELS = 512


@dataclass
class CellGenotype:
    """One information-distillation cell: the op of each refinement step and the outputs feeding it."""

    ops: list[str]
    inputs: list[int]  # earlier outputs (0 = stem, j = cell j); more than one -> 1×1 conv over their concat


@dataclass
class Genotype:
    scale: int
    channels: int
    cells: list[CellGenotype]
    fusion: list[int]  # cells whose outputs are concatenated into the final 1×1 fusion conv
    esa: bool = True
    upsampler: str = "pixelshuffle"
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.cells[0].ops) if self.cells else 0

    def live_cells(self) -> list[int]:
        """Cells whose output reaches the fusion (a path in :meth:`graph`); the others are dead code a
        derived net skips."""
        return list(_live_cells(self._wiring()))

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
        return {
            "format": {"name": FORMAT_NAME, "version": FORMAT_VERSION},
            "scale": self.scale,
            "channels": self.channels,
            "steps": self.steps,
            "esa": self.esa,
            "upsampler": self.upsampler,
            "cells": [{"ops": list(c.ops), "inputs": list(c.inputs)} for c in self.cells],
            "fusion": list(self.fusion),
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: Any, expected_scale: int | None = None) -> "Genotype":
        validate_dict(data, expected_scale)
        return cls(
            scale=data["scale"],
            channels=data["channels"],
            cells=[CellGenotype(ops=list(c["ops"]), inputs=list(c["inputs"])) for c in data["cells"]],
            fusion=list(data["fusion"]),
            esa=data.get("esa", True),
            upsampler=data.get("upsampler", "pixelshuffle"),
            provenance=dict(data.get("provenance", {})),
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
    if fmt.get("version") != FORMAT_VERSION:
        raise ConfigError(
            f"genotype field 'format.version': unsupported version {fmt.get('version')!r} "
            f"(this hdnas reads version {FORMAT_VERSION})"
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
        unknown = sorted(set(cell) - {"ops", "inputs"})
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
    fusion = _require(data, "fusion", list)
    if not fusion:
        raise ConfigError("genotype field 'fusion': expected at least one cell")
    for k, j in enumerate(fusion):
        if isinstance(j, bool) or not isinstance(j, int) or not 1 <= j <= len(cells):
            raise ConfigError(f"genotype field 'fusion[{k}]': expected a cell number 1..{len(cells)}, got {j!r}")
    if len(set(fusion)) != len(fusion):
        raise ConfigError("genotype field 'fusion': a cell is listed twice")
    if "provenance" in data and not isinstance(data["provenance"], dict):
        raise ConfigError("genotype field 'provenance': expected an object")
    known = {"format", "scale", "channels", "steps", "esa", "upsampler", "cells", "fusion", "provenance"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"genotype field '{unknown[0]}': unknown key (known: {', '.join(sorted(known))})")


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
        inputs = sorted(rng.sample(range(i), space.inputs_kept(i)))
        cells.append(CellGenotype(ops=ops, inputs=inputs))
    fusion = sorted(rng.sample(range(1, space.cells + 1), space.fusion_cells))
    return Genotype(
        scale=space.scale, channels=space.channels, cells=cells, fusion=fusion, esa=space.esa, upsampler=space.upsampler
    )
