"""A predictor in the loop (after DyNAS-T's LINAS): fewer real trials to the same front.

Each round fits a regressor per objective on the study's completed trials (features: the
space's parameters and the candidate's MACs, counted exactly), runs an evolutionary
multi-objective search (NSGA-II on a throwaway in-memory study) on the predictions alone,
and proposes a batch from the predicted front of the candidates not searched yet, for real
evaluation; their results retrain the regressors in the next round. MACs, when they are an
objective or a constraint, are counted, not predicted, so a candidate over ``--max-macs``
is never proposed. Everything is rebuilt from the stored trials, so ``--jobs``, Ray and a
resumed study need nothing kept in memory; the round's cross-validated error of each
regressor is logged and stored on the trials it proposed.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.samplers import BaseSampler, NSGAIISampler, RandomSampler
from optuna.trial import TrialState

from vitpareto.evaluators import analytic_macs
from vitpareto.search.explore._config import DIRECTIONS, SearchConfig
from vitpareto.search.explore._scoring import candidate_key
from vitpareto.search.explore._volume import hypervolume, nondominated

LOG = logging.getLogger("vitpareto.search")


class PredictorSampler(BaseSampler):
    """Proposes the candidates an inner search on fitted predictors finds best (see the
    module docstring); random until ``startup`` trials are complete."""

    # system attributes of a trial it proposed: the round's trial count and each
    # regressor's cross-validated mean absolute error (objective -> error)
    ROUND_KEY = "predictor:round"
    ERROR_KEY = "predictor:cv_mae"

    def __init__(
        self,
        space,
        config: SearchConfig,
        seed: int = 0,
        batch: int = 4,
        startup: int = 10,
        generations: int = 16,
        population: int = 32,
    ):
        self.space, self.config, self.seed = space, config, seed
        self.batch, self.startup = batch, startup
        self.generations, self.population = generations, population
        self.params = space.params()
        self.numeric = {
            name: all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)
            for name, choices in self.params.items()
        }
        self.distributions = {n: CategoricalDistribution(c) for n, c in self.params.items()}
        self._random = RandomSampler(seed=seed)
        self._rng = np.random.default_rng(seed)
        self._pending: list[dict] = []
        self._fitted_on = -1  # completed trials of the current round's fit
        self._figures: dict = {}
        self._decoded: dict[tuple, tuple[str, float]] = {}  # parameters -> (key, MACs)

    # -- Optuna's sampler interface -------------------------------------------------------
    def reseed_rng(self) -> None:
        self._random.reseed_rng()
        self._rng = np.random.default_rng()

    def infer_relative_search_space(self, study, trial):
        return dict(self.distributions)

    def sample_relative(self, study, trial, search_space):
        if not search_space:
            return {}
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(complete) < self.startup:
            return {}  # random, parameter by parameter
        if not self._pending or len(complete) >= self._fitted_on + self.batch:
            self._round(study, complete)
        taken = self._taken(study)
        while self._pending:
            params = self._pending.pop(0)
            if self._key(params) not in taken:
                for key, value in self._figures.items():
                    study._storage.set_trial_system_attr(trial._trial_id, key, value)
                return params
        return {}  # the predicted front is all searched: explore

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    # -- one round ------------------------------------------------------------------------
    def _round(self, study, complete) -> None:
        """Fit the regressors on ``complete`` and fill the batch from the predicted front."""
        self._fitted_on = len(complete)
        objectives = list(self.config.objectives)
        x = np.array([self._features(t.params) for t in complete])
        y = np.array([t.values for t in complete], dtype=float)
        from sklearn.ensemble import ExtraTreesRegressor  # 1 s of import, on first use
        from sklearn.model_selection import cross_val_score

        models, errors = {}, {}
        for i, name in enumerate(objectives):
            if name == "macs":
                continue  # counted exactly
            model = ExtraTreesRegressor(n_estimators=64, random_state=self.seed)
            folds = min(5, len(complete))
            scores = cross_val_score(model, x, y[:, i], cv=folds, scoring="neg_mean_absolute_error")
            errors[name] = float(-scores.mean())
            models[i] = model.fit(x, y[:, i])
        self._figures = {self.ROUND_KEY: len(complete), self.ERROR_KEY: errors}
        LOG.info(
            "predictor round on %d trials: cross-validated mean absolute error %s",
            len(complete),
            ", ".join(f"{k} {v:.4g}" for k, v in errors.items()),
        )
        evaluated = self._inner_search(study, complete, models)
        self._pending = self._choose(evaluated, complete, objectives)

    def _inner_search(self, study, complete, models) -> list[tuple[dict, np.ndarray]]:
        """Every feasible candidate NSGA-II evaluates on the predictions, started from the
        real front."""
        objectives = list(self.config.objectives)
        inner = optuna.create_study(
            directions=[DIRECTIONS[o] for o in objectives],
            sampler=NSGAIISampler(
                population_size=self.population, seed=int(self._rng.integers(2**31))
            ),
        )
        for t in study.best_trials[: self.population]:
            inner.enqueue_trial(dict(t.params))
        evaluated: list[tuple[dict, np.ndarray]] = []
        for _ in range(self.generations):
            trials = [inner.ask() for _ in range(self.population)]
            chosen = [
                {n: t.suggest_categorical(n, c) for n, c in self.params.items()} for t in trials
            ]
            x = np.array([self._features(p) for p in chosen])
            predicted = np.zeros((len(chosen), len(objectives)))
            for i, name in enumerate(objectives):
                predicted[:, i] = x[:, -1] if name == "macs" else models[i].predict(x)
            for t, params, values, row in zip(trials, chosen, predicted, x, strict=True):
                violations = self.config.violations(self._metrics(values, row))
                for key, v in violations.items():
                    t.set_constraint(key, v)
                inner.tell(t, values.tolist())
                if all(v <= 0 for v in violations.values()):
                    evaluated.append((params, values))
        return evaluated

    def _metrics(self, values: np.ndarray, row: np.ndarray) -> dict[str, float]:
        """What the constraints read: the predicted objectives, MACs counted."""
        m = dict(zip(self.config.objectives, values.tolist(), strict=True))
        m["macs"] = float(row[-1])
        m.setdefault("accuracy", math.inf)  # not an objective: no constraint it can break
        m.setdefault("latency_ms", -math.inf)
        return m

    def _choose(self, evaluated, complete, objectives) -> list[dict]:
        """Up to ``batch`` of the predicted front of the candidates not searched yet, each
        adding the most predicted hypervolume to the real front and the ones chosen before
        it. The front is of the unsearched ones: regression trees predict averages of what
        they were fitted on, so the front of every prediction is often the real front."""
        seen = {self._key(t.params) for t in complete}
        fresh, keys = [], set()
        for params, values in evaluated:
            key = self._key(params)
            if key not in seen and key not in keys:
                keys.add(key)
                fresh.append((params, values))
        if not fresh:
            return []
        signs = np.array([-1.0 if DIRECTIONS[o] == "maximize" else 1.0 for o in objectives])
        candidates = np.array([v for _, v in fresh]) * signs
        front = {tuple(row) for row in nondominated(candidates)}
        keep = [tuple(row) in front for row in candidates]
        fresh = [f for f, k in zip(fresh, keep, strict=True) if k]
        candidates = candidates[keep]
        if len(fresh) <= self.batch:
            return [p for p, _ in fresh]
        points = np.array([t.values for t in complete], dtype=float) * signs
        ref = np.max(np.vstack([points, candidates]), axis=0) + 1e-9
        chosen: list[dict] = []
        for _ in range(self.batch):
            base = hypervolume(points, ref)
            gains = [hypervolume(np.vstack([points, c]), ref) - base for c in candidates]
            best = int(np.argmax(gains))
            chosen.append(fresh.pop(best)[0])
            points = np.vstack([points, candidates[best]])
            candidates = np.delete(candidates, best, axis=0)
        return chosen

    # -- features -------------------------------------------------------------------------
    def _features(self, params: dict) -> list[float]:
        """The parameters as numbers (a choice's value where choices are numbers, else its
        index), then the MACs of the candidate they decode to (last)."""
        out = []
        for name, choices in self.params.items():
            v = params[name]
            out.append(float(v) if self.numeric[name] else float(choices.index(v)))
        out.append(self._decode(params)[1])
        return out

    def _key(self, params: dict) -> str:
        return self._decode(params)[0]

    def _decode(self, params: dict) -> tuple[str, float]:
        """The candidate key and counted MACs of a parameter set, decoded once: the inner
        search and every proposal's duplicate check see the same sets again and again."""
        values = tuple(params[name] for name in self.params)
        if values not in self._decoded:
            candidate = self.space.decode(params)
            macs = float(analytic_macs(self.space.spec, candidate))
            self._decoded[values] = (candidate_key(candidate), macs)
        return self._decoded[values]

    def _taken(self, study) -> set[str]:
        """Candidates of the study's complete and running trials."""
        states = (TrialState.COMPLETE, TrialState.RUNNING)
        return {
            self._key(t.params)
            for t in study.get_trials(deepcopy=False, states=states)
            if set(t.params) == set(self.params)
        }
