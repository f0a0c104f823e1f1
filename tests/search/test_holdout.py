"""Honest splits: on a dataset with an official test split, a supernet validates (and its
search and front choose) on a part carved out of the training split, and each fine-tuned
front model is reported on the untouched test split: in the front study, the query, the
report, metrics.json and the model card."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

import vitpareto
from tests.helpers.fashion import fake_fashion
from vitpareto.evaluators import AccuracyEvaluator
from vitpareto.search import (
    SearchConfig,
    SupernetTrainer,
    TrainConfig,
    load_supernet,
    load_trials,
    rescore_front,
    search,
)
from vitpareto.search.outputs import export_trials, write_report

pytestmark = pytest.mark.slow  # training, a search

CONFIG = SearchConfig(latency_repeats=3)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """Fashion-MNIST-shaped IDX files (300 train, 90 test images; the class sets the
    brightness) and a supernet trained one epoch on them."""
    d = tmp_path_factory.mktemp("holdout")
    rng = np.random.default_rng(0)

    def images(labels):
        base = np.asarray(labels)[:, None, None] * 25
        return np.clip(base + rng.integers(0, 30, (len(labels), 28, 28)), 0, 255)

    train_y, test_y = [i % 10 for i in range(300)], [i % 10 for i in range(90)]
    fake_fashion(d / "fm", images(train_y), train_y, images(test_y), test_y)
    trainer = SupernetTrainer.create(
        "test_vit",
        f"fashion-mnist:{d / 'fm'}",
        TrainConfig(epochs=1, batch_size=32, random_candidates=1),
        model_kwargs=dict(img_size=28, patch_size=14),
    )
    trainer.fit(d / "net.pt", progress=False)
    return d, load_supernet(d / "net.pt")


def test_the_front_is_reported_on_the_untouched_test_split(fashion, tmp_path):
    d, net = fashion
    assert net.data["holdout"] is True
    data = net.load_data(batch_size=64)
    assert (len(data.train.dataset), len(data.val.dataset), len(data.test.dataset)) == (240, 60, 90)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = search(net, url, "s", 3, CONFIG, progress=False)
    assert all("test_accuracy" not in t.user_attrs for t in study.trials)  # chosen on val
    front = rescore_front(net, url, "s", CONFIG, steps=3, progress=False)
    rows = load_trials(url, "s/front")
    assert rows["test_accuracy"].notna().all()
    # each front model, loaded from its export, scores its recorded test accuracy
    dirs = export_trials(
        front, front.best_trials, tmp_path / "m", net, progress=False, measure=False
    )
    test = AccuracyEvaluator(data.test, progress=False)
    for path, t in zip(dirs, front.best_trials, strict=True):
        model = vitpareto.load(path)
        assert test.score(model, net.elastic.spec)["accuracy"] == t.user_attrs["test_accuracy"]
        metrics = json.loads((path / "metrics.json").read_text())
        assert metrics["test_accuracy"] == t.user_attrs["test_accuracy"]
        assert "held-out test set" in (path / "README.md").read_text()
    page = write_report(optuna.load_study(study_name="s", storage=url), tmp_path / "rep", front)
    assert "test_accuracy" in page["html"].read_text()
