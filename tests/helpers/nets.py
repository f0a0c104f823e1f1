"""The supernets, models and studies the tests build, each a recipe of its own. The
session fixtures of ``tests/conftest.py`` build each once per run (``shared.once``)."""

from __future__ import annotations

from pathlib import Path

from vitpareto.search import SearchConfig, SupernetTrainer, TrainConfig, load_supernet, search


def _trainer(patch_size: int, **config) -> SupernetTrainer:
    return SupernetTrainer.create(
        "test_vit",
        "digits",
        TrainConfig(epochs=1, batch_size=128, **config),
        model_kwargs=dict(img_size=32, patch_size=patch_size),
    )


def small_supernet(path: Path, seed: int = 0) -> Path:
    """An untrained test_vit supernet on digits (the commands only need its shape)."""
    _trainer(8, seed=seed).save(path)
    return path


def trained_supernet(path: Path, random_candidates: int = 1) -> Path:
    """A test_vit supernet (patch 16) trained one epoch on digits: accuracy above chance."""
    _trainer(16, random_candidates=random_candidates).fit(path, progress=False)
    return path


def searched(net_path: Path, db: Path, name: str = "s") -> str:
    """A study of three trials in an SQLite file; its URL."""
    url = f"sqlite:///{db}"
    config = SearchConfig(max_batches=1, latency_repeats=3, threads=1)
    search(load_supernet(net_path), url, name, 3, config, progress=False)
    return url


def plain_model(path: Path) -> Path:
    """test_vit (patch 8: 2 heads, MLP 192, 6 blocks) trained normally on digits for 8
    epochs (about a minute): a checkpoint, validation accuracy above 0.9."""
    config = TrainConfig(epochs=8, batch_size=32, lr=2e-3, sandwich=False)
    trainer = SupernetTrainer.create(
        "test_vit", "digits", config, model_kwargs=dict(img_size=32, patch_size=8)
    )
    trainer.fit(path, progress=False)
    return path
