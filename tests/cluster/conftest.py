"""Fixtures of the cluster tests: a tiny digits supernet, a PostgreSQL server."""

from __future__ import annotations

import pytest

from tests.cluster.servers import RayCluster, start_postgres
from vitpareto.search import SupernetTrainer, TrainConfig


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A test_vit supernet trained one epoch on digits (a checkpoint file)."""
    path = tmp_path_factory.mktemp("net") / "net.pt"
    trainer = SupernetTrainer.create(
        "test_vit",
        "digits",
        TrainConfig(epochs=1, batch_size=128, random_candidates=1),
        model_kwargs=dict(img_size=32, patch_size=16),
    )
    trainer.fit(path, progress=False)
    return path


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own on loopback; its URL."""
    url, stop = start_postgres()
    yield url
    stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A Ray cluster of its own on loopback: a head, and a node holding ``target:probe``
    (the tests using it share one pytest-xdist worker: xdist_group "ray")."""
    c = RayCluster(tmp_path_factory.mktemp("ray"))
    try:
        c.start("head", cpus=1, head=True)
        c.start("probe", cpus=1, resources='{"target:probe": 1}')
        yield c
    finally:
        c.stop()
