"""Fixtures of the search tests that read the shared supernet and study: short names,
and one exported model directory (tests that change it work on a copy)."""

from __future__ import annotations

import pytest

from vitpareto.search.cli import main


@pytest.fixture(scope="module")
def net(small_net):
    """The untrained supernet's checkpoint path."""
    return small_net


@pytest.fixture(scope="module")
def db(small_study):
    """(path, url) of the shared three-trial study."""
    return small_study


@pytest.fixture(scope="session")
def model_dir(small_net, small_study, tmp_path_factory):
    """Trial 0 of the shared study, exported without portable files: read it, or copy it
    before changing anything in it."""
    out = tmp_path_factory.mktemp("models")
    assert main(["export", "--storage", small_study[1], "--study", "s", "--trial", "0",
                 "--out", str(out), "--supernet", str(small_net), "--no-portable"]) == 0  # fmt: skip
    return out / "trial_0"
