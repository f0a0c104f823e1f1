"""The volume a set of points dominates, and the points no other dominates: the two
measures of a front, every objective minimised (``_pareto`` puts objectives in one scale
first; the predictor sampler ranks its proposals by the volume they add)."""

from __future__ import annotations

import numpy as np


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Volume dominated by ``points`` (rows, every objective minimised) inside ``ref``."""
    points = np.asarray(points, dtype=float)
    ref = np.asarray(ref, dtype=float)
    if points.ndim != 2 or points.shape[1] != ref.shape[0]:
        raise ValueError(f"points of shape {points.shape} do not match reference {ref.shape}")
    pts = nondominated(points[np.all(points < ref, axis=1)])
    if len(pts) == 0:
        return 0.0
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    pts = pts[np.argsort(pts[:, -1], kind="stable")]
    volume = 0.0
    for i in range(len(pts)):  # slices along the last objective, exact
        upper = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        if upper > pts[i, -1]:
            volume += (upper - pts[i, -1]) * hypervolume(pts[: i + 1, :-1], ref[:-1])
    return volume


def nondominated(points: np.ndarray) -> np.ndarray:
    """The rows no other row dominates (all objectives minimised; duplicates kept once)."""
    pts = np.unique(np.asarray(points, dtype=float), axis=0)
    if len(pts) < 2:
        return pts
    return pts[~dominated_by(pts, pts)]


def dominated_by(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each row of ``others``, whether some row of ``points`` dominates it (all
    objectives minimised)."""
    le = np.all(points[:, None, :] <= others[None, :, :], axis=2)  # le[i, j]: i weakly below j
    lt = np.any(points[:, None, :] < others[None, :, :], axis=2)
    return np.any(le & lt, axis=0)
