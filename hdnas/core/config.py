"""Experiment configs: dataclasses filled from one YAML file plus ``key=value`` overrides.

Every field has a default that runs on a 2-core CPU, so an empty YAML file is a valid experiment.
Unknown keys and wrongly typed values are rejected with the dotted name of the field, because a
silently ignored typo in a search config wastes hours of compute.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, TypeVar, Union

import yaml

from hdnas.core.errors import ConfigError

T = TypeVar("T")

_SUFFIXES = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_count(value: Any, field: str = "value") -> float:
    """Parse counts such as ``18G`` or ``2.5e9`` (Multi-Adds budgets) into a number."""
    if isinstance(value, bool):
        raise ConfigError(f"{field}: expected a number such as 18G, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        if text and text[-1] in _SUFFIXES:
            return float(text[:-1]) * _SUFFIXES[text[-1]]
        return float(text)
    except ValueError:
        raise ConfigError(f"{field}: expected a number such as 18G or 2.5e9, got {value!r}") from None


def format_count(value: float) -> str:
    """Human form of a count: 18.03G, 512.0K."""
    for suffix, unit in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= unit:
            return f"{value / unit:.2f}{suffix}"
    return f"{value:.0f}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, field: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the few safe cases (int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, field)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{field}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{field}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=field)
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{field}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{field}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{field}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{field}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{field}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{field}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{field}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{field}: expected a string, got {value!r}")
        return value
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{field}: expected one of {list(args)}, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{field}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by their dotted name."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}' (known keys{(' of ' + prefix) if prefix else ''}: "
            f"{', '.join(sorted(names))})"
        )
    for f in dataclasses.fields(cls):
        # a partial section keeps the defaults of the enclosing config (e.g. search's data.val_fraction)
        if f.name in data and isinstance(data[f.name], Mapping) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                data[f.name] = merge(to_dict(default), data[f.name])
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-serialisable) form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def read_yaml(path: str | os.PathLike) -> dict:
    """``yaml.safe_load`` a mapping, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at top level, got {type(data).__name__}")
    return data


_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def split_command_line(argv: Sequence[str], glue: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(options and their values, ``key=value`` overrides) of a tool's command line.

    Overrides may stand anywhere, also right after a list option such as ``--data A B key=value``,
    which argparse would read as a third folder. Options in ``glue`` take their value glued
    (``--budget -5G`` -> ``--budget=-5G``): argparse reads ``-5G`` as an option, so a negative value
    would never reach the config's own check."""
    rest: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        if item in glue and i + 1 < len(argv):
            rest.append(f"{item}={argv[i + 1]}")
            i += 2
            continue
        (overrides if _OVERRIDE.match(item) else rest).append(item)
        i += 1
    return rest, overrides


def as_overrides(options: Mapping[str, Any]) -> list[str]:
    """A tool's options as ``key=value`` overrides, so the config loader is their one way in; options
    left unset (None, empty) are skipped, lists become YAML flow lists of quoted strings."""
    out = []
    for key, value in options.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if isinstance(value, (list, tuple)):
            value = "[" + ",".join(json.dumps(str(v)) for v in value) + "]"
        out.append(f"{key}={value}")
    return out


def parse_overrides(items: Sequence[str]) -> dict:
    """``["train.lr=1e-3", "esa=false"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value (nested keys with dots, e.g. search.epochs=5)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}': empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is both a value and a section")
        node[parts[-1]] = value
    return out


def merge(base: Mapping, update: Mapping) -> dict:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


Layer = Union[str, os.PathLike, Mapping[str, Any], None]


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass in an annotation (``Foo`` or ``Optional[Foo]``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _resolve_files(cls: type, data: Mapping[str, Any], base: Path | None) -> dict:
    """Replace a dataclass field given as a YAML path by that file's mapping, recursively.

    A relative path is read relative to the file that names it (``base``), falling back to the
    working folder, so ``space: dlsr.yaml`` in ``search_spaces/dlsr_div2k.yaml`` finds its neighbour.
    """
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        sub = _dataclass_type(hints.get(f.name))
        value = out.get(f.name)
        if sub is None or value is None:
            continue
        if isinstance(value, (str, os.PathLike)):
            ref = Path(value)
            if not ref.is_absolute() and base is not None and (base / ref).exists():
                ref = base / ref
            out[f.name] = _resolve_files(sub, read_yaml(ref), ref.parent)
        elif isinstance(value, Mapping):
            out[f.name] = _resolve_files(sub, value, base)
    return out


def load_config(
    cls: type[T],
    path: Layer | Sequence[Layer] = None,
    overrides: Sequence[str] | Mapping = (),
) -> T:
    """The one config loader: defaults <- each layer in turn <- ``key=value`` overrides.

    A layer is a YAML file or a mapping (None is skipped). Wherever a dataclass field (``space``)
    holds a path instead of a mapping, the YAML file it names is read in its place, relative to the
    file that names it. Errors from the values name the last file given, then the field.
    """
    layers = list(path) if isinstance(path, (list, tuple)) else [path]
    data: dict = {}
    files = []
    for layer in layers:
        if layer is None:
            continue
        if isinstance(layer, Mapping):
            data = merge(data, _resolve_files(cls, layer, None))
        else:
            files.append(layer)
            data = merge(data, _resolve_files(cls, read_yaml(layer), Path(layer).parent))
    extra = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    data = merge(data, _resolve_files(cls, extra, None))
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        if files:
            raise ConfigError(f"{files[-1]}: {exc}") from None
        raise


@dataclass
class DataConfig:
    """Where images come from (search and retraining alike); empty ``paths``: the built-in sample set."""

    paths: list[str] = field(default_factory=list)
    val_paths: list[str] = field(default_factory=list)  # empty: the source's val split, else held-out images
    patch: int = 24  # LR patch side
    batch: int = 16  # global batch, split evenly over processes
    augment: bool = True  # flips and 90° rotations
    val_fraction: float = 0.1  # held out when the source has no separate val split
    val_max_images: int = 0  # validate on the first N images only; 0: all
    val_tile: Optional[int] = None  # LR tile side for validation forwards; None: whole images

    def validate(self) -> None:
        if self.patch < 8:
            raise ConfigError(f"data.patch: expected at least 8 (LR pixels), got {self.patch}")
        if self.batch < 1:
            raise ConfigError(f"data.batch: expected at least 1, got {self.batch}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction: expected a fraction in (0, 1), got {self.val_fraction}")
        if self.val_max_images < 0:
            raise ConfigError(f"data.val_max_images: expected 0 (all) or more, got {self.val_max_images}")


def first_difference(a: Any, b: Any, prefix: str = "", ignore: frozenset[str] | set[str] = frozenset()):
    """The first dotted key where two plain config dicts differ: ``(key, a_value, b_value)``, or None.

    Used to refuse a ``--resume`` whose config changed, naming the field; ``ignore`` lists keys that
    may change between a run and its resumption (device, thread count, ...).
    """
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = first_difference(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k, ignore)
            if d is not None:
                return d
        return None
    if prefix in ignore:
        return None
    return None if a == b else (prefix, a, b)
