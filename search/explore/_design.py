"""The first trials of a model-based search: the cheapest and the largest candidate, and
others spread evenly over log-MACs between them, in place of the samplers' random start.

A front's value lies at its ends as much as between them, and a random start rarely
reaches the cheap end of a large space: on the Fashion-MNIST supernet the cheapest
candidate alone scores nearly the hypervolume of 200 random trials. The samplers that
model the trials so far (Gaussian processes, TPE, the predictor, NSGA-II's first
generation) then start from a start that spans the cost axis. Random search and the grid
keep their own definition.
"""

from __future__ import annotations

import math
import random
from typing import Any

from vitpareto.evaluators import analytic_macs
from vitpareto.search.explore._config import SearchConfig
from vitpareto.search.explore._scoring import candidate_key

DESIGNED = ("gp", "tpe", "predictor", "nsga2")  # the samplers whose start is this design
SIZE = 10  # GP and TPE model the trials once ten are complete (NSGA-II: its first generation)
POOL = 40  # random parameter sets drawn per design point, to spread over MACs


def initial_design(space, n: int, seed: int, max_macs: float | None = None) -> list[dict]:
    """``n`` parameter sets of distinct candidates: the cheapest, the largest (unless over
    ``max_macs``) and, between, those of a seeded random pool nearest to MAC counts evenly
    spaced on a log scale (latency follows MACs, and a front's cheap end is where a random
    start falls short). Deterministic in ``seed``."""
    if n < 1:
        return []
    rng = random.Random(seed)
    params = space.params()
    ends = [space.extreme_params(), space.extreme_params(largest=True)]
    pool = ends + [{k: rng.choice(v) for k, v in params.items()} for _ in range(POOL * n)]
    costed: dict[str, tuple[int, dict[str, Any]]] = {}
    for p in pool:
        c = space.decode(p)
        macs = analytic_macs(space.spec, c)
        if max_macs is None or macs <= max_macs:
            costed.setdefault(candidate_key(c), (macs, p))
    if not costed:
        return []
    chosen = [k for k in (candidate_key(space.decode(e)) for e in ends) if k in costed]
    rest = [k for k in costed if k not in chosen]
    logs = {k: math.log(max(1, macs)) for k, (macs, _) in costed.items()}
    lo, hi = min(logs.values()), max(logs.values())
    inner = n - len(chosen)
    for i in range(inner):  # targets evenly spaced in log-MACs: as many near the cheap end
        if not rest:
            break
        target = lo + (i + 1) * (hi - lo) / (inner + 1)
        best = min(rest, key=lambda k: abs(logs[k] - target))
        rest.remove(best)
        chosen.append(best)
    return [costed[k][1] for k in chosen[:n]]


def enqueue_design(study, space, config: SearchConfig, trials: int) -> int:
    """Queue the initial design in a study that has no trial yet, for the samplers that
    model their trials; returns how many were queued (none on resume)."""
    if config.sampler not in DESIGNED or study.get_trials(deepcopy=False):
        return 0
    design = initial_design(space, min(SIZE, trials), config.seed, config.max_macs)
    for p in design:
        study.enqueue_trial(p)
    return len(design)
