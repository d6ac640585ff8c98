"""ONNX and TorchScript export: dynamic sizes, outputs within 1e-4 of PyTorch, the export tool."""

from __future__ import annotations


import pytest
from conftest import load_tool
import torch

from conftest import REPO_ROOT
from hdnas.zoo.sampler import random_genotype
from hdnas.deploy.export import ExportError, MIN_SIDE_ESA, TraceableESA, export_model, exportable
from hdnas.core.network import DerivedNet
from hdnas.core.space import SearchSpace

pytestmark = pytest.mark.usefixtures("single_thread")
ort = pytest.importorskip("onnxruntime")


_tool = load_tool


def tiny_net(scale: int = 3, esa: bool = True, seed: int = 0) -> DerivedNet:
    space = SearchSpace(scale=scale, channels=8, cells=2, steps=2, cell_inputs=2, fusion_cells=2, esa=esa)
    torch.manual_seed(seed)
    return DerivedNet(random_genotype(space, rng=seed)).eval()


@pytest.mark.parametrize("scale,esa", [(2, True), (3, True), (4, False)])
def test_onnx_and_torchscript_match_pytorch_at_other_sizes(tmp_path, scale, esa):
    net = tiny_net(scale, esa)
    report = export_model(net, tmp_path / "m.onnx", tmp_path / "m.pt", sample_size=(24, 20))
    assert report.onnx_max_diff is not None and report.onnx_max_diff < 1e-4
    assert report.torchscript_max_diff is not None and report.torchscript_max_diff < 1e-4
    assert report.min_side == (MIN_SIDE_ESA if esa else 1)
    # dynamic height, width and batch: a size never traced
    x = torch.rand(3, 3, 41, 17)
    with torch.no_grad():
        ref = net(x)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"lr": x.numpy()})[0])
    assert got.shape == (3, 3, 41 * scale, 17 * scale)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    ts = torch.jit.load(str(tmp_path / "m.pt"))
    torch.testing.assert_close(ts(x), ref, rtol=0, atol=1e-4)


def test_traceable_esa_is_the_same_function():
    net = tiny_net(2, True)
    ex = exportable(net)
    assert any(isinstance(m, TraceableESA) for m in ex.modules())
    x = torch.rand(2, 3, 19, 26)
    with torch.no_grad():
        torch.testing.assert_close(ex(x), net(x), rtol=0, atol=0)
    assert not any(isinstance(m, TraceableESA) for m in net.modules())  # the original is untouched


def test_a_broken_export_is_reported(tmp_path, monkeypatch):
    import hdnas.deploy.export as ex

    monkeypatch.setattr(ex, "check_onnx", lambda path, model, size: 0.5)
    with pytest.raises(ExportError, match="ONNX output differs from PyTorch by 0.5"):
        export_model(tiny_net(), tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="at least 15"):
        export_model(tiny_net(), tmp_path / "m.onnx", sample_size=(12, 32))


def test_export_tool_from_a_checkpoint(tmp_path, capsys):
    from hdnas.core.run import save_checkpoint
    from hdnas.core.weights import CHECKPOINT_FORMAT

    net = tiny_net(2, True)
    state = {"format": CHECKPOINT_FORMAT, "genotype": net.genotype.to_dict(), "scale": 2,
             "model": net.state_dict(), "ema": None}
    save_checkpoint(state, tmp_path / "best.pt")
    tool = _tool("export")
    rc = tool.main(["--checkpoint", str(tmp_path / "best.pt"), "--onnx", str(tmp_path / "o" / "x2.onnx"),
                    "--torchscript", str(tmp_path / "o" / "x2.pt")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "max |ONNX − PyTorch|" in out
    assert (tmp_path / "o" / "x2.onnx").is_file() and (tmp_path / "o" / "x2.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x2.onnx", "x2.pt"]  # no temporary files left
    assert tool.main(["--checkpoint", str(tmp_path / "missing.pt"), "--onnx", str(tmp_path / "y.onnx")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
