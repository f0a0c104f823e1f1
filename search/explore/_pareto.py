"""The Pareto front's hypervolume, with its reference point stated.

Objectives are put in one scale before the volume is taken: accuracy as the error
``1 - accuracy`` (reference: accuracy 0), and latency, MACs and parameters as a fraction
of the full model's (reference: the full model). The hypervolume is then the share of the
box "accuracy 0..1 x 0..full model cost" that the front dominates: 0 for a front no better
than the full model at chance accuracy, 1 for a perfect model that costs nothing. Fronts
compare only under the same reference; ``reference`` in ``front_hypervolume`` fixes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from optuna.study import StudyDirection
from optuna.trial import TrialState

from vitpareto.errors import VitParetoError
from vitpareto.search.explore._study import objectives_of
from vitpareto.search.explore._volume import dominated_by, hypervolume


def reference(df, objectives: list[str], full: dict[str, Any] | None = None) -> dict[str, float]:
    """The full model's cost per objective (accuracy's reference is 0): from ``full`` (what
    the study measured when it began), else for latency the median over trials of the full
    model timed beside each candidate, else the largest value seen."""
    ref: dict[str, float] = {}
    for o in objectives:
        if o == "accuracy":
            ref[o] = 0.0
        elif full and o in full:
            ref[o] = float(full[o])
        elif o == "latency_ms" and "speedup" in df:
            ref[o] = float((df["latency_ms"] * df["speedup"]).median())
        else:
            ref[o] = float(df[o].max())
    return ref


def normalized(df, objectives: list[str], ref: dict[str, float]) -> np.ndarray:
    """Rows of minimised objectives in the reference's units (see the module docstring)."""
    cols = []
    for o in objectives:
        if o == "accuracy":
            cols.append(1.0 - df[o].to_numpy(dtype=float))
        else:
            if ref[o] <= 0:
                raise VitParetoError(f"the reference for {o} must be positive, got {ref[o]}")
            cols.append(df[o].to_numpy(dtype=float) / ref[o])
    return np.stack(cols, axis=1) if cols else np.empty((len(df), 0))


def front_hypervolume(
    df, objectives: list[str], ref: dict[str, float] | None = None, full=None
) -> tuple[float, dict[str, float]]:
    """Hypervolume of the rows of ``df`` marked ``pareto`` (all rows if there is no such
    column) and the reference it was taken against."""
    ref = ref or reference(df, objectives, full)
    rows = df[df["pareto"]] if "pareto" in df else df
    if rows.empty:
        return 0.0, ref
    return hypervolume(normalized(rows, objectives, ref), np.ones(len(objectives))), ref


def describe_reference(ref: dict[str, float]) -> str:
    """The reference point in words, for every printed hypervolume."""
    parts = []
    for o, v in ref.items():
        parts.append("accuracy 0" if o == "accuracy" else f"{o} {v:.4g} (full model)")
    return "reference: " + ", ".join(parts)


def front_hypervolume_of(study, df=None, ref: dict[str, float] | None = None):
    """Hypervolume of a study's front and its reference point: from ``df`` (its trials as a
    DataFrame with a ``pareto`` column), or else from the study's own front."""
    objectives = objectives_of(study)
    if df is None:
        rows = []
        for t in front_trials(study):
            row = dict(zip(objectives, t.values, strict=True))
            if "speedup" in t.user_attrs:
                row["speedup"] = t.user_attrs["speedup"]
            rows.append(row)
        df = pd.DataFrame(rows)
    if df.empty:
        return 0.0, {}
    return front_hypervolume(df, objectives, ref, study.user_attrs.get("full"))


def near_front(study, margin: float) -> list:
    """The study's front, then the feasible trials no other dominates once their latency is
    taken ``margin`` lower: those a short timing that came out slow kept off the front."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(c <= 0 for c in t.constraints.values())
    ]
    if not trials:
        return []
    sign = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions])
    points = np.array([t.values for t in trials], dtype=float) * sign  # all minimised
    given = points.copy()  # each trial given the benefit of the doubt on its latency
    for i, o in enumerate(objectives_of(study)):
        if o == "latency_ms":
            given[:, i] *= 1 - margin
    kept = ~dominated_by(points, given)  # by no trial as measured, given the doubt
    front = {t.number for t in front_trials(study)}
    full = study.user_attrs.get("full") or {}
    near = [
        t
        for t, k in zip(trials, kept, strict=True)
        if k
        and t.number not in front
        and not beaten_by_full(_values(study, t), t.user_attrs, full, doubt=margin)
    ]
    return [t for t in trials if t.number in front] + near


def front_trials(study) -> list:
    """The study's front: Optuna's best trials less those the full model dominates. The
    full model is a point of every front (its accuracy measured as the trials' are, its
    latency the reference each trial was timed beside, its MACs and parameters counted), so
    a candidate it beats is never offered; a study from before its accuracy was measured
    keeps Optuna's front."""
    full = study.user_attrs.get("full") or {}
    best = study.best_trials
    if "accuracy" not in full:
        return best
    return [t for t in best if not beaten_by_full(_values(study, t), t.user_attrs, full)]


def beaten_by_full(
    values: dict[str, float], attrs: dict[str, Any], full: dict[str, Any], doubt: float = 0.0
) -> bool:
    """Whether the full model dominates a trial of objective ``values``: as good in every
    objective and better in one. Latency is compared by the trial's ``speedup`` (the full
    model timed beside it) where it has one, its time taken ``doubt`` lower; a trial that
    cuts nothing (the full model's MACs and parameters) is the full model, timed with noise;
    an objective the full model has no figure for leaves the trial on."""
    if "accuracy" not in full:
        return False
    if all(o in full and attrs.get(o) == full[o] for o in ("macs", "params")):
        return False
    better = False
    for o, v in values.items():
        if o == "accuracy":
            mine, theirs = -float(full[o]), -float(v)  # all minimised
        elif o == "latency_ms" and attrs.get("speedup"):
            mine, theirs = 1.0, (1 - doubt) / float(attrs["speedup"])  # in the full model's time
        elif o in full:
            mine, theirs = float(full[o]), float(v)
        else:
            return False
        if mine > theirs:
            return False
        better = better or mine < theirs
    return better


def _values(study, trial) -> dict[str, float]:
    return dict(zip(objectives_of(study), trial.values, strict=True))
