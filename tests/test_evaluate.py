"""The evaluation loop, the evaluate tool, and the published bicubic figures on Set5/Set14."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_tool
import torch
from PIL import Image

from conftest import REPO_ROOT, shared_data_dir, shared_data_root
from hdnas.core.data import from_arrays, load_folder
from hdnas.core.atomic import atomic_write_json
from hdnas.core.evaluation import bicubic_model, evaluate_bicubic_y, evaluate_model, format_table

pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest: 2 threads thrash when a core is busy


def _load_tool():
    return load_tool("evaluate")


evaluate_tool = _load_tool()


def tiny_set(scale: int = 2):
    rng = np.random.default_rng(0)
    arrays = [(f"t{i}", rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)) for i in range(2)]
    return from_arrays(arrays, scale, "tiny")


def test_evaluate_model_with_a_perfect_model_gives_inf_and_one():
    ds = tiny_set()
    lookup = {tuple(im.lr.flatten()[:16].tolist()): im.hr for im in ds}

    def oracle(lr):
        key = tuple((lr * 255).round().to(torch.uint8).flatten()[:16].tolist())
        return lookup[key][None].float() / 255

    res = evaluate_model(oracle, ds, 2)
    assert res["psnr"] == float("inf") and res["ssim"] == pytest.approx(1.0)
    assert res["images"] == 2 and res["dataset"] == "tiny" and res["scale"] == 2
    assert [r["name"] for r in res["per_image"]] == ["t0", "t1"]


def test_bicubic_model_and_module_mode_restored():
    ds = tiny_set(2)
    res = evaluate_model(bicubic_model(2), ds)
    assert 5 < res["psnr"] < 40 and 0 < res["ssim"] < 1

    class Up(torch.nn.Module):
        def forward(self, x):
            assert not self.training
            return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    net = Up().train()
    evaluate_model(net, ds, 2)
    assert net.training


def test_model_output_shape_is_checked():
    with pytest.raises(ValueError, match="expected \\(1, 3, 32, 40\\)"):
        evaluate_model(lambda lr: lr, tiny_set(), 2)
    with pytest.raises(ValueError, match="built for x2"):
        evaluate_model(bicubic_model(4), tiny_set(2), 4)


def test_format_table_and_atomic_json(tmp_path):
    rows = [{"dataset": "Set5", "scale": 4, "psnr": 28.4290, "ssim": 0.81105, "images": 5}]
    table = format_table(rows)
    assert "Set5" in table and "28.4290" in table and "0.8111" in table and "x4" in table
    out = tmp_path / "sub" / "r.json"
    atomic_write_json(out, {"results": rows, "inf": float("inf")})
    assert json.loads(out.read_text()) == {"results": rows, "inf": None}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temporary file left


def write_folder(path: Path) -> Path:
    rng = np.random.default_rng(1)
    path.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (30, 26, 3), dtype=np.uint8)).save(path / f"i{i}.png")
    return path


def test_tool_prints_table_and_writes_json(tmp_path, capsys):
    data = write_folder(tmp_path / "mini")
    out = tmp_path / "res.json"
    assert evaluate_tool.main(["--model", "bicubic", "--scale", "2", "3", "--data", str(data), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mini" in printed and "x2" in printed and "x3" in printed
    got = json.loads(out.read_text())
    assert [(r["dataset"], r["scale"], r["images"]) for r in got["results"]] == [("mini", 2, 2), ("mini", 3, 2)]
    assert set(got["results"][0]) == {"dataset", "scale", "psnr", "ssim", "images"}
    ref = evaluate_model(bicubic_model(3), load_folder(data, 3))
    assert got["results"][1]["psnr"] == pytest.approx(ref["psnr"], abs=1e-12)


def test_tool_errors_exit_2_without_traceback(tmp_path, capsys):
    assert evaluate_tool.main(["--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert evaluate_tool.main(["--data", str(tmp_path / "empty")]) == 2
    assert "no images found" in capsys.readouterr().err


def test_tool_runs_as_a_script_from_the_repo_root(tmp_path):
    """``python tools/evaluate.py`` must work without installing the package."""
    data = write_folder(tmp_path / "mini")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "tools/evaluate.py", "--scale", "2", "--data", str(data), str(tmp_path / "nope")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- published figures

@functools.lru_cache(maxsize=None)
def _load_set5(scale: int):
    return load_folder(shared_data_root() / "Set5", scale)


def set5(scale: int):
    shared_data_dir("Set5")  # skip with a reason when absent
    return _load_set5(scale)


SET5 = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}
SET14 = {2: (30.24, 0.8688), 3: (27.55, 0.7742), 4: (26.00, 0.7027)}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_bicubic_reproduces_published_figures(scale):
    """RGB pipeline (MATLAB uint8 LR, MATLAB uint8 upscale, Y metrics): within 0.02 dB / 0.002."""
    res = evaluate_model(bicubic_model(scale), set5(scale), scale)
    psnr, ssim = SET5[scale]
    assert res["images"] == 5
    assert abs(res["psnr"] - psnr) < 0.02, res["psnr"]
    assert abs(res["ssim"] - ssim) < 0.002, res["ssim"]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_published_protocol_is_reproduced_exactly(scale):
    """SRCNN's Y-only protocol, the source of the printed bicubic rows, matches to the printed digit."""
    res = evaluate_bicubic_y(set5(scale))
    psnr, ssim = SET5[scale]
    assert abs(res["psnr"] - psnr) < 0.005, res["psnr"]
    assert abs(res["ssim"] - ssim) < 0.0005, res["ssim"]


def test_set14_bicubic_close_to_published_figures():
    """Set14's printed figures come from differently cropped copies: allow 0.1 dB / 0.003 (x4 only, for time)."""
    res = evaluate_model(bicubic_model(4), load_folder(shared_data_dir("Set14"), 4), 4)
    psnr, ssim = SET14[4]
    assert res["images"] == 14
    assert abs(res["psnr"] - psnr) < 0.1, res["psnr"]
    assert abs(res["ssim"] - ssim) < 0.003, res["ssim"]
