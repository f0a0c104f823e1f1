"""The hypervolume: exact on known fronts, equal to Optuna's own, reference stated."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import create_trial

from vitpareto.search.explore import (
    describe_reference,
    front_hypervolume,
    hypervolume,
    near_front,
)


def test_known_volumes():
    ref = np.array([1.0, 1.0])
    assert hypervolume(np.array([[0.5, 0.5]]), ref) == pytest.approx(0.25)
    # two points: union of two boxes minus their overlap
    assert hypervolume(np.array([[0.2, 0.6], [0.6, 0.2]]), ref) == pytest.approx(
        0.8 * 0.4 + 0.4 * 0.8 - 0.4 * 0.4
    )
    # a dominated point and one outside the reference add nothing
    pts = np.array([[0.2, 0.6], [0.6, 0.2], [0.7, 0.7], [1.5, 0.1]])
    assert hypervolume(pts, ref) == pytest.approx(0.48)
    assert hypervolume(np.empty((0, 2)), ref) == 0.0
    cube = hypervolume(np.array([[0.5, 0.5, 0.5]]), np.ones(3))
    assert cube == pytest.approx(0.125)


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_matches_optuna(dims):
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(dims)
    pts = rng.random((25, dims))
    ref = np.full(dims, 1.1)
    assert hypervolume(pts, ref) == pytest.approx(compute_hypervolume(pts, ref), rel=1e-9)


def test_front_hypervolume_in_reference_units():
    df = pd.DataFrame(
        {
            "accuracy": [0.9, 0.8, 0.5],
            "latency_ms": [10.0, 5.0, 9.0],
            "pareto": [True, True, False],
        }
    )
    hv, ref = front_hypervolume(df, ["accuracy", "latency_ms"], full={"latency_ms": 20.0})
    assert ref == {"accuracy": 0.0, "latency_ms": 20.0}
    # errors 0.1 and 0.2 at latency fractions 0.5 and 0.25 in the unit box
    assert hv == pytest.approx(0.9 * 0.5 + 0.8 * (0.5 - 0.25))
    assert "latency_ms 20 (full model)" in describe_reference(ref)


def test_near_front_takes_feasible_trials_the_doubt_keeps_undominated():
    """The front first, then a trial within the margin of it; a far trial and an
    infeasible one (which would dominate both) are left out, and do not count."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["accuracy", "latency_ms"])
    for values, violation in (((0.9, 1.0), 0.0), ((0.9, 1.1), 0.0), ((0.95, 0.5), 1.0),
                              ((0.8, 2.0), 0.0)):  # fmt: skip
        study.add_trial(create_trial(values=list(values), constraints={"latency": violation}))
    assert [t.number for t in near_front(study, 0.15)] == [0, 1]
    assert [t.number for t in near_front(study, 0.0)] == [0]
