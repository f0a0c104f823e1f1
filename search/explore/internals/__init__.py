"""The internals of Optuna that vitpareto touches, all of them in this package.

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
- ``ask_suggest`` and ``tell``: ``study.ask()`` and the parameters drawn, the study's
  trials read once where the sampler reads them up to four times (NSGA-II), the new trial
  not read back, and what the sampler writes on it kept for ``write_rows``; and
  ``study.tell()`` without its read of the trial in hand.
- ``record_heartbeats``: the heartbeats of a process's running trials in one statement,
  where Optuna's ``record_heartbeat`` takes two or three per trial; ``write_rows`` sends a
  trial's first beat with its parameters.

Together they bring a trial's database work from about 120 ms to under 20 on SQLite and
PostgreSQL (``bench_cluster``).
"""

from vitpareto.search.explore.internals._reads import (
    Asked,
    Row,
    active_trials,
    ask_suggest,
    fast,
    storage_of,
    suggest_buffered,
    trial_id,
)
from vitpareto.search.explore.internals._writes import (
    CONSTRAINTS,
    record_heartbeats,
    tell,
    write_rows,
)

__all__ = [
    "CONSTRAINTS",
    "Asked",
    "Row",
    "active_trials",
    "ask_suggest",
    "fast",
    "record_heartbeats",
    "storage_of",
    "suggest_buffered",
    "tell",
    "trial_id",
    "write_rows",
]
