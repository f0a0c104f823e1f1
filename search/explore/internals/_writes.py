"""Writing a trial as the trial loop needs it: its rows, its end and its heartbeat in one
transaction each (see the package)."""

from __future__ import annotations

import copy
import datetime
import json
import math
from collections.abc import Mapping
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from vitpareto.search.explore.internals._reads import (
    _create_scoped_session,
    _models,
    fast,
    trial_id,
)

CONSTRAINTS = "constraints"  # the system attribute Optuna's samplers read constraints from


def write_rows(
    storage,
    trial,
    params: Mapping[str, tuple[float, Any]] = (),
    user_attrs: Mapping[str, Any] = (),
    constraints: Mapping[str, float] | None = None,
    finish: tuple[TrialState, list[float] | None] | None = None,
    system_attrs: Mapping[str, Any] = (),
    heartbeat: bool = False,
) -> None:
    """Write a running trial's parameters, user attributes, constraints, system attributes,
    with ``heartbeat`` a heartbeat and, with ``finish`` (state, values), its end, in one
    transaction (``storage``: the RDB storage under the study). Call the sampler's
    ``after_trial`` first, as ``tell`` does (``tell`` below does both)."""
    params, user_attrs, system_attrs = dict(params), dict(user_attrs), dict(system_attrs)
    if not fast(storage):
        for name, (internal, dist) in params.items():
            trial.storage.set_trial_param(trial_id(trial), name, internal, dist)
        for k, v in user_attrs.items():
            trial.set_user_attr(k, v)
        for k, v in (constraints or {}).items():
            trial.set_constraint(k, v)
        for k, v in system_attrs.items():
            trial.storage.set_trial_system_attr(trial_id(trial), k, v)
        if heartbeat and hasattr(storage, "record_heartbeat"):
            storage.record_heartbeat(trial_id(trial))
        if finish is not None:
            trial.study._storage.set_trial_state_values(trial_id(trial), *finish)
        return
    tid = trial_id(trial)
    attrs = [
        {"trial_id": tid, "key": k, "value_json": json.dumps(v)} for k, v in user_attrs.items()
    ]
    system_attrs.update({f"{CONSTRAINTS}:{k}": float(v) for k, v in (constraints or {}).items()})
    system = [  # constraints as Trial.set_constraint stores them
        {"trial_id": tid, "key": k, "value_json": json.dumps(v)} for k, v in system_attrs.items()
    ]
    with _create_scoped_session(storage.scoped_session, True) as session:
        _claim(session, storage, tid, finish[0] if finish is not None else None)
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
        if heartbeat:
            _beat(session, storage, [tid])
        if finish is not None and finish[1]:  # as RDBStorage.set_trial_state_values stores them
            session.execute(
                sqlalchemy.insert(_models.TrialValueModel.__table__),
                [_value_row(tid, objective, v) for objective, v in enumerate(finish[1])],
            )


def _value_row(tid: int, objective: int, value: float) -> dict:
    stored, kind = _models.TrialValueModel.value_to_stored_repr(value)
    return {"trial_id": tid, "objective": objective, "value": stored, "value_type": kind}


def _claim(session, storage, tid: int, state: TrialState | None) -> None:
    """Check that trial ``tid`` is still running (Optuna's ``UpdateFinishedTrialError`` if
    not) and, with ``state``, end it in the same statement, which holds its row until the
    transaction ends (as ``set_trial_state_values`` does with a row lock)."""
    trials = _models.TrialModel.__table__
    if state is not None:
        ended = session.execute(
            sqlalchemy.update(trials)
            .where(trials.c.trial_id == tid, trials.c.state == TrialState.RUNNING)
            .values(state=state, datetime_complete=datetime.datetime.now())
        )
        if ended.rowcount == 1:
            return
    found = session.execute(sqlalchemy.select(trials.c.state).where(trials.c.trial_id == tid))
    current = found.scalar_one_or_none()
    if current is None:
        raise KeyError(f"no trial with trial_id {tid} exists")  # as find_or_raise_by_id
    storage.check_trial_is_updatable(tid, current)
    if state is not None:  # pragma: no cover - running, yet not updated: not a case Optuna has
        raise optuna.exceptions.UpdateFinishedTrialError(f"trial {tid} could not be ended")


def record_heartbeats(storage, ids: list[int]) -> None:
    """A heartbeat for each of the running trials ``ids``, in one transaction."""
    if not ids:
        return
    if not fast(storage):
        for tid in ids:
            storage.record_heartbeat(tid)
        return
    with _create_scoped_session(storage.scoped_session, True) as session:
        _beat(session, storage, ids)


def _beat(session, storage, ids: list[int]) -> None:
    """Each trial's heartbeat row set to the database's now (inserted when missing), as
    ``RDBStorage.record_heartbeat`` sets it, in one statement on SQLite and PostgreSQL."""
    table = _models.TrialHeartbeatModel.__table__
    insert = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}.get(storage.engine.name)
    if insert is None:  # another database: Optuna's own way, a trial at a time
        for tid in ids:
            row = _models.TrialHeartbeatModel.where_trial_id(tid, session, True)
            if row is None:
                session.add(_models.TrialHeartbeatModel(trial_id=tid))
            else:
                row.heartbeat = session.execute(sqlalchemy.func.now()).scalar()
        return
    stmt = insert(table).values(
        [{"trial_id": tid, "heartbeat": sqlalchemy.func.now()} for tid in ids]
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.trial_id], set_={"heartbeat": stmt.excluded.heartbeat}
    )
    session.execute(stmt)


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
