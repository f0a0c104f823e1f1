"""Reading a study as the trial loop needs it: a new trial asked and drawn with one read
of the study, and the study's active trials in two light queries (see the package)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.distributions import json_to_distribution
from optuna.trial import TrialState

try:  # the RDB storage's own models and session helper
    from optuna.storages._rdb import models as _models
    from optuna.storages._rdb.storage import _create_scoped_session
except ImportError:  # pragma: no cover - another Optuna: the public API throughout
    _models = _create_scoped_session = None

T = TypeVar("T")


def fast(storage) -> bool:
    """Whether one-transaction writes are available for this storage."""
    return _models is not None and isinstance(storage, optuna.storages.RDBStorage)


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


class _ReadOnce:
    """Stands in for a study's storage while a trial is asked and drawn: the study's trials
    and system attributes are read once (the sampler's later reads see that snapshot, as
    its own ``use_cache`` reads do), the new trial is taken as created rather than read
    back, and the system attributes the sampler sets on it are kept for ``write_rows``."""

    def __init__(self, storage):
        self._storage = storage
        self._trials: list | None = None
        self._study_attrs: dict | None = None
        self.new = None  # the new trial's FrozenTrial, once created
        self.system_attrs: dict[str, Any] = {}

    def create_new_trial(self, study_id: int, template_trial=None) -> int:
        tid = self._storage.create_new_trial(study_id, template_trial)
        try:  # the cached storage keeps the trial it created
            number = self._storage._trial_id_to_study_id_and_number[tid][1]
            self.new = self._storage._studies[study_id].trials[number]
        except (AttributeError, KeyError):  # pragma: no cover - another storage: read it
            self.new = self._storage.get_trial(tid)
        return tid

    def get_trial(self, trial_id: int):
        if self.new is not None and trial_id == self.new._trial_id:
            return self.new
        return self._storage.get_trial(trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        if self.new is not None and trial_id == self.new._trial_id:
            return dict(self.new.system_attrs)  # with what the sampler set, not yet written
        return self._storage.get_trial_system_attrs(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states=None):
        if self._trials is None:
            self._trials = self._storage.get_all_trials(study_id, deepcopy=False)
        trials = self._trials if states is None else [t for t in self._trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if self.new is None or trial_id != self.new._trial_id:
            return self._storage.set_trial_system_attr(trial_id, key, value)
        self.system_attrs[key] = value
        self.new.system_attrs[key] = value

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        if self._study_attrs is None:
            self._study_attrs = self._storage.get_study_system_attrs(study_id)
        return self._study_attrs

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._storage.set_study_system_attr(study_id, key, value)
        if self._study_attrs is not None:
            self._study_attrs[key] = value

    def __getattr__(self, name):
        return getattr(self._storage, name)


@dataclass
class Asked:
    """A new running trial, what ``suggest`` returned for it, and what is to be written
    with ``write_rows``: its parameters and the system attributes its sampler set."""

    trial: Any
    result: Any
    params: dict[str, tuple[float, Any]]
    system_attrs: dict[str, Any]


def ask_suggest(study, queue_empty: bool, suggest: Callable[[Any], T]) -> Asked:
    """``study.ask()`` then ``suggest(trial)``, with nothing written but the new trial's
    row; ``queue_empty``: no trial waits in the study's queue (enqueued, or a retry of a
    failed one), so Optuna need not look."""
    if not queue_empty or not fast(getattr(study._storage, "_backend", None)):
        trial = study.ask()
        result, params = suggest_buffered(trial, suggest)
        return Asked(trial, result, params, {})
    real = study._storage
    once = _ReadOnce(real)
    study._storage = once
    try:
        study._thread_local.cached_all_trials = None  # as ask does: samplers read afresh
        trial = optuna.trial.Trial(study, once.create_new_trial(study._study_id))
        result, params = suggest_buffered(trial, suggest)
    finally:
        study._storage = real
    trial.storage = real
    return Asked(trial, result, params, once.system_attrs)


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
    the trials numbered in ``known`` (whose candidates the caller has)."""
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
        need = {r.trial_id: r for r in rows if r.number not in known}
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
