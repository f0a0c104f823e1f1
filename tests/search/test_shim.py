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
    ask_suggest,
    fast,
    record_heartbeats,
    storage_of,
    suggest_buffered,
    tell,
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


def _history(st, n: int = 12) -> None:
    """``n`` completed trials, past NSGA-II's first generation (population 4)."""
    for i in range(n):
        trial = st.ask()
        _suggest(trial)
        st.tell(trial, [i % 5 / 5, (i * 7) % 11 / 11])


def test_ask_suggest_draws_what_ask_then_suggest_draws_reading_the_trials_once(tmp_path):
    def nsga2():
        return optuna.samplers.NSGAIISampler(population_size=4, seed=3)

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    ours = optuna.create_study(
        storage=storage, study_name="ours", directions=["maximize", "minimize"], sampler=nsga2()
    )
    public = optuna.create_study(
        storage=storage, study_name="public", directions=["maximize", "minimize"], sampler=nsga2()
    )
    _history(ours)
    _history(public)
    loads, reads = [], []
    real_get_trials, real_get_trial = storage._get_trials, storage.get_trial
    storage._get_trials = lambda *a, **k: loads.append(1) or real_get_trials(*a, **k)
    storage.get_trial = lambda tid: reads.append(tid) or real_get_trial(tid)
    asked = ask_suggest(ours, True, _suggest)
    storage._get_trials, storage.get_trial = real_get_trials, real_get_trial
    assert len(loads) == 1 and reads == []  # NSGA-II alone reads the trials three times
    generation = next(k for k in asked.system_attrs if k.endswith("generation"))
    assert asked.system_attrs[generation] >= 1  # set by the sampler, kept for write_rows
    assert storage.get_trial(trial_id(asked.trial)).params == {}  # nothing written yet
    write_rows(storage, asked.trial, asked.params, system_attrs=asked.system_attrs)
    assert asked.trial.storage is ours._storage  # the stand-in is gone

    trial = public.ask()
    assert asked.result == _suggest(trial)  # the same draw through Optuna's public API
    stored_ours = storage.get_trial(trial_id(asked.trial))
    stored_public = storage.get_trial(trial_id(trial))
    assert stored_ours.params == stored_public.params
    assert stored_ours.system_attrs == stored_public.system_attrs


def _beats(storage) -> dict:
    with storage.engine.connect() as conn:
        found = conn.execute(sqlalchemy.text("SELECT trial_id, heartbeat FROM trial_heartbeats"))
        return {tid: beat for tid, beat in found}


def test_heartbeats_are_one_statement_and_write_rows_sends_the_first(study):
    st, storage = study
    first, second = st.ask(), st.ask()
    write_rows(storage, first, heartbeat=True)
    rows = _beats(storage)
    assert set(rows) == {trial_id(first)}
    statements = []
    sqlalchemy.event.listen(
        storage.engine, "before_cursor_execute", lambda *a: statements.append(a[2])
    )
    record_heartbeats(storage, [trial_id(first), trial_id(second)])  # an update and an insert
    assert sum(s.lstrip().upper().startswith("INSERT") for s in statements) == 1
    again = _beats(storage)
    assert set(again) == {trial_id(first), trial_id(second)}
    assert again[trial_id(first)] >= rows[trial_id(first)]
    assert storage._get_stale_trial_ids(st._study_id) == []  # both beat just now


def test_ending_a_trial_another_process_failed_raises_and_writes_nothing(study):
    st, storage = study
    trial = st.ask()
    storage.set_trial_state_values(trial_id(trial), optuna.trial.TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        tell(st, trial, [0.5, 1.0], optuna.trial.TrialState.COMPLETE, storage, user_attrs={"k": 1})
    t = storage.get_trial(trial_id(trial))
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs == {} and t.values is None
