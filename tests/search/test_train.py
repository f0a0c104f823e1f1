"""Supernet training on real data (digits): every candidate good on shared weights, exact
resume, trustworthy checkpoints, and fine-tuning that repairs a cut candidate."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
import torch.nn.functional as F

from vitpareto.evaluators import AccuracyEvaluator
from vitpareto.search.outputs import load_model, save_finetuned
from vitpareto.search.supernet import (
    FinetuneConfig,
    SupernetTrainer,
    TrainConfig,
    finetune,
    load_supernet,
    read_checkpoint,
    save_checkpoint,
    weights_sha256,
)
from vitpareto.spaces import Candidate, VitParetoError

# test_vit at 32 px with patch 8: 16 tokens, 6 blocks, 2 heads, embed 64
MODEL = dict(img_size=32, patch_size=8)
EPOCHS = 6  # full 0.944, smallest 0.892, its cut from the plain model 0.103 (run of its own)
# the two long trainings share one xdist worker, so the rest of the suite runs beside them
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("supernet")]  # training


def _trainer(config: TrainConfig) -> SupernetTrainer:
    return SupernetTrainer.create("test_vit", "digits", config, model_kwargs=MODEL)


@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    path = tmp_path_factory.mktemp("supernet") / "supernet.pt"
    trainer = _trainer(TrainConfig(epochs=EPOCHS, batch_size=16, random_candidates=1))
    trainer.fit(path, progress=False)
    return path, trainer


@pytest.fixture(scope="module")
def plain(tmp_path_factory, supernet):
    """The same model trained normally with the same compute (passes of the full model)."""
    path = tmp_path_factory.mktemp("plain") / "plain.pt"
    budget = EPOCHS * supernet[1].config.passes()
    trainer = _trainer(TrainConfig(epochs=budget, batch_size=16, sandwich=False))
    trainer.fit(path, progress=False)
    return path, trainer


def test_every_candidate_is_good_on_shared_weights(supernet, plain):
    path, trainer = supernet
    net = load_supernet(path)
    val = AccuracyEvaluator(trainer.data.val, progress=False)
    full = val(net.elastic, Candidate.full(net.elastic.spec))["accuracy"]
    smallest = net.space.smallest().replace(exits=())
    small = val(net.elastic, smallest)["accuracy"]
    assert full >= 0.90
    assert (full, small) == (
        trainer.history[-1]["full_accuracy"],
        trainer.history[-1]["smallest_accuracy"],
    )
    # the same smallest candidate cut from the normally trained model
    normal = load_supernet(plain[0])
    cut = val(normal.elastic, smallest)["accuracy"]
    assert plain[1].history[-1]["full_accuracy"] >= 0.90  # a fair baseline: it learned too
    assert small >= 0.5, "the smallest candidate should be far above chance (0.1)"
    assert small >= cut + 0.2, (small, cut)
    # random candidates of the space are good too, and their early exits learned
    rng = random.Random(1)
    for _ in range(3):
        c = net.space.sample(rng)
        r = val(net.elastic, c)
        assert r["accuracy"] >= 0.6, (c, r)
        assert all(a >= 0.3 for a in r["exit_accuracy"][:-1]), r["exit_accuracy"]


def test_plain_training_trains_the_full_model_alone():
    """``sandwich=False`` (``train --plain``) is normal training: the gradient is that of the
    timm model's own cross-entropy on the labels, and no exit head learns or sends
    gradients into the backbone."""
    trainer = _trainer(TrainConfig(epochs=1, batch_size=16, sandwich=False, grad_clip=0))
    x, y = next(iter(trainer.data.train))
    ref = copy.deepcopy(trainer.elastic.vit)
    F.cross_entropy(ref(x), y, label_smoothing=trainer.config.label_smoothing).backward()
    trainer.train_step(x, y)
    for (name, p), q in zip(trainer.elastic.vit.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)
    assert trainer.elastic.exit_heads, "the model has exit heads"
    assert all(p.grad is None for p in trainer.elastic.exit_heads.parameters())


def test_checkpoint_holds_the_recipe(supernet):
    path, trainer = supernet
    ckpt = read_checkpoint(path)
    assert ckpt["model"] == {"name": "test_vit", "kwargs": {**MODEL, "num_classes": 10}}
    classes = [str(i) for i in range(10)]
    assert ckpt["data"] == {"spec": "digits", "classes": classes, "holdout": True}
    assert ckpt["space"] == trainer.space.to_dict()
    assert ckpt["orders"] == trainer.elastic.orders
    assert ckpt["config"]["epochs"] == EPOCHS and ckpt["epoch"] == EPOCHS
    assert [h["epoch"] for h in ckpt["metrics"]["history"]] == list(range(1, EPOCHS + 1))
    assert ckpt["sha256"] == weights_sha256(ckpt["state_dict"]) == trainer.sha256
    assert load_supernet(path).sha256 == trainer.sha256


def test_finetune_repairs_a_cut_candidate(plain, tmp_path):
    """Cut from a normally trained model, a candidate loses much of its accuracy; a few
    hundred steps of distillation from the full model bring it back."""
    path, trainer = plain
    net = load_supernet(path)
    s = net.elastic.spec
    candidate = Candidate.make(s, heads=1, mlp=s.mlp_hidden[0] // 2, qk_dim=16)
    config = FinetuneConfig(steps=150, batch_size=32)
    result = finetune(net, candidate, config, progress=False, data=trainer.data)
    m = result.metrics
    assert m["shared_accuracy"] <= trainer.history[-1]["full_accuracy"] - 0.15  # it lost
    assert m["accuracy"] >= m["shared_accuracy"] + 0.1, m
    # saved as a standalone model that loads without the supernet and scores the same
    out = save_finetuned(tmp_path / "model", result, net)
    loaded = load_model(out)
    assert loaded.candidate == candidate
    again = AccuracyEvaluator(trainer.data.val, progress=False).score(loaded, s)["accuracy"]
    assert again == m["accuracy"] == json.loads((out / "metrics.json").read_text())["accuracy"]
    with pytest.raises(VitParetoError, match="already exists"):
        save_finetuned(out, result, net)


def test_resume_continues_exactly(tmp_path):
    """Interrupted after epoch 1 and resumed from the checkpoint, a run ends with the same
    step count, weights and optimizer state as one that never stopped."""
    config = TrainConfig(epochs=2, batch_size=128, random_candidates=1, seed=3)
    straight = _trainer(config)
    straight.fit(tmp_path / "a.pt", progress=False)

    first = _trainer(config)
    first.fit(tmp_path / "b.pt", progress=False, epochs=1)
    assert read_checkpoint(tmp_path / "b.pt")["step"] == first.steps_per_epoch
    resumed = SupernetTrainer.resume(tmp_path / "b.pt")
    assert (resumed.epoch, resumed.step) == (1, first.steps_per_epoch)
    resumed.fit(tmp_path / "b.pt", progress=False)

    a, b = read_checkpoint(tmp_path / "a.pt"), read_checkpoint(tmp_path / "b.pt")
    assert a["step"] == b["step"] == 2 * first.steps_per_epoch
    assert a["sha256"] == b["sha256"]  # bit-identical weights
    for k, v in a["optimizer"]["state"].items():
        for name, t in v.items():
            assert torch.equal(t, b["optimizer"]["state"][k][name]), (k, name)
    assert a["scheduler"] == b["scheduler"]
    assert (
        a["metrics"]["history"][-1]["full_accuracy"]
        == (b["metrics"]["history"][-1]["full_accuracy"])
    )


def test_bad_checkpoints_are_named(tmp_path):
    trainer = _trainer(TrainConfig(epochs=1, batch_size=64))
    good = tmp_path / "good.pt"
    trainer.save(good)
    data = good.read_bytes()

    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VitParetoError, match="corrupted or not a torch file"):
        load_supernet(cut)

    foreign = tmp_path / "foreign.pt"
    torch.save(trainer.elastic.vit.state_dict(), foreign)
    with pytest.raises(VitParetoError, match="not a vitpareto supernet checkpoint"):
        load_supernet(foreign)

    tampered = tmp_path / "tampered.pt"
    payload = torch.load(good, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 1
    torch.save(payload, tampered)
    with pytest.raises(VitParetoError, match="do not match their SHA-256"):
        load_supernet(tampered)

    with pytest.raises(VitParetoError, match="does not exist"):
        load_supernet(tmp_path / "missing.pt")
    with pytest.raises(VitParetoError, match="does not exist"):
        SupernetTrainer.resume(tmp_path / "missing.pt")
    assert save_checkpoint(good, trainer.payload()) == weights_sha256(trainer.elastic.state_dict())


@pytest.mark.parametrize(
    "field, value", [("epochs", 0), ("distill", 1.5), ("lr", -1.0), ("label_smoothing", 1.0)]
)
def test_bad_training_options(field, value):
    with pytest.raises(VitParetoError, match=field):
        TrainConfig(**{field: value})
