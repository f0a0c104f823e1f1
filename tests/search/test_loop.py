"""The trial loop and the study, on a real SQLite database: candidates compared as
candidates, a used-up space, one creator of a new study, one validation per front model,
the objectives named."""

from __future__ import annotations

import threading

import optuna
import pytest
from optuna.trial import TrialState

from vitpareto.errors import VitParetoError
from vitpareto.evaluators import AccuracyEvaluator
from vitpareto.search import (
    SearchConfig,
    SupernetTrainer,
    TrainConfig,
    load_supernet,
    rescore_front,
    search,
)
from vitpareto.search.explore import TrialLoop, initial_design, open_study, sampler_seed
from vitpareto.spaces import JointSpace

# 8 parameter sets, 4 candidates: heads 0 leaves no attention to keep tokens by (keep 1.0),
# and with every keep at 1.0 nothing is fused (fuse False)
SPACE = {
    "heads": {"choices": [0, 1], "groups": "all"},
    "keep": {"blocks": [0], "choices": [0.5, 1.0]},
    "fuse": [False, True],
}
CONFIG = dict(latency="predicted", max_batches=1, threads=1, sampler="random")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "net.pt"
    trainer = SupernetTrainer.create(
        "test_vit",
        "digits",
        TrainConfig(epochs=1, batch_size=128, random_candidates=0),
        space=JointSpace.from_dict(SPACE),
        model_kwargs=dict(img_size=32, patch_size=8),
    )
    trainer.save(path)  # untrained: the loop does not care how good the weights are
    return load_supernet(path)


def fake_score(candidate) -> dict:
    return {"accuracy": 0.5 + 0.1 * sum(candidate.heads), "latency_ms": 1.0 + candidate.keep[0]}


def test_twins_are_candidates_not_parameters(net, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    config = SearchConfig(**CONFIG)
    study, storage = open_study(url, "t", net, config)
    same = [
        {"heads": 0, "keep.b0": 0.5, "fuse": False},
        {"heads": 0, "keep.b0": 1.0, "fuse": True},  # other parameters, the same candidate
        {"heads": 1, "keep.b0": 0.5, "fuse": True},
    ]
    for params in same:
        study.enqueue_trial(params)
    TrialLoop(study, storage, net.space, 2, config).run(fake_score)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.params for t in done] == [same[0], same[2]]
    (twin,) = study.get_trials(states=(TrialState.PRUNED,))
    assert twin.params == same[1] and "trial 0 has this candidate" in twin.user_attrs["stood_down"]


def test_a_used_up_space_stops_with_a_clear_error(net, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    config = SearchConfig(**CONFIG)
    study, storage = open_study(url, "u", net, config)
    with pytest.raises(VitParetoError, match="fewer new candidates than the 6 trials"):
        TrialLoop(study, storage, net.space, 6, config).run(fake_score)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4  # every candidate, once


def test_one_process_creates_a_new_study_and_the_others_check_against_it(net, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    results: dict[int, object] = {}

    def join(batch: int) -> None:
        try:
            results[batch] = open_study(
                url, "race", net, SearchConfig(latency_batch=batch, **CONFIG)
            )
        except VitParetoError as e:
            results[batch] = e

    threads = [threading.Thread(target=join, args=(b,)) for b in (1, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results.values() if isinstance(r, VitParetoError)]
    assert len(errors) == 1 and "latency_batch" in str(errors[0])
    study = optuna.load_study(study_name="race", storage=url)
    winner = next(b for b, r in results.items() if not isinstance(r, VitParetoError))
    assert study.user_attrs["config"]["latency_batch"] == winner


def test_the_front_is_validated_once_per_model_and_objectives_are_named(net, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    config = SearchConfig(**CONFIG)
    study = search(net, url, "f", 3, config, progress=False)
    assert study.metric_names == ["accuracy", "latency_ms"]
    assert {"values_accuracy", "values_latency_ms"} <= set(study.trials_dataframe().columns)
    calls = []
    real = AccuracyEvaluator.score
    monkeypatch.setattr(
        AccuracyEvaluator, "score", lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    )
    front = rescore_front(net, url, "f", config, steps=1, progress=False)
    assert len(calls) == len(front.trials) >= 1
    assert front.metric_names == ["accuracy", "latency_ms"]


def test_every_process_joining_a_study_draws_its_own_candidates():
    config = SearchConfig(seed=3)
    creator = sampler_seed(config, created=True, worker=0, trials=0)
    assert creator == 3  # a study's creator is reproducible
    joiners = {sampler_seed(config, created=False, worker=w, trials=0) for w in range(4)}
    assert creator not in joiners and len(joiners) == 4


def test_a_foreign_trial_without_heartbeat_never_lets_two_trials_take_one_place(net, tmp_path):
    """A trial left running with no heartbeat (its process killed before its first beat,
    or made by hand) stops blocking after a grace; then exactly the missing places are
    started, however often a backend polls (Ray asks for a trial whenever a slot is free)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    config = SearchConfig(**CONFIG)
    study, storage = open_study(url, "f", net, config)
    TrialLoop(study, storage, net.space, 2, config).run(fake_score)
    study.ask()  # running forever, no heartbeat
    loop = TrialLoop(study, storage, net.space, 3, config)
    with loop.beat:
        assert loop.start(wait=False) is None  # within the grace, the foreign trial may end
        loop.foreign_grace_s = 0.0
        first = loop.start(wait=False)
        assert first is not None
        assert loop.start(wait=False) is None  # one place left, and it is taken
        assert loop.finish(first, fake_score(first.candidate))
        assert loop.start(wait=False) is None and loop.done()
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3


@pytest.mark.parametrize("sampler", ["gp", "random"])
def test_a_new_study_of_a_modelling_sampler_starts_from_the_design(net, tmp_path, sampler):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    config = SearchConfig(**{**CONFIG, "sampler": sampler})
    study = search(net, url, "d", 3, config, progress=False)
    first = [t.params for t in sorted(study.get_trials(), key=lambda t: t.number)]
    design = initial_design(net.space, 3, seed=0)
    if sampler == "gp":  # the cheapest, the largest, one between; nothing left queued
        assert first == design and net.space.decode(first[0]) == net.space.smallest()
    else:  # random search keeps its own definition
        assert not any(t.system_attrs.get("fixed_params") for t in study.get_trials())
    search(net, url, "d", 4, config, progress=False)  # a resumed study queues nothing more
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert not study.get_trials(states=(TrialState.WAITING,))


class _Stuck(optuna.samplers.BaseSampler):
    """Always proposes the same candidate, as a model can keep proposing its best."""

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        return distribution.choices[0]


def test_a_sampler_stuck_on_a_searched_candidate_is_helped_out(net, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    config = SearchConfig(**CONFIG)
    study, storage = open_study(url, "stuck", net, config)
    study.sampler = _Stuck()
    TrialLoop(study, storage, net.space, 3, config).run(fake_score)  # no "used up" error
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3 and len({net.space.decode(t.params) for t in done}) == 3
    assert isinstance(study.sampler, _Stuck)  # its own sampler is back


def test_the_random_draws_that_help_a_stuck_sampler_out_are_new_each_time(net, tmp_path):
    # a stuck sampler is helped out by random draws; were those draws the same sequence
    # each time it got stuck, each episode would first repeat every earlier one's draws
    # (searched by then): stand-downs growing with the trials, and a long search stopped
    # by the "used up" error in a space with plenty of new candidates left
    space = JointSpace.from_dict({"mlp": {"choices": [0.25, 0.5, 0.75, 1.0]}}).bind(net.elastic.vit)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    config = SearchConfig(**CONFIG)
    study, storage = open_study(url, "stuck-long", net, config)
    study.sampler = _Stuck()
    trials = 24
    TrialLoop(study, storage, space, trials, config).run(fake_score)
    runs, run = [], 0  # stand-downs before each completed trial
    for t in study.get_trials():
        if t.state == TrialState.PRUNED:
            run += 1
        else:
            runs, run = [*runs, run], 0
    assert len(runs) == trials
    # each time the stuck proposals, then one random draw (4,096 candidates: rarely a twin)
    assert runs[1] > 0 and max(runs) <= 2 * runs[1]
