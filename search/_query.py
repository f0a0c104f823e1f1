"""Reading a results database: trials as a pandas DataFrame, filtered, sorted, the front.

``load_trials(storage, study)`` is the notebook API: one row per completed trial with its
objective values, scalar metrics (accuracy, latency_ms, macs, params, ...), the searched
knobs (``heads_b3``: parameter names with ``.`` turned into ``_`` so that ``--where`` can
name them), the candidate as JSON, and ``pareto`` (True for Optuna's own ``best_trials``:
non-dominated among the feasible trials).
"""

from __future__ import annotations

import json
from typing import Any

from vitpareto.search import _expr
from vitpareto.spaces import VitParetoError


def load_study(storage: str, name: str):
    """An existing study, or one clear error naming the studies that exist."""
    import optuna

    from vitpareto.search._study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(storage, create=False)
    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise VitParetoError(
            f"no study {name!r} in {storage}; studies there: {', '.join(names) or 'none'}"
        ) from None


def load_trials(storage: str, study: str):
    """Completed trials of ``study`` as a DataFrame (see the module docstring)."""
    return trials_frame(load_study(storage, study))


def objectives_of(st) -> list[str]:
    """The objective names a study was created with."""
    return st.user_attrs.get("objectives") or [f"value{i}" for i in range(len(st.directions))]


def front_hypervolume_of(st, df=None, ref=None):
    """Hypervolume of a study's front and its reference point (see ``_pareto``)."""
    from vitpareto.search._pareto import front_hypervolume

    df = trials_frame(st) if df is None else df
    if df.empty:
        return 0.0, {}
    return front_hypervolume(df, objectives_of(st), ref, st.user_attrs.get("full"))


def trials_frame(st):
    """Completed trials of a loaded study as a DataFrame."""
    import pandas as pd
    from optuna.trial import TrialState

    objectives = objectives_of(st)
    front = {t.number for t in st.best_trials}
    rows: list[dict[str, Any]] = []
    for t in st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        row: dict[str, Any] = {"trial": t.number}
        for k, v in t.user_attrs.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                row[k] = v
        row.update(dict(zip(objectives, t.values, strict=True)))
        row.update({k.replace(".", "_"): v for k, v in t.params.items()})
        row["candidate"] = json.dumps(t.user_attrs.get("candidate"))
        row["pareto"] = t.number in front
        row["feasible"] = all(v <= 0 for v in t.constraints.values())
        row["seconds"] = (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append(row)
    return pd.DataFrame(rows)


def select(df, where: str | None = None, sort: str | None = None, limit: int | None = None):
    """Rows matching the filter ``where`` (the grammar of ``_expr``: columns, literals,
    comparisons, and/or/not, in [list], arithmetic; never evaluated as Python), sorted by
    ``sort`` (comma-separated columns, ``-col`` for descending), at most ``limit`` of them."""
    if limit is not None and limit < 1:
        raise VitParetoError(f"--limit must be at least 1, got {limit}")
    if where is not None:
        df = _expr.where(df, where)
    if sort is not None:
        df = _expr.sort(df, sort)
    if limit is not None:
        df = df.head(limit)
    return df
