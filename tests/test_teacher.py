"""The teacher of retraining: every way to name one, clear errors for bad ones, and what its outputs cost."""

from __future__ import annotations

import pytest
import torch

from hdnas.core.config import ConfigError
from hdnas.core.data import PatchDataset
from hdnas.core.inference import upscale
from hdnas.core.network import DerivedNet
from hdnas.train.losses import ImportanceConfig, ImportanceLearner
from hdnas.train.teacher import TeacherConfig, TeacherError, TeacherOutputs, build_teacher
from hdnas.zoo import build_reference
from test_train import make_trainer, tiny_cfg, tiny_genotype, tiny_sets, tiny_teacher

pytestmark = pytest.mark.usefixtures("single_thread")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def trained_checkpoint(tmp_path):
    """A real retrain checkpoint (2 steps of the tiny net) and the net it holds."""
    tr = make_trainer(tmp_path / "t", tiny_cfg(**{"train.steps": 2, "train.val_every": 2}), genotype=tiny_genotype(seed=5))
    tr.run()
    return tmp_path / "t" / "last.pt", tr.model


# ------------------------------------------------------------------------------------ loading paths


def test_teacher_from_a_retrain_checkpoint_reads_its_genotype(trained_checkpoint):
    path, net = trained_checkpoint
    teacher = build_teacher(TeacherConfig(weights=str(path)), 2)
    assert isinstance(teacher, DerivedNet) and teacher.genotype.to_dict() == tiny_genotype(seed=5).to_dict()
    assert same_weights(teacher, net) and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())


def test_teacher_from_a_bare_state_dict_and_its_genotype(tmp_path):
    geno = tiny_genotype(seed=5)
    net = tiny_teacher(5)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    geno.save(tmp_path / "g.json")
    teacher = build_teacher(TeacherConfig(weights=str(tmp_path / "w.pt"), genotype=str(tmp_path / "g.json")), 2)
    assert same_weights(teacher, net)
    with pytest.raises(TeacherError, match=r"teacher\.weights: .*w\.pt: a bare state dict; pass the genotype"):
        build_teacher(TeacherConfig(weights=str(tmp_path / "w.pt")), 2)


@pytest.mark.parametrize("model", ["rfdn", "fsrcnn"])
def test_teacher_zoo_net_with_trained_weights(tmp_path, model):
    torch.manual_seed(1)
    net = build_reference(model, 2)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    teacher = build_teacher(TeacherConfig(model=model, weights=str(tmp_path / "w.pt")), 2)
    assert type(teacher) is type(net) and same_weights(teacher, net)
    with pytest.raises(ConfigError, match=f"teacher.model={model} is a net with parameters but no teacher.weights"):
        build_teacher(TeacherConfig(model=model), 2)


def test_parameter_free_zoo_teacher_and_no_teacher():
    assert build_teacher(TeacherConfig(), 2) is None
    bic = build_teacher(TeacherConfig(model="bicubic"), 2)
    assert bic is not None and not list(bic.parameters())
    with pytest.raises(ConfigError, match="teacher.model=bicubic has no parameters"):
        build_teacher(TeacherConfig(model="bicubic", weights="x.pt"), 2)
    with pytest.raises(ConfigError, match="teacher.model: unknown reference net 'nope'"):
        build_teacher(TeacherConfig(model="nope"), 2)


# ------------------------------------------------------------------------------------- bad files


def test_bad_teacher_files_are_clear_errors_that_name_them(tmp_path, trained_checkpoint):
    missing = tmp_path / "missing.pt"
    with pytest.raises(TeacherError, match=r"teacher\.weights: .*missing\.pt: checkpoint not found"):
        build_teacher(TeacherConfig(weights=str(missing)), 2)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(TeacherError, match=r"teacher\.weights: .*junk\.pt: not a readable hdnas checkpoint"):
        build_teacher(TeacherConfig(weights=str(junk)), 2)
    # weights of another net: a zoo FSRCNN given an hdnas checkpoint, and the checkpoint for another genotype
    path, _ = trained_checkpoint
    with pytest.raises(TeacherError, match=r"teacher\.weights: .*last\.pt: weights do not fit a YChannelSR: keys: .* missing"):
        build_teacher(TeacherConfig(model="fsrcnn", weights=str(path)), 2)
    with pytest.raises(TeacherError, match=r"teacher\.weights: .*last\.pt: checkpoint has 8 channels, genotype 48"):
        build_teacher(TeacherConfig(model="rfdn", weights=str(path)), 2)
    with pytest.raises(TeacherError, match=r"teacher .*last\.pt is for ×2, the student is ×4"):
        build_teacher(TeacherConfig(weights=str(path)), 4)
    with pytest.raises(ConfigError, match="teacher.genotype=g.json without teacher.weights"):
        build_teacher(TeacherConfig(genotype="g.json"), 2)
    # and through the trainer and the tool, before any step
    with pytest.raises(TeacherError, match="missing.pt"):
        make_trainer(tmp_path / "r", tiny_cfg(**{"loss.distill.enabled": "true", "teacher.weights": str(missing)}))


def test_retrain_tool_names_a_bad_teacher_file(tmp_path, capsys):
    from conftest import load_tool

    gpath = tmp_path / "g.json"
    tiny_genotype().save(gpath)
    rc = load_tool("retrain").main(["--genotype", str(gpath), "--out", str(tmp_path / "run"), "--no-progress",
                                    "loss.distill.enabled=true", f"teacher.weights={tmp_path / 'nope.pt'}",
                                    "train.steps=1", "threads=1", "device=cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "teacher.weights" in err and "nope.pt" in err


# ------------------------------------------------------------------------------------------ cost


def test_cached_outputs_are_the_teacher_on_whole_images_cropped_like_the_patch():
    train, _ = tiny_sets()
    teacher = tiny_teacher()
    outputs = TeacherOutputs(teacher, train)
    assert len(outputs) == len(train) and outputs.seconds >= 0
    for im, out in zip(train, outputs):
        whole = upscale(teacher, im.lr[None].float() / 255, scale=2)[0]
        assert out.dtype == torch.uint8 and out.shape == im.hr.shape
        assert (out.float() / 255 - whole.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
    patches = PatchDataset(train, 8)
    lr, hr = patches.sample_batch(6, torch.Generator().manual_seed(3))
    lr2, hr2, t = patches.sample_batch_with(6, torch.Generator().manual_seed(3), outputs)
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)  # the same patches as without the extra
    # the teacher part is the crop of the same window, flipped alike: it sits close to the HR patch
    # (the tiny teacher is untrained, so compare with its own output): re-derive it from the generator
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, len(train), (6,), generator=g).tolist()
    for j, i in enumerate(idx):
        _, hr_c, t_c = patches._crop(i, g, outputs)
        assert torch.equal(hr_c.float() / 255, hr[j]) and torch.equal(t_c.float() / 255, t[j])


def count_forwards(net: torch.nn.Module) -> list[int]:
    calls = [0]
    net.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("cache", [True, False])
def test_teacher_cost_per_step_is_one_forward_or_none_when_cached(tmp_path, cache):
    teacher = tiny_teacher()
    calls = count_forwards(teacher)
    cfg = tiny_cfg(**{"loss.distill.enabled": "true", "loss.importance.enabled": "true",
                      "teacher.cache": str(cache).lower()})
    tr = make_trainer(tmp_path, cfg, teacher=teacher)
    before = calls[0]
    assert before == (len(tiny_sets()[0]) if cache else 0)  # once per training image, up front
    for step in range(3):
        out = tr.train_step(step)
        assert out["distill"] > 0 and 0 < out["importance_mean"] <= 1
    assert calls[0] - before == (0 if cache else 3)


def test_by_default_the_teacher_runs_on_each_batch_its_cached_target_is_not_its_patch_forward(tmp_path):
    teacher = tiny_teacher()
    tr = make_trainer(tmp_path, tiny_cfg(**{"loss.distill.enabled": "true"}), teacher=teacher)
    assert tr.teacher_outputs is None
    lr, hr = tr._batch(0)
    with torch.no_grad():
        patch_forward = teacher(lr)
    cached = make_trainer(tmp_path / "c", tiny_cfg(**{"loss.distill.enabled": "true", "teacher.cache": "true"}),
                          teacher=teacher)
    _, _, target = cached._batch(0)  # the same patches (the batch is seeded by the step)
    assert (target.float() - patch_forward).abs().mean() > 1e-4


def test_feature_distillation_runs_the_teacher_every_step_despite_the_cache(tmp_path):
    teacher = tiny_teacher()
    calls = count_forwards(teacher)
    cfg = tiny_cfg(**{"loss.distill.enabled": "true", "loss.feature_distill.enabled": "true",
                      "teacher.cache": "true"})
    tr = make_trainer(tmp_path, cfg, teacher=teacher)
    assert tr.teacher_outputs is None and calls[0] == 0
    tr.train_step(0)
    assert calls[0] == 1


def test_cached_outputs_for_another_image_set_are_refused(tmp_path):
    train, _ = tiny_sets()
    other = TeacherOutputs(tiny_teacher(), train.subset([0, 1]))
    with pytest.raises(TeacherError, match="do not match the training images"):
        make_trainer(tmp_path, tiny_cfg(**{"loss.distill.enabled": "true", "teacher.cache": "true"}),
                     teacher=tiny_teacher(), teacher_outputs=other)


# ------------------------------------------------------------------------------ importance options


def test_rounds_as_fractions_of_the_run():
    learner = ImportanceLearner(ImportanceConfig(rounds=4, round_steps=1))
    assert [learner.round_at(s, f) for s, f in ((0, 0.0), (999, 0.24), (5, 0.25), (5, 0.5), (5, 0.99), (5, 1.0))] \
        == [0, 0, 1, 2, 3, 3]
    step_rounds = ImportanceLearner(ImportanceConfig(round_steps=10))
    assert [step_rounds.round_at(s, 0.9) for s in (0, 9, 10, 25)] == [0, 0, 1, 2]


def test_trainer_moves_importance_rounds_with_the_run_fraction(tmp_path):
    cfg = tiny_cfg(**{"loss.importance.enabled": "true", "loss.importance.rounds": 3, "train.steps": 6,
                      "teacher.model": "bicubic"})
    tr = make_trainer(tmp_path, cfg)
    rounds = []
    for s in range(6):
        tr.train_step(s)
        rounds.append(tr.importance.round)
    assert rounds == [0, 0, 1, 1, 2, 2]


def test_normalised_importance_has_mean_one_and_the_same_shape():
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 8, 8)
    teacher_sr = hr + 0.05 * torch.randn_like(hr)
    lr = torch.rand(2, 3, 4, 4)
    plain = ImportanceLearner(ImportanceConfig()).weights(lr, hr, teacher_sr)
    norm = ImportanceLearner(ImportanceConfig(normalize=True)).weights(lr, hr, teacher_sr)
    assert float(plain.mean()) < 0.9  # the paper's α, b: the loss scale falls ...
    assert float(norm.mean()) == pytest.approx(1.0, abs=1e-5)  # ... normalised, it does not
    torch.testing.assert_close(norm, plain / plain.mean())
    half = ImportanceLearner(ImportanceConfig(normalize=True)).weights(lr, hr, teacher_sr, batch_mean=lambda m: 2 * m)
    torch.testing.assert_close(half, plain / (2 * plain.mean()))  # the global batch's mean under torchrun
    with pytest.raises(ConfigError, match="rounds"):
        ImportanceConfig(rounds=-1).validate()
