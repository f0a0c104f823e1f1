"""Fixtures of the bad-input tests: a small supernet, and a database it was searched into
(a module's own ``net`` fixture takes precedence)."""

from __future__ import annotations

import pytest

from tests.search.hostile import searched, small_supernet


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return small_supernet(tmp_path_factory.mktemp("net") / "net.pt")


@pytest.fixture(scope="module")
def db(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "r.db"
    return path, searched(net, path)
