"""The committed genotypes: valid, fully provenanced, and their recorded costs are what cost.count says."""

from __future__ import annotations

from pathlib import Path

import pytest

from hdnas.core.cost import count
from hdnas.core.genotype import load_genotype, scale_from_filename
from hdnas.search.engine import SearchConfig
from hdnas.core.config import from_dict

DERIVED = sorted((Path(__file__).resolve().parents[1] / "derived").glob("*.json"))


def test_every_scale_has_a_genotype():
    assert {scale_from_filename(p) for p in DERIVED} >= {2, 3, 4}


@pytest.mark.parametrize("path", DERIVED, ids=[p.name for p in DERIVED])
def test_derived_genotype_is_valid_and_reproducible(path):
    g = load_genotype(path)
    prov = g.provenance
    for key in ("command", "config", "seed", "data", "multi_adds", "params", "val_psnr", "date", "budget"):
        assert key in prov, key
    rep = count(g)
    assert rep.macs == prov["multi_adds"] and rep.params == prov["params"]
    cfg = from_dict(SearchConfig, prov["config"])  # the recorded config is a loadable experiment
    assert cfg.space.scale == g.scale and cfg.seed == prov["seed"]
    if prov["budget"]:
        assert abs(prov["multi_adds"] / prov["budget"] - 1) <= cfg.search.derive_tolerance + 1e-9
    assert prov["val_psnr"] > prov["val_psnr_bicubic"]
