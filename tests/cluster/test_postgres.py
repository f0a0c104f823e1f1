"""A PostgreSQL results database shared by concurrent search processes (Optuna's own
distributed mode): no trial lost, none counted twice, and the other commands read it."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers.searches import search_cmd

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("postgres"),
]  # a PostgreSQL server, search processes


def test_two_processes_share_one_study(net, postgres):
    cmd = search_cmd(net, postgres, "shared", 10, "--sampler", "random")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=postgres)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 10
    # no candidate is counted twice (candidates compared, not the parameters that decode
    # to them)
    assert len({json.dumps(t.user_attrs["candidate"], sort_keys=True) for t in done}) == 10
    assert not study.get_trials(states=(TrialState.RUNNING,))

    q = subprocess.run(
        [sys.executable, "-m", "vitpareto.search.cli", "query", "--storage", postgres]
        + ["--study", "shared", "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert q.returncode == 0, q.stderr
    assert len(json.loads(q.stdout)) == 10


def test_unreachable_server_is_one_clear_error(net, postgres):
    dead = postgres.rsplit(":", 1)[0] + ":1/postgres"  # port 1: nothing listens
    out = subprocess.run(search_cmd(net, dead, "x", 2), capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "cannot be opened" in out.stderr and dead in out.stderr
