"""Reading a results database: trials as a pandas DataFrame, filtered, sorted, the front.

``load_trials(storage, study)`` is the notebook API: one row per completed trial with its
objective values, scalar metrics (accuracy, latency_ms, macs, params, ...), the searched
knobs (``heads_b3``: parameter names with ``.`` turned into ``_`` so that ``--where`` can
name them), the candidate as JSON, and ``pareto`` (True on the study's front: non-dominated
among the feasible trials, and not dominated by the full model either), and for a candidate with a cascade or exits the
share of samples leaving by each route (``share_stage_p16``, ``share_exit_b5``,
``share_final``).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from optuna.trial import TrialState

from vitpareto.errors import VitParetoError
from vitpareto.search.explore import (
    describe_reference,
    front_hypervolume_of,
    front_trials,
    load_study,
    objectives_of,
)
from vitpareto.search.outputs._expr import sort_rows, where_rows
from vitpareto.spaces import Candidate

MAIN_COLUMNS = [
    "trial",
    "source_trial",
    "accuracy",
    "test_accuracy",
    "latency_ms",
    "speedup",
    "search_speedup",
    "macs",
    "params",
    "fidelity",
    "pareto",
]


def load_trials(storage: str, study: str):
    """Completed trials of ``study`` as a DataFrame (see the module docstring)."""
    return trials_frame(load_study(storage, study))


def completed_trials(st) -> list:
    """The completed trials of a study made by a vitpareto search, checked: as many
    objective names as values, and a candidate stored with each trial."""
    objectives = objectives_of(st)
    if len(objectives) != len(st.directions):
        raise VitParetoError(
            f"study {st.study_name!r} names {len(objectives)} objectives ({objectives}) but "
            f"optimises {len(st.directions)}: its attributes were changed by hand or by "
            "another program"
        )
    trials = st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for t in trials:
        stored_candidate(st, t)
    return trials


def stored_candidate(st, trial) -> Candidate:
    """The candidate ``trial`` of study ``st`` stored, or one line naming the trial and its
    attribute (a study changed by hand, or not made by vitpareto)."""
    try:
        return Candidate.from_dict(trial.user_attrs["candidate"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise VitParetoError(
            f"study {st.study_name!r}, trial {trial.number}: its user attribute 'candidate' "
            f"holds no valid candidate ({type(e).__name__}: {str(e)[:120]}); a study not made "
            "by vitpareto, or changed by hand"
        ) from None


def trials_frame(st):
    """Completed trials of a loaded study as a DataFrame."""
    objectives = objectives_of(st)
    trials = completed_trials(st)  # checked before the front is read from them
    front = {t.number for t in front_trials(st)}
    rows: list[dict[str, Any]] = []
    for t in trials:
        row: dict[str, Any] = {"trial": t.number}
        for k, v in t.user_attrs.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                row[k] = v
        row.update(dict(zip(objectives, t.values, strict=True)))
        row.update({k.replace(".", "_"): v for k, v in t.params.items()})
        row.update(route_shares(t.user_attrs))
        row["candidate"] = json.dumps(t.user_attrs.get("candidate"))
        row["pareto"] = t.number in front
        row["feasible"] = all(v <= 0 for v in t.constraints.values())
        row["seconds"] = (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append(row)
    return pd.DataFrame(rows)


def route_shares(attrs: dict[str, Any]) -> dict[str, float]:
    """The share of samples leaving by each route, as columns: ``share_stage_p16`` (a
    cascade stage at patch size 16), ``share_exit_b5`` (the exit after block 5),
    ``share_final``; none for a static candidate."""
    shares, c = attrs.get("exit_fraction"), Candidate.from_dict(attrs["candidate"])
    names = [f"share_stage_p{p}" for p in c.cascade] + [f"share_exit_b{b}" for b in c.exits]
    if not isinstance(shares, list) or len(shares) != len(names) + 1 or not names:
        return {}
    return dict(zip([*names, "share_final"], shares, strict=True))


def select(df, where: str | None = None, sort: str | None = None, limit: int | None = None):
    """Rows matching the filter ``where`` (a small grammar of our own: columns, literals,
    comparisons, and/or/not, in [list], arithmetic; never evaluated as Python), sorted by
    ``sort`` (comma-separated columns, ``-col`` for descending), at most ``limit`` of them."""
    if limit is not None and limit < 1:
        raise VitParetoError(f"--limit must be at least 1, got {limit}")
    if where is not None:
        df = where_rows(df, where)
    if sort is not None:
        df = sort_rows(df, sort)
    if limit is not None:
        df = df.head(limit)
    return df


def format_front(study) -> str:
    """The front of a study as a table, with its hypervolume and reference point."""
    df = trials_frame(study)
    n = 0 if df.empty else len(df)
    lines = [f"study {study.study_name!r}: {n} completed trials"]
    if df.empty:
        return lines[0]
    front = df[df["pareto"]].sort_values("accuracy" if "accuracy" in df else "trial")
    hv, ref = front_hypervolume_of(study, df)
    cols = [c for c in MAIN_COLUMNS if c in front.columns and c != "pareto"]
    lines.append(f"front: {len(front)} trials, hypervolume {hv:.4f} ({describe_reference(ref)})")
    if front.empty:
        acc = (study.user_attrs.get("full") or {}).get("accuracy", float("nan"))
        lines.append(f"the full model (accuracy {acc:.4f}) dominates every trial so far")
    else:
        lines.append(front[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    rounds = study.user_attrs.get("front_rounds")
    if rounds and {"search_front", "search_speedup"} <= set(df):
        lines.append(retimed(df, rounds))
    return "\n".join(lines)


def retimed(df, rounds: int) -> str:
    """What timing the front again at length changed, in one line."""
    off = (df["speedup"] / df["search_speedup"] - 1).abs().dropna()
    left = int((df["search_front"].fillna(False).astype(bool) & ~df["pareto"]).sum())
    return (
        f"latency timed again at {rounds} rounds for {len(df)} models (the search's front and "
        f"those near it): the search's speedups were off by {off.median():.0%} (median; at "
        f"most {off.max():.0%}); {left} of the search's front left it"
    )
