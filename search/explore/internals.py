"""The internals of Optuna that vitpareto touches, all of them here.

Supported: optuna >= 5.0, < 6 (pyproject). ``tests/search/test_shim.py`` fails when any of
these change, and each has a fallback on Optuna's public API where there is one.

- ``storage_of``: the storage of a loaded study, to load another study beside it.
- ``trial_id``: the storage's id of a trial, which its heartbeat needs.
- ``suggest_buffered``: a trial's parameters drawn by its sampler without a database write
  per parameter (the per-parameter commits were most of a trial's database time).
- ``write_rows``: a trial's parameters, user attributes and constraints written in one
  transaction of three statements, into Optuna's own tables (its ORM models), where the
  public API commits each value separately.
- ``active_trials``: the study's running, waiting and complete trials (number, state and,
  where asked, parameters) in two light queries, where ``study.get_trials`` loads every
  unfinished trial with all its attributes.
- ``ask`` and ``tell``: ``study.ask()`` without its read of the trial queue when the caller
  knows it is empty, and ``study.tell()`` without its read of the trial in hand.

Together they bring a trial's database work on PostgreSQL from about 120 ms to about 20
(``bench_cluster``).
"""

from __future__ import annotations

import copy
import datetime
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import TrialState
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

try:  # the RDB storage's own models and session helper, for one-transaction writes
    from optuna.storages._rdb import models as _models
    from optuna.storages._rdb.storage import _create_scoped_session
except ImportError:  # pragma: no cover - another Optuna: the public API, one write each
    _models = _create_scoped_session = None

T = TypeVar("T")
CONSTRAINTS = "constraints"  # the system attribute Optuna's samplers read constraints from


def storage_of(study):
    """The storage a loaded study reads from (to open its neighbours in the same database)."""
    return study._storage


def trial_id(trial) -> int:
    """The storage's id of an Optuna trial (a ``Trial`` or a ``FrozenTrial``)."""
    return trial._trial_id


class _ParamBuffer:
    """Stands in for a trial's storage while it suggests: parameters are kept, not written;
    everything else goes to the storage."""

    def __init__(self, storage):
        self._storage = storage
        self.params: dict[str, tuple[float, Any]] = {}

    def set_trial_param(self, trial_id, name, internal, distribution) -> None:
        self.params[name] = (internal, distribution)

    def __getattr__(self, name):
        return getattr(self._storage, name)


def suggest_buffered(trial, suggest: Callable[[Any], T]) -> tuple[T, dict[str, tuple]]:
    """``suggest(trial)``, the parameters it draws kept in memory; returns its result and
    the parameters (name -> (internal value, distribution)) for ``write_rows``."""
    real = trial.storage
    buffer = _ParamBuffer(real)
    trial.storage = buffer
    try:
        return suggest(trial), buffer.params
    finally:
        trial.storage = real


def fast(storage) -> bool:
    """Whether one-transaction writes are available for this storage."""
    return _models is not None and isinstance(storage, optuna.storages.RDBStorage)


def write_rows(
    storage,
    trial,
    params: Mapping[str, tuple[float, Any]] = (),
    user_attrs: Mapping[str, Any] = (),
    constraints: Mapping[str, float] | None = None,
    finish: tuple[TrialState, list[float] | None] | None = None,
) -> None:
    """Write a running trial's parameters, user attributes, constraints and, with
    ``finish`` (state, values), its end, in one transaction (``storage``: the RDB storage
    under the study). Call the sampler's ``after_trial`` first, as ``tell`` does (``tell``
    below does both)."""
    params, user_attrs = dict(params), dict(user_attrs)
    if not fast(storage):
        for name, (internal, dist) in params.items():
            trial.storage.set_trial_param(trial_id(trial), name, internal, dist)
        for k, v in user_attrs.items():
            trial.set_user_attr(k, v)
        for k, v in (constraints or {}).items():
            trial.set_constraint(k, v)
        if finish is not None:
            trial.study._storage.set_trial_state_values(trial_id(trial), *finish)
        return
    tid = trial_id(trial)
    attrs = [
        {"trial_id": tid, "key": k, "value_json": json.dumps(v)} for k, v in user_attrs.items()
    ]
    system = [
        {"trial_id": tid, "key": f"{CONSTRAINTS}:{k}", "value_json": json.dumps(float(v))}
        for k, v in (constraints or {}).items()
    ]  # as Trial.set_constraint stores them
    with _create_scoped_session(storage.scoped_session, True) as session:
        row = _models.TrialModel.find_or_raise_by_id(tid, session, for_update=finish is not None)
        storage.check_trial_is_updatable(tid, row.state)
        if params:
            session.execute(
                sqlalchemy.insert(_models.TrialParamModel.__table__),
                [
                    {
                        "trial_id": tid,
                        "param_name": name,
                        "param_value": internal,
                        "distribution_json": distribution_to_json(dist),
                    }
                    for name, (internal, dist) in params.items()
                ],
            )
        for model, rows in (
            (_models.TrialUserAttributeModel, attrs),
            (_models.TrialSystemAttributeModel, system),
        ):
            if rows:
                _upsert(session, storage, model, rows)
        if finish is not None:  # as RDBStorage.set_trial_state_values ends a trial
            state, values = finish
            for objective, v in enumerate(values or ()):
                stored, kind = _models.TrialValueModel.value_to_stored_repr(v)
                session.add(
                    _models.TrialValueModel(
                        trial_id=tid, objective=objective, value=stored, value_type=kind
                    )
                )
            row.state = state
            row.datetime_complete = datetime.datetime.now()


def _upsert(session, storage, model, rows: list[dict]) -> None:
    """Insert attribute rows, replacing the values of keys the trial already has."""
    table = model.__table__
    insert = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}.get(storage.engine.name)
    if insert is None:  # another database: Optuna's own statement, one row at a time
        for r in rows:
            storage._set_trial_attr_without_commit(
                session, model, r["trial_id"], r["key"], json.loads(r["value_json"])
            )
        return
    stmt = insert(table).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.trial_id, table.c.key],
        set_={"value_json": stmt.excluded.value_json},
    )
    session.execute(stmt)


@dataclass
class Row:
    """A trial as the trial loop needs it."""

    trial_id: int
    number: int
    state: TrialState
    params: dict[str, Any] | None = field(default=None)  # None: not read (asked not to)


_STATES = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE)


def active_trials(storage, study, known: set[int]) -> list[Row]:
    """The study's running, waiting and complete trials; parameters are read for all but
    the complete trials numbered in ``known`` (whose candidates the caller has)."""
    if not fast(storage):
        return [
            Row(trial_id(t), t.number, t.state, None if t.number in known else dict(t.params))
            for t in study.get_trials(deepcopy=False, states=_STATES)
        ]
    trials, params_t = _models.TrialModel, _models.TrialParamModel
    with _create_scoped_session(storage.scoped_session) as session:
        rows = [
            Row(tid, number, state)
            for tid, number, state in session.execute(
                sqlalchemy.select(trials.trial_id, trials.number, trials.state).where(
                    trials.study_id == study._study_id, trials.state.in_(_STATES)
                )
            )
        ]
        need = {
            r.trial_id: r for r in rows if r.state != TrialState.COMPLETE or r.number not in known
        }
        for r in need.values():
            r.params = {}
        if need:
            found = session.execute(
                sqlalchemy.select(
                    params_t.trial_id,
                    params_t.param_name,
                    params_t.param_value,
                    params_t.distribution_json,
                ).where(params_t.trial_id.in_(list(need)))
            )
            for tid, name, value, dist in found:
                need[tid].params[name] = _distribution(dist).to_external_repr(value)
    return sorted(rows, key=lambda r: r.number)


_DISTRIBUTIONS: dict[str, Any] = {}


def _distribution(text: str):
    if text not in _DISTRIBUTIONS:
        _DISTRIBUTIONS[text] = json_to_distribution(text)
    return _DISTRIBUTIONS[text]


def ask(study, queue_empty: bool):
    """A new running trial of ``study``; ``queue_empty``: no trial waits in the study's
    queue (enqueued, or a retry of a failed one), so Optuna need not look."""
    if not queue_empty or not fast(getattr(study._storage, "_backend", None)):
        return study.ask()
    study._thread_local.cached_all_trials = None  # as ask does: samplers read afresh
    tid = study._storage.create_new_trial(study._study_id)
    return optuna.trial.Trial(study, tid)


def tell(study, trial, values: list[float] | None, state: TrialState, storage=None, **rows):
    """Finish a running trial as ``study.tell`` does (the sampler's ``after_trial``, then the
    state and values stored), from the trial in hand rather than read again; with
    ``storage`` (the RDB storage), in one transaction with ``rows`` (see ``write_rows``)."""
    if values is not None and not all(math.isfinite(v) for v in values):
        state, values = TrialState.FAIL, None  # as tell does with values it cannot take
    study._thread_local.cached_all_trials = None
    frozen = copy.copy(trial._cached_frozen_trial)
    try:
        study.sampler.after_trial(study, frozen, state, values)
    finally:
        if storage is not None:
            write_rows(storage, trial, finish=(state, values), **rows)
        else:
            study._storage.set_trial_state_values(trial_id(trial), state, values)
