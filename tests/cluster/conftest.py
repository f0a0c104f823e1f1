"""Fixtures of the cluster tests: a tiny digits supernet, a PostgreSQL server."""

from __future__ import annotations

import pytest

from tests.helpers.servers import RayCluster, start_postgres


@pytest.fixture(scope="module")
def net(trained_net):
    """A test_vit supernet trained one epoch on digits (a checkpoint file, shared)."""
    return trained_net


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
