"""The Optuna and Ray internals vitpareto relies on (search/explore/internals.py, the Ray
searcher): these tests fail when a new release changes them."""

from __future__ import annotations

import inspect

import optuna
import pytest
import sqlalchemy
from optuna.distributions import CategoricalDistribution

from vitpareto.search.explore import open_storage
from vitpareto.search.explore.internals import (
    fast,
    storage_of,
    suggest_buffered,
    trial_id,
    write_rows,
)


@pytest.fixture
def study(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    st = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"])
    return st, storage


def _suggest(trial):
    return [trial.suggest_categorical(f"p{i}", [1, 2, 3]) for i in range(5)]


def test_trial_ids_and_the_study_storage(study):
    st, storage = study
    trial = st.ask()
    assert storage.get_trial(trial_id(trial)).number == trial.number
    assert trial_id(st.trials[0]) == trial_id(trial)
    other = optuna.create_study(storage=storage_of(st), study_name="other")
    assert {s.study_name for s in optuna.get_all_study_summaries(storage)} == {"s", "other"}
    assert other.study_name == "other"


def test_buffered_parameters_are_written_in_one_transaction(study):
    st, storage = study
    assert fast(storage)  # else every write falls back to one commit per value
    trial = st.ask()
    values, params = suggest_buffered(trial, _suggest)
    assert storage.get_trial(trial_id(trial)).params == {}  # nothing written while suggesting
    assert set(params) == {f"p{i}" for i in range(5)}
    commits = []

    def count(conn):
        commits.append(1)

    sqlalchemy.event.listen(storage.engine, "commit", count)
    write_rows(storage, trial, params, {"accuracy": 0.5, "nested": {"a": [1, 2]}}, {"lat": 0.3})
    sqlalchemy.event.remove(storage.engine, "commit", count)
    assert len(commits) == 1
    st.tell(trial, [0.5, 1.0])

    # the same trial written through Optuna's public API
    st.add_trial(
        optuna.trial.create_trial(
            params={f"p{i}": v for i, v in enumerate(values)},
            distributions={f"p{i}": CategoricalDistribution([1, 2, 3]) for i in range(5)},
            values=[0.5, 1.0],
            user_attrs={"accuracy": 0.5, "nested": {"a": [1, 2]}},
            constraints={"lat": 0.3},
        )
    )
    ours, public = st.trials
    assert ours.params == public.params and ours.distributions == public.distributions
    assert ours.user_attrs == public.user_attrs
    assert ours.constraints == public.constraints == {"lat": 0.3}
    assert ours.values == public.values


def test_written_rows_are_visible_to_other_processes_views(study, tmp_path):
    st, storage = study
    trial = st.ask()
    _, params = suggest_buffered(trial, _suggest)
    write_rows(storage, trial, params, {"k": 1})
    fresh = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    (t,) = fresh.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert t.params == trial.params and t.user_attrs == {"k": 1}


def test_the_ray_searcher_interface():
    tune_search = pytest.importorskip("ray.tune.search")
    searcher = tune_search.Searcher
    assert searcher.FINISHED == "FINISHED"
    for name in ("suggest", "on_trial_complete", "save", "restore"):
        assert callable(getattr(searcher, name))
    assert list(inspect.signature(searcher.suggest).parameters) == ["self", "trial_id"]
    params = inspect.signature(searcher.on_trial_complete).parameters
    assert list(params)[:4] == ["self", "trial_id", "result", "error"]
