"""An external teacher: a wider trained ViT that the supernet's candidates, its exits and
the fine-tuned front distil from, recorded in the checkpoint and reloaded on resume."""

from __future__ import annotations

import copy
import shutil

import pytest
import timm
import torch

from tests.helpers.cli import vitpareto
from vitpareto.errors import VitParetoError
from vitpareto.search.supernet import (
    FinetuneConfig,
    SupernetTrainer,
    TrainConfig,
    finetune,
    load_supernet,
    load_teacher,
    mixed_loss,
    read_checkpoint,
)
from vitpareto.spaces import Candidate

STUDENT = dict(img_size=32, patch_size=8)
WIDER = dict(patch_size=8, embed_dim=96, num_heads=3)  # test_vit: 64 wide, 2 heads
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("supernet")]  # training


def _trainer(config, teacher=None, kwargs=STUDENT):
    return SupernetTrainer.create(
        "test_vit", "digits", config, model_kwargs=kwargs, teacher=teacher
    )


@pytest.fixture(scope="module")
def wider(tmp_path_factory):
    """A wider test_vit trained normally on digits: the teacher (a vitpareto checkpoint)."""
    path = tmp_path_factory.mktemp("teacher") / "wider.pt"
    _trainer(
        TrainConfig(epochs=3, batch_size=32, sandwich=False), kwargs=dict(WIDER, img_size=32)
    ).fit(path, progress=False)
    return path


def test_every_candidate_distils_from_the_teacher(wider):
    """One step's gradient is that of every output (full model, exits, the smallest
    candidate) distilled from the teacher's logits, which are computed once per batch."""
    model, record = load_teacher(str(wider))
    assert record["checkpoint"] == str(wider.resolve()) and record["weights_sha256"]
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    config = TrainConfig(epochs=1, batch_size=16, random_candidates=0, grad_clip=0, distill=0.8)
    trainer = _trainer(config, (model, record))
    calls.clear()  # the check of the teacher's images and classes ran it once
    x, y = next(iter(trainer.data.train))
    ref = copy.deepcopy(trainer.elastic)
    with torch.no_grad():
        target = model(x)
    args = (config.distill, config.temperature, config.label_smoothing)
    loss = mixed_loss(ref.forward_exits(x, trainer.teacher), y, target, *args)
    loss = loss + mixed_loss(ref.forward_exits(x, trainer.smallest), y, target, *args)
    loss.backward()
    calls.clear()
    trainer.train_step(x, y)
    assert len(calls) == 1
    grads = dict(ref.named_parameters())
    for name, p in trainer.elastic.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-6, rtol=1e-4, msg=name)


def test_the_run_records_its_teacher_and_resumes_with_it(wider, tmp_path):
    wider = shutil.copy(wider, tmp_path / "teacher.pt")
    config = TrainConfig(epochs=2, batch_size=64, random_candidates=1)
    trainer = _trainer(config, load_teacher(str(wider)))
    path = tmp_path / "net.pt"
    trainer.fit(path, progress=False, epochs=1)
    record = read_checkpoint(path)["teacher"]
    assert record == trainer.teacher_record and record["checkpoint"] == str(wider.resolve())
    resumed = SupernetTrainer.resume(path)
    assert resumed.teacher_record == record and resumed.external is not None
    # the fine-tuned front distils from the same teacher by default
    net = load_supernet(path)
    small = Candidate.make(net.elastic.spec, heads=1, mlp=96)
    result = finetune(net, small, FinetuneConfig(steps=2, batch_size=32), progress=False)
    assert result.metrics["teacher"] == record
    # a teacher file that changed since is refused, not silently used
    shutil.copy(path, wider)
    with pytest.raises(VitParetoError, match="has changed since"):
        SupernetTrainer.resume(path)


def test_a_teacher_that_cannot_teach_is_refused(tmp_path):
    with pytest.raises(VitParetoError, match="random weights and teach nothing"):
        load_teacher("test_vit")
    with pytest.raises(VitParetoError, match="is not a file"):
        load_teacher("missing/teacher.pt")
    weights = tmp_path / "w.pth"
    for classes, img, message in ((10, 64, "cannot take 32x32 images"), (5, 32, "has 5 outputs")):
        fixed = dict(WIDER, img_size=img, num_classes=classes, dynamic_img_size=False)
        torch.save(
            timm.create_model("test_vit", **WIDER, img_size=img, num_classes=classes).state_dict(),
            weights,
        )
        teacher = load_teacher("test_vit", fixed, weights=weights)
        assert teacher[1]["weights"] == str(weights.resolve())
        with pytest.raises(VitParetoError, match=message):
            _trainer(TrainConfig(epochs=1), teacher)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--teacher", "test_vit"], "random weights and teach nothing"),
        (["--teacher", "nowhere/t.pt"], "is not a file"),
        (["--teacher-weights", "w.pth"], "need --teacher"),
        (["--plain", "--teacher", "t.pt"], "--plain trains on the labels alone"),
    ],
)
def test_teacher_mistakes_exit_2(tmp_path, args, message):
    base = ["train", "--model", "test_vit", "--dataset", "digits", "--img-size", "32"]
    out = vitpareto(*base, "--out", str(tmp_path / "x.pt"), *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "x.pt").exists()
