"""The samplers: the predictor in the loop finds more of a known front than random search in
the same trials; every sampler completes the exact count with no candidate twice; a
candidate that breaks --max-macs is never scored."""

from __future__ import annotations

import copy
import statistics

import numpy as np
import optuna
import pytest
import timm
import torch
from optuna.trial import TrialState

from vitpareto.evaluators import analytic_macs
from vitpareto.search.explore import (
    SAMPLERS,
    PredictorSampler,
    SearchConfig,
    TrialLoop,
    candidate_key,
    hypervolume,
    initial_design,
    make_sampler,
    open_storage,
)
from vitpareto.spaces import ElasticViT, JointSpace

SPACE = {
    "patch_size": [8, 16],
    "heads": {"choices": [1, 2], "groups": [[0, 1], [2, 3], [4, 5]]},
    "mlp": {"choices": [0.25, 0.5, 0.75, 1.0], "groups": [[0, 1], [2, 3], [4, 5]]},
    "keep": {"blocks": [1, 3], "choices": [0.5, 0.75, 1.0]},
}


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    model = timm.create_model("test_vit", img_size=32, patch_size=16, num_classes=10)
    elastic = ElasticViT(copy.deepcopy(model))
    return JointSpace.from_dict(SPACE, elastic)


class Synthetic:
    """A test-only evaluator with a known trade-off: latency is the MACs (normalised), and
    accuracy rewards late blocks' MLP and heads far more than early ones', so the front's
    candidates cut early blocks first; random search rarely draws them."""

    def __init__(self, space):
        self.space, self.full = space, analytic_macs(space.spec)
        self.scored: list[str] = []

    def __call__(self, c) -> dict:
        self.scored.append(candidate_key(c))
        spec = self.space.spec
        weights = np.linspace(0.02, 1.0, spec.depth) ** 2
        mlp = np.array(c.mlp) / np.array(spec.mlp_hidden)
        heads = np.array(c.heads) / spec.num_heads
        keep = np.prod([k for k in c.keep if k])
        loss = float(weights @ (1 - mlp) + weights @ (1 - heads)) / weights.sum()
        accuracy = 1.0 - 0.5 * loss - 0.2 * (1 - keep) - 0.1 * (c.patch_size != spec.patch_size)
        macs = analytic_macs(spec, c)
        return {"accuracy": accuracy, "latency_ms": macs / self.full, "macs": macs}


def _search(space, sampler: str, seed: int, trials: int, tmp_path, **config) -> optuna.Study:
    cfg = SearchConfig(sampler=sampler, seed=seed, latency="predicted", **config)
    storage = open_storage(f"sqlite:///{tmp_path / f'{sampler}-{seed}.db'}")
    study = optuna.create_study(
        storage=storage, study_name="s", directions=["maximize", "minimize"]
    )
    study.sampler = make_sampler(cfg, space, seed)
    score = Synthetic(space)
    TrialLoop(study, storage, space, trials, cfg).run(score)
    study.scored = score.scored
    return study


def _hypervolume(study) -> float:
    points = [[1.0 - t.values[0], t.values[1]] for t in study.best_trials]
    return hypervolume(np.array(points), np.array([1.0, 1.0]))


def test_the_predictor_in_the_loop_beats_random_search_in_30_trials(space, tmp_path):
    got = {
        s: [_hypervolume(_search(space, s, seed, 30, tmp_path)) for seed in range(5)]
        for s in ("predictor", "random")
    }
    assert statistics.median(got["predictor"]) > statistics.median(got["random"]), got


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_completes_the_count_with_no_candidate_twice(space, sampler, tmp_path):
    study = _search(space, sampler, 0, 14, tmp_path)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 14
    assert len(set(study.scored)) == len(study.scored) == 14  # nothing scored twice


def test_the_predictor_states_its_error_and_proposes_nothing_over_the_macs_budget(space, tmp_path):
    budget = 0.5 * analytic_macs(space.spec)
    study = _search(space, "predictor", 0, 20, tmp_path, max_macs=budget)
    proposed = [t for t in study.trials if PredictorSampler.ERROR_KEY in t.system_attrs]
    assert proposed, "no trial came from a predictor round"
    for t in proposed:
        errors = t.system_attrs[PredictorSampler.ERROR_KEY]
        assert set(errors) == {"accuracy", "latency_ms"} and all(e >= 0 for e in errors.values())
        assert analytic_macs(space.spec, space.decode(t.params)) <= budget


@pytest.mark.parametrize("sampler", ["random", "predictor"])
def test_a_candidate_over_the_macs_budget_is_never_scored(space, sampler, tmp_path):
    budget = 0.7 * analytic_macs(space.spec)
    study = _search(space, sampler, 1, 12, tmp_path, max_macs=budget)
    scored = [space.decode(t.params) for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert len(scored) == 12
    assert all(analytic_macs(space.spec, c) <= budget for c in scored)
    skipped = [t for t in study.get_trials(states=(TrialState.PRUNED,))]
    assert all("--max-macs" in t.user_attrs["stood_down"] for t in skipped)
    if sampler == "random":
        assert skipped  # random search draws some over the budget: they cost no scoring


def test_the_predictor_sampler_is_stateless_between_processes(space, tmp_path):
    """A second sampler on the same stored trials proposes from the same fit (nothing kept
    only in memory decides what is proposed)."""
    study = _search(space, "predictor", 2, 12, tmp_path)
    cfg = SearchConfig(sampler="predictor", latency="predicted")
    a, b = PredictorSampler(space, cfg, seed=5), PredictorSampler(space, cfg, seed=5)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    a._round(study, complete)
    b._round(study, complete)
    assert a._pending == b._pending and a._pending


def test_the_initial_design_spans_the_cost_axis_from_its_cheapest_candidate(space):
    design = initial_design(space, 10, seed=0)
    cands = [space.decode(p) for p in design]
    macs = [analytic_macs(space.spec, c) for c in cands]
    assert len({candidate_key(c) for c in cands}) == 10  # distinct candidates
    assert cands[0] == space.smallest() and macs[0] == min(macs)  # both ends
    assert cands[1] == space.decode(space.extreme_params(largest=True)) and macs[1] == max(macs)
    inner = macs[2:]
    assert inner == sorted(inner) and macs[0] < inner[0] and inner[-1] < macs[1]
    # as many points in the cheaper half of log-MACs as in the dearer: the cheap end is covered
    mid = (np.log(macs[0]) + np.log(macs[1])) / 2
    assert sum(np.log(m) < mid for m in inner) >= 3
    assert initial_design(space, 10, seed=0) == design  # deterministic in the seed
    capped = initial_design(space, 10, seed=0, max_macs=macs[4])
    assert all(analytic_macs(space.spec, space.decode(p)) <= macs[4] for p in capped)
    assert initial_design(space, 0, seed=0) == []


def test_a_round_proposes_unsearched_candidates_when_one_trial_dominates_every_prediction(space):
    """Regression trees predict averages of the trials they were fitted on: where one trial
    is best at both objectives, every prediction is dominated by it, and a round must still
    propose the best candidates not searched yet (it proposed none, and the search went on
    at random: a two-worker search then never used its predictor)."""
    sampler = PredictorSampler(space, SearchConfig(sampler="predictor", latency="predicted"))
    study = optuna.create_study(directions=["maximize", "minimize"])
    rng = np.random.default_rng(1)
    for i in range(10):  # as a two-worker search's first ten were: one far ahead on both
        params = {n: rng.choice(d.choices).item() for n, d in sampler.distributions.items()}
        values = [0.45, 1.9] if i == 0 else [0.1 + 0.01 * i, 2.0 + 0.2 * i]
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=sampler.distributions, values=values
            )
        )
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    sampler._round(study, complete)
    searched = {sampler._key(t.params) for t in complete}
    proposed = {sampler._key(p) for p in sampler._pending}
    assert proposed and not proposed & searched
