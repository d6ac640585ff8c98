"""Configs: YAML + key=value overrides, strict validation naming the field, nested defaults kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest

from hdnas.core.config import (
    ConfigError,
    first_difference,
    format_count,
    from_dict,
    load_config,
    parse_count,
    parse_overrides,
    to_dict,
)


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Outer:
    name: str = ""
    flag: bool = False
    limit: Optional[int] = None
    inner: Inner = field(default_factory=lambda: Inner(steps=99))


def test_overrides_nested_and_typed(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: demo\ninner:\n  lr: 1e-4\n")
    cfg = load_config(Outer, path, ["inner.names=[x, y]", "flag=true", "limit=5"])
    assert cfg.name == "demo" and cfg.flag is True and cfg.limit == 5
    assert cfg.inner.lr == 1e-4  # YAML 1.1 reads 1e-4 as a string; a float field accepts it
    assert cfg.inner.names == ["x", "y"]
    assert cfg.inner.steps == 99  # a partial section keeps the enclosing default, not Inner's own


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.lrr=1", "unknown config key 'inner.lrr'"),
        ("nme=x", "unknown config key 'nme'"),
        ("inner.steps=abc", "inner.steps: expected an integer"),
        ("flag=3", "flag: expected true or false"),
        ("inner.names=5", "inner.names: expected a list"),
        ("inner=3", "inner: expected a mapping"),
        ("novalue", "expected key=value"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(Outer, None, [override])


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(Outer, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_config(Outer, listy)
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_round_trip_and_differences():
    cfg = from_dict(Outer, {"inner": {"steps": 3}})
    assert from_dict(Outer, to_dict(cfg)) == cfg
    a, b = to_dict(cfg), to_dict(from_dict(Outer, {"inner": {"steps": 4}}))
    assert first_difference(a, b) == ("inner.steps", 3, 4)
    assert first_difference(a, b, ignore={"inner.steps"}) is None


def test_counts():
    assert parse_count("18G") == 18e9 and parse_count("2.5e9") == 2.5e9 and parse_count(7) == 7
    assert format_count(18.03e9) == "18.03G"
    with pytest.raises(ConfigError, match="budget"):
        parse_count("lots", "budget")
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_one_loader_layers_files_and_resolves_section_paths(tmp_path):
    """defaults <- layers (files or mappings) <- overrides; a section given as a path is read relative
    to the file that names it; the search, retrain and space loaders are this one function."""
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "inner.yaml").write_text("lr: 0.5\nnames: [p]\n")
    (sub / "run.yaml").write_text("name: from-file\ninner: inner.yaml\n")
    cfg = load_config(Outer, [{"flag": True}, sub / "run.yaml"], ["inner.steps=7"])
    assert cfg.flag and cfg.name == "from-file"
    assert cfg.inner.lr == 0.5 and cfg.inner.names == ["p"] and cfg.inner.steps == 7
    # a later layer wins; a section path in a mapping or an override is read from the working folder
    cfg = load_config(Outer, [sub / "run.yaml", {"name": "later"}], [f"inner={sub / 'inner.yaml'}"])
    assert cfg.name == "later" and cfg.inner.lr == 0.5
    with pytest.raises(ConfigError, match=r"run.yaml: unknown config key 'inner.lrr'"):
        load_config(Outer, sub / "run.yaml", ["inner.lrr=1"])
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(Outer, None, ["inner=nope.yaml"])


def test_tool_options_become_overrides_the_loader_reads():
    from hdnas.core.config import as_overrides, parse_overrides

    items = as_overrides({"data.paths": ["a b", "c,d"], "data.val_paths": [], "seed": 3, "search.budget": None,
                          "train.minutes": 0.5})
    assert items == ['data.paths=["a b","c,d"]', "seed=3", "train.minutes=0.5"]
    assert parse_overrides(items) == {"data": {"paths": ["a b", "c,d"]}, "seed": 3, "train": {"minutes": 0.5}}
