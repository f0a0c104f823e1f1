"""Settings of every test process, and the fixtures many modules use."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from tests.helpers.nets import plain_model, searched, small_supernet, trained_supernet
from tests.helpers.shared import once
from tests.helpers.variants import VARIANTS, make_variant

# pytest-xdist runs one worker per core: one thread each keeps them from oversubscribing
# the cores, which would make timings (ratios included) swing wildly
torch.set_num_threads(1)
# and so do the processes the tests start (the command line, a Ray node's workers), which
# inherit it: torch's default, a thread per core, spins on cores the other worker holds
# and made a 6-trial search take 4 minutes instead of 1.5
os.environ["OMP_NUM_THREADS"] = "1"
# property-based tests draw the same examples on every run (a suite that passes once
# passes again; a wider random search: VITPARETO_HYPOTHESIS=fuzz), keep no example
# database in the tree, and have no per-example deadline (the machines are shared)
settings.register_profile("default", derandomize=True, database=None, deadline=None)
settings.register_profile("fuzz", database=None, deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("VITPARETO_HYPOTHESIS", "default"))


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    return request.param, make_variant(request.param)


@pytest.fixture(scope="session")
def small_net(tmp_path_factory):
    """An untrained test_vit supernet on digits, patch 8 (for tests that need its shape
    only), built once per run and shared read-only."""
    return once(tmp_path_factory, "small_net.pt", small_supernet)


@pytest.fixture(scope="session")
def trained_net(tmp_path_factory):
    """A test_vit supernet, patch 16, trained one epoch on digits (accuracy above chance),
    built once per run and shared read-only."""
    return once(tmp_path_factory, "trained_net.pt", trained_supernet)


@pytest.fixture(scope="session")
def plain_net(tmp_path_factory):
    """test_vit, patch 8, trained normally (no supernet) 8 epochs on digits: a checkpoint,
    built once per run and shared read-only."""
    return once(tmp_path_factory, "plain_net.pt", plain_model)


@pytest.fixture(scope="session")
def small_study(small_net, tmp_path_factory):
    """(path, url) of an SQLite file holding study 's', three trials of ``small_net``:
    one per worker (tests check that commands leave its bytes as they were)."""
    path = tmp_path_factory.mktemp("study") / "r.db"
    return path, searched(small_net, path)
