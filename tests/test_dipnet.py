"""DIPNet-style retraining: multi-anchor feature distillation and progressive learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hdnas.core.config import ConfigError
from hdnas.core.network import DerivedNet
from hdnas.core.run import load_checkpoint
from hdnas.core.weights import load_model
from hdnas.train.distill import anchor_pairs
from hdnas.train.losses import LossInputs, feature_distill_term, l1_term
from hdnas.train.trainer import TrainError, stage_index
from hdnas.zoo import build_reference, rfdn_genotype
from test_train import make_trainer, tiny_cfg, tiny_genotype, tiny_teacher, weights

pytestmark = pytest.mark.usefixtures("single_thread")

FEAT = {"loss.feature_distill.enabled": "true", "loss.feature_distill.weight": 0.5, "loss.distill.enabled": "true"}
STAGES = "[{until: 0.4, patch: 4}, {until: 0.8, patch: 6}, {until: 1.0, patch: 8, loss: l2}]"
PROG = {"train.steps": 10, "train.val_every": 5, "train.progressive": STAGES}


def feature_loss(tr, lr: torch.Tensor) -> torch.Tensor:
    """The feature term of one forward of the trainer's student and teacher on ``lr``."""
    with torch.no_grad(), tr.features.teacher() as t_feats:
        tr.teacher(lr)
    with tr.features.student() as s_feats:
        sr = tr.model(lr)
    return feature_distill_term(LossInputs(lr, lr, sr, student_features=s_feats, teacher_features=t_feats,
                                           aligners=tr.features.aligners))


# ---------------------------------------------------------------------------- feature distillation


def test_anchor_pairs_are_in_order_and_evenly_spaced():
    assert anchor_pairs(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert anchor_pairs(4, 6) == [(0, 0), (1, 2), (2, 3), (3, 5)]
    assert anchor_pairs(6, 2) == [(2, 0), (5, 1)]
    assert anchor_pairs(1, 5) == [(0, 4)]


def test_feature_loss_vanishes_when_the_student_is_the_teacher_and_trains_aligners_and_student(tmp_path):
    cfg = tiny_cfg(**FEAT)
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    other = make_trainer(tmp_path / "a", cfg, teacher=tiny_teacher())
    assert feature_loss(other, lr).item() > 1e-3  # another net: a real distance
    same = make_trainer(tmp_path / "b", cfg, teacher=DerivedNet(tiny_genotype()))
    same.teacher.load_state_dict(same.model.state_dict())  # the student is the teacher
    for conv in same.features.aligners.convs:
        assert torch.equal(conv.weight[:, :, 0, 0], torch.eye(8)) and not conv.bias.any()
    assert feature_loss(same, lr).item() < 1e-6  # the aligners start as identities

    loss = feature_loss(other, lr)
    loss.backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in other.features.aligners.convs)
    assert other.model.stem.weight.grad.abs().sum() > 0  # through the anchors into the student
    assert other.model.upsampler is not None and all(p.grad is None for p in other.model.upsampler.parameters())
    assert all(p.grad is None for p in other.teacher.parameters())


def test_feature_distillation_in_a_step_from_a_wider_deeper_zoo_teacher(tmp_path):
    torch.manual_seed(3)
    teacher = DerivedNet(rfdn_genotype(2, channels=12, cells=3, steps=1))
    tr = make_trainer(tmp_path, tiny_cfg(**FEAT), teacher=teacher)
    n = len(tr.model.live)
    assert tr.features.pairs == anchor_pairs(n, 3)
    assert [tuple(c.weight.shape[:2]) for c in tr.features.aligners.convs] == [(12, 8)] * n
    before = [c.weight.detach().clone() for c in tr.features.aligners.convs]
    out = tr.train_step(0)
    assert out["feature_distill"] > 0 and out["distill"] > 0
    assert any(not torch.equal(b, c.weight) for b, c in zip(before, tr.features.aligners.convs))
    # by name (with trained weights): the zoo's RFDN is a DerivedNet, so its cells are anchors too
    torch.save(build_reference("rfdn", 2).state_dict(), tmp_path / "rfdn.pt")
    zoo = make_trainer(tmp_path / "z", tiny_cfg(**FEAT, **{"teacher.model": "rfdn",
                                                           "teacher.weights": str(tmp_path / "rfdn.pt")}))
    assert len(zoo.features.pairs) == n and zoo.features.aligners.convs[0].weight.shape[0] == 48


@pytest.mark.parametrize("model", ["bicubic", "fsrcnn"])
def test_a_teacher_without_cells_is_a_clear_error(tmp_path, model):
    weights = {}
    if model != "bicubic":  # a zoo net with parameters needs its trained weights
        torch.save(build_reference(model, 2).state_dict(), tmp_path / "w.pt")
        weights = {"teacher.weights": str(tmp_path / "w.pt")}
    with pytest.raises(ConfigError, match=r"teacher\.model.*feature_distill.*no cells"):
        make_trainer(tmp_path, tiny_cfg(**{"loss.feature_distill.enabled": "true", "teacher.model": model, **weights}))
    with pytest.raises(TrainError, match="loss.feature_distill is enabled but no teacher"):
        make_trainer(tmp_path / "n", tiny_cfg(**{"loss.feature_distill.enabled": "true"}))


# ----------------------------------------------------------------------------- progressive learning


def test_progressive_patches_and_the_last_stage_loss(tmp_path):
    tr = make_trainer(tmp_path, tiny_cfg(**PROG))
    want = [4] * 4 + [6] * 4 + [8] * 2  # until 0.4 / 0.8 / 1.0 of 10 steps
    assert [tr.stage(s).patch for s in range(10)] == want
    for s in (0, 3, 4, 8):
        lr, hr = tr._batch(s)
        assert lr.shape[-1] == want[s] and hr.shape[-1] == 2 * want[s]
    assert "l1" in tr.train_step(7) and "l2" not in tr.train_step(7)
    out = tr.train_step(8)
    assert "l2" in out and "l1" not in out and tr.patch == 8
    # the time fraction moves the stages as it moves the learning rate
    assert stage_index(0, tr.cfg.train, time_fraction=0.5) == 1 and stage_index(0, tr.cfg.train, 2.0) == 2
    # the L2 pixel term is the (importance-weighted) MSE
    sr, hr = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    w = torch.rand(2, 1, 4, 4)
    assert torch.allclose(l1_term(LossInputs(hr, hr, sr, pixel="l2")), F.mse_loss(sr, hr))
    assert torch.allclose(l1_term(LossInputs(hr, hr, sr, importance=w, pixel="l2")), (w * (sr - hr) ** 2).mean())


@pytest.mark.parametrize("stages, field", [
    ("[{until: 0.6, patch: 8}, {until: 0.5, patch: 12}]", r"train\.progressive\[1\]\.until"),
    ("[{until: 0.5, patch: 8}, {until: 1.0, patch: 3}]", r"train\.progressive\[1\]\.patch"),
    ("[{until: 1.0, patch: 8, loss: huber}]", r"train\.progressive\[0\]\.loss"),
    ("[{until: 0.5, patch: 8}]", r"train\.progressive\[0\]\.until"),
    ("[{until: 1.0, patch: 8, size: 3}]", r"train\.progressive\[0\]\.size"),
])
def test_bad_stages_name_their_field(stages, field):
    with pytest.raises(ConfigError, match=field):
        tiny_cfg(**{"train.progressive": stages})
    with pytest.raises(ConfigError, match=r"train\.progressive\[0\]\.loss.*loss\.l1 is disabled"):
        tiny_cfg(**{"train.progressive": "[{until: 1.0, loss: l2}]", "loss.l1.enabled": "false",
                  "loss.dual.enabled": "true"})


# ------------------------------------------------------------------------------------------ both


def test_resume_across_a_stage_boundary_is_bitwise_exact(tmp_path):
    cfg = tiny_cfg(**FEAT, **PROG)
    straight = make_trainer(tmp_path / "a", cfg, teacher=tiny_teacher())
    assert straight.run().step == 10
    first = make_trainer(tmp_path / "b", cfg, teacher=tiny_teacher())
    first.run(max_steps=3)  # stage 0 (patch 4); the rest crosses into stages 1 and 2
    torch.manual_seed(99)
    second = make_trainer(tmp_path / "b", cfg, teacher=tiny_teacher())
    assert second.resume() and second.step == 3
    second.run()
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert a["aligners"].keys() == b["aligners"].keys()
    for k in a["aligners"]:
        assert torch.equal(a["aligners"][k], b["aligners"][k]), k
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def test_both_features_write_a_plain_best_checkpoint(tmp_path):
    teacher_run = make_trainer(tmp_path / "t", tiny_cfg(**{"train.steps": 2, "train.val_every": 2}),
                               genotype=tiny_genotype(seed=5))
    teacher_run.run()
    cfg = tiny_cfg(**FEAT, **PROG, **{"teacher.weights": str(tmp_path / "t" / "best.pt"), "reparam.enabled": "true"})
    tr = make_trainer(tmp_path / "s", cfg)
    assert tr.run().step == 10
    net, geno = load_model(tmp_path / "s" / "best.pt")
    assert type(net) is DerivedNet
    assert net.state_dict().keys() == DerivedNet(tiny_genotype()).state_dict().keys()
    state = load_checkpoint(tmp_path / "s" / "best.pt")
    assert state["aligners"] and not any("aligners" in k or "convs" in k for k in state["model"])
    with torch.no_grad():
        assert torch.isfinite(net(torch.rand(1, 3, 8, 8))).all()
