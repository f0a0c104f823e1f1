"""The backend contract, written once and run against every backend: this process, two
worker processes (--jobs 2), and a Ray cluster of its own on loopback. Each search is a
`vitpareto search` process of its own, as a user runs it."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers.searches import FRONT_ROUNDS, candidates, complete, kill_and_resume, search_cmd
from vitpareto.evaluators import AccuracyEvaluator, CostEvaluator, LatencyEvaluator
from vitpareto.search.explore import NEAR, near_front

pytestmark = pytest.mark.slow  # search processes, a Ray cluster

BACKENDS = ("local", "local-2-jobs", "ray")
# what every trial's record holds, whatever ran it
RECORD = {
    *CostEvaluator.keys,
    *AccuracyEvaluator.keys,
    *LatencyEvaluator.keys,
    "stage_seconds",
    "candidate",
    "fidelity",
    "worker",
}
NODES = {"trial_node", "latency_node"}  # where a Ray trial ran and was timed


@pytest.fixture(
    params=[*BACKENDS[:2], pytest.param("ray", marks=pytest.mark.xdist_group("ray"))]
)  # the Ray cluster is one per pytest worker: its tests share one
def backend(request):
    """The command-line options of each backend."""
    if request.param == "local":
        return request.param, ()
    if request.param == "local-2-jobs":
        return request.param, ("--jobs", "2")
    cluster = request.getfixturevalue("cluster")
    return request.param, ("--backend", "ray", "--address", cluster.address)


def test_killed_resumed_exact_count_same_records_no_twins_and_the_front(net, backend, tmp_path):
    """A search killed (SIGKILL) half way and run again loses nothing (``kill_and_resume``);
    the study it ends with holds the exact count, the same record for every trial, no
    candidate twice, and the front's second stage."""
    name, options = backend
    url = f"sqlite:///{tmp_path / 'r.db'}"
    cmd = search_cmd(net, url, "c", 6, *options, "--finetune-front", "2")
    kill_and_resume(cmd, 3, front=True)
    done = complete(url, "c")
    assert len(done) == 6
    study = optuna.load_study(study_name="c", storage=url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(set(candidates(done))) == 6  # no candidate counted twice
    keys = {frozenset(t.user_attrs) for t in done}
    assert len(keys) == 1, keys  # every record holds the same keys
    (got,) = keys
    assert got >= RECORD and got - RECORD <= NODES, (RECORD ^ got) - NODES
    assert study.metric_names == ["accuracy", "latency_ms"]
    # the front's second stage (timed again for the rounds asked, so the trials near the
    # front join it): each distinct candidate fine-tuned, once
    front = complete(url, "c/front")
    on_front = {t.number: t for t in near_front(study, NEAR)}
    assert all(t.user_attrs["latency_rounds"] == FRONT_ROUNDS for t in front)
    assert len(front) == len(set(candidates(on_front.values())))
    for t in front:
        src = on_front[t.user_attrs["source_trial"]]
        assert t.user_attrs["fidelity"] == "finetuned" and t.params == src.params
        assert t.user_attrs["candidate"] == src.user_attrs["candidate"]
