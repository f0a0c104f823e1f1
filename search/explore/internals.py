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
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.distributions import distribution_to_json
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
) -> None:
    """Write a running trial's parameters, user attributes and constraints in one
    transaction (``storage``: the RDB storage under the study)."""
    params, user_attrs = dict(params), dict(user_attrs)
    if not fast(storage):
        for name, (internal, dist) in params.items():
            trial.storage.set_trial_param(trial_id(trial), name, internal, dist)
        for k, v in user_attrs.items():
            trial.set_user_attr(k, v)
        for k, v in (constraints or {}).items():
            trial.set_constraint(k, v)
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
        row = _models.TrialModel.find_or_raise_by_id(tid, session)
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
