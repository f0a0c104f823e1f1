"""Every sampler resumes after SIGKILL with nothing lost and no candidate twice (the default,
gp, is in the backend contract): a `vitpareto search` process killed, then run again."""

from __future__ import annotations

import subprocess

import optuna
import pytest

from tests.helpers.searches import candidates, complete, kill_and_resume, search_cmd
from vitpareto.search.explore import PredictorSampler

pytestmark = pytest.mark.slow  # search processes killed and resumed


@pytest.mark.parametrize(
    "sampler, trials, kill_at",
    # tpe and random killed within the design of ten they start from; the predictor at 10
    # of 12, so that its first round (at 10) falls after the resume
    [("tpe", 6, 3), ("random", 6, 3), ("predictor", 12, 10)],
)
def test_every_sampler_resumes_after_sigkill(net, sampler, trials, kill_at, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    kill_and_resume(search_cmd(net, url, "k", trials, "--sampler", sampler), kill_at)


def test_the_grid_over_a_space_too_large_to_hold_is_refused_before_any_work(net, tmp_path):
    """Optuna's grid sampler holds every combination in memory: on this supernet's default
    space (billions) it took 22 GB and was killed; it is refused, and nothing is written."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    out = subprocess.run(
        search_cmd(net, url, "g", 4, "--sampler", "grid"), capture_output=True, text=True
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "--sampler grid enumerates every parameter combination" in out.stderr
    assert "Traceback" not in out.stderr
    assert optuna.get_all_study_summaries(url) == []  # no study made


def _predictor_search(net, tmp_path, *options, trials: int = 12) -> None:
    """Past its first round (the round at 10 complete): the exact count, no candidate
    twice, and trials the predictor proposed."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    cmd = search_cmd(net, url, "p", trials, "--sampler", "predictor", *options)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    done = complete(url, "p")
    assert len(done) == trials and len(set(candidates(done))) == trials
    study = optuna.load_study(study_name="p", storage=url)
    assert any(PredictorSampler.ERROR_KEY in t.system_attrs for t in study.trials)


def test_the_predictor_sampler_with_two_worker_processes(net, tmp_path):
    _predictor_search(net, tmp_path, "--jobs", "2")  # each worker holds a sampler of its own


@pytest.mark.xdist_group("ray")  # the Ray cluster is one per pytest worker
def test_the_predictor_sampler_in_a_ray_driver(net, cluster, tmp_path):
    # Tune keeps one trial pending beside the two running (one per CPU of the cluster), so
    # trial k + 3 is asked once k are complete: the 13th is the first asked after the round
    options = ("--backend", "ray", "--address", cluster.address)
    _predictor_search(net, tmp_path, *options, trials=14)
