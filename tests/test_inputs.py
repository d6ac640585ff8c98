"""Bad or unusual input as a new user meets it: a clear ``error: …`` naming the file or field, or a
note, never a traceback or a silent change (issue 11's reliability findings)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import load_tool
import torch
from PIL import Image

from hdnas.core.cost import TRACE_FACTOR, forward_memory, HR_SIZE
from hdnas.core.data.io import read_image
from hdnas.core.errors import ConfigError, DataNote, HdnasError
from hdnas.core.run import load_checkpoint
from hdnas.core.genotype import MAX_CHANNELS, CellGenotype, Genotype, load_genotype
from hdnas.core.summary import fvcore_check, provenance_line, summarise
from hdnas.core.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


tool = load_tool


def genotype(channels: int = 8, scale: int = 4) -> Genotype:
    return Genotype(scale=scale, channels=channels, fusion=[1, 2],
                    cells=[CellGenotype(["conv_3x3", "sep_conv_3x3"], [0]), CellGenotype(["conv_1x1", "conv_3x3"], [1])])


def write_genotype(path: Path, channels: int) -> Path:
    data = genotype().to_dict()
    data["channels"] = channels
    path.write_text(json.dumps(data))
    return path


# -- widths -------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [3000, 100_000])
def test_too_wide_genotype_is_refused_before_anything_is_built(tmp_path, capsys, channels):
    path = write_genotype(tmp_path / "x4.json", channels)
    with pytest.raises(ConfigError, match=rf"'channels': expected a multiple of 4 from 4 to {MAX_CHANNELS}, got {channels}"):
        load_genotype(path)
    assert tool("summary").main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "x4.json" in err and "channels" in err


def test_widest_allowed_genotype_validates():
    genotype(MAX_CHANNELS).validate()
    with pytest.raises(ConfigError, match="channels"):
        genotype(MAX_CHANNELS + 4).validate()


def test_forward_memory_estimate_bounds_a_real_forward():
    """The estimate is an upper bound of what a forward's feature maps and weights take, and scales with width."""
    g = genotype(16, scale=2)
    small = forward_memory(g, (64, 96))
    g.channels = 32
    assert forward_memory(g, (64, 96)) > 1.8 * small
    # the tensors a forward actually creates, summed without reuse (a loose upper bound of its peak)
    from hdnas.core.network import DerivedNet

    net = DerivedNet(g).eval()
    weights = sum(p.numel() for p in net.parameters()) * 4
    biggest = []
    hooks = [m.register_forward_hook(lambda m, i, o: biggest.append(o.numel() * 4)) for m in net.modules()
             if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 48))
    for h in hooks:
        h.remove()
    assert forward_memory(g, (64, 96)) >= weights + max(biggest) * 4


def test_summary_skips_fvcore_when_the_net_would_not_fit(tmp_path, capsys):
    g = genotype(64)
    need = TRACE_FACTOR * forward_memory(g, HR_SIZE)
    out = fvcore_check(g, (180, 320), memory_limit=need - 1)
    assert "fvcore_skipped" in out and "GiB" in out["fvcore_skipped"] and "macs_fvcore" not in out
    info = summarise(genotype(8), "g.json", memory_limit=10 * 2**30)
    assert info["macs"] == info["macs_fvcore"] + info["macs_not_in_fvcore"]
    assert info["memory_estimate_bytes"] == forward_memory(genotype(8), HR_SIZE)


def test_summary_provenance_without_budget_says_so(tmp_path, capsys):
    g = genotype()
    g.provenance = {"tool": "hdnas search", "seed": 3, "budget": None, "val_psnr": 28.5, "val_psnr_bicubic": 28.0}
    line = provenance_line(g.provenance)
    assert "None" not in line and "no budget" in line and "seed 3" in line and "28.50 dB (bicubic 28.00)" in line
    path = g.save(tmp_path / "x4.json")
    assert tool("summary").main([str(path), "--no-fvcore"]) == 0
    text = capsys.readouterr().out
    assert "budget None" not in text and "no budget" in text
    g.provenance["budget"] = 10e9
    assert "budget 10.00G" in provenance_line(g.provenance)


# -- a .pt that is not a checkpoint ---------------------------------------------------------------
def test_pt_holding_a_list_is_an_error_everywhere(tmp_path, capsys):
    bad = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], bad)
    with pytest.raises(HdnasError, match="list.pt: holds a list, not a checkpoint or a state dict"):
        load_model(bad, genotype(8))
    with pytest.raises(HdnasError, match="holds a list"):
        load_checkpoint(bad)
    gpath = genotype(8).save(tmp_path / "x4.json")
    assert tool("evaluate").main(["--checkpoint", str(bad), "--data", str(tmp_path)]) == 2
    assert "holds a list" in capsys.readouterr().err
    assert tool("export").main(["--checkpoint", str(bad), "--genotype", str(gpath),
                                "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds a list" in err and "Traceback" not in err


# -- images converted on reading ----------------------------------------------------------------
@pytest.mark.parametrize("mode,note", [("L", "greyscale"), ("RGBA", "alpha channel is dropped"), ("RGB", None)])
def test_image_conversions_are_noted(tmp_path, mode, note):
    rng = np.random.default_rng(0)
    channels = {"L": 1, "RGBA": 4, "RGB": 3}[mode]
    arr = rng.integers(0, 256, (12, 10, channels), dtype=np.uint8)
    path = tmp_path / f"im_{mode}.png"
    Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = read_image(path)
    notes = [str(w.message) for w in caught if issubclass(w.category, DataNote)]
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    if note is None:
        assert notes == []
    else:
        assert len(notes) == 1 and str(path) in notes[0] and note in notes[0]


def test_builtin_grey_photos_are_read_without_a_note():
    from hdnas.core.data.sample import sample_named

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        named = sample_named("val")
    assert {n for n, _ in named} == {"chelsea", "coins"}
    assert not [w for w in caught if issubclass(w.category, DataNote)]
