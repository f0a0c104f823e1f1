"""How the space is explored: the search's config, results database, study, trial loop,
scoring, backends (this process, worker processes, a Ray cluster) and the front's second
stage."""

from vitpareto.search.explore._backend import Backend
from vitpareto.search.explore._config import (
    DIRECTIONS,
    RUNTIMES,
    SAMPLERS,
    SETTINGS,
    SearchConfig,
)
from vitpareto.search.explore._design import enqueue_design, initial_design
from vitpareto.search.explore._front import LocalFrontScorer, load_weights, weights_blob
from vitpareto.search.explore._local import LocalBackend, ProcessBackend
from vitpareto.search.explore._loop import Started, TrialLoop
from vitpareto.search.explore._pareto import (
    beaten_by_full,
    describe_reference,
    front_hypervolume,
    front_hypervolume_of,
    front_trials,
    near_front,
)
from vitpareto.search.explore._predictive import PredictorSampler
from vitpareto.search.explore._ray import tune_space
from vitpareto.search.explore._raybackend import RayBackend
from vitpareto.search.explore._scoring import (
    Scorer,
    candidate_key,
    latency_table,
    make_scorer,
    measured_latency,
    reference_latency,
    trial_attrs,
)
from vitpareto.search.explore._search import (
    FRONT_ROUNDS,
    NEAR,
    check_rounds,
    default_artifacts,
    make_backend,
    needed,
    rescore_front,
    search,
)
from vitpareto.search.explore._storage import (
    DEFAULT_STORAGE,
    check_study_name,
    load_study,
    open_storage,
    study_names,
)
from vitpareto.search.explore._study import (
    SUFFIX,
    WORKER,
    front_study,
    make_sampler,
    objectives_of,
    open_study,
    sampler_seed,
)
from vitpareto.search.explore._volume import hypervolume, nondominated

__all__ = [
    "DEFAULT_STORAGE",
    "DIRECTIONS",
    "FRONT_ROUNDS",
    "NEAR",
    "RUNTIMES",
    "SAMPLERS",
    "SETTINGS",
    "SUFFIX",
    "WORKER",
    "Backend",
    "LocalBackend",
    "LocalFrontScorer",
    "PredictorSampler",
    "ProcessBackend",
    "RayBackend",
    "Scorer",
    "SearchConfig",
    "Started",
    "TrialLoop",
    "candidate_key",
    "check_rounds",
    "check_study_name",
    "default_artifacts",
    "enqueue_design",
    "describe_reference",
    "front_hypervolume",
    "near_front",
    "front_trials",
    "beaten_by_full",
    "front_hypervolume_of",
    "front_study",
    "hypervolume",
    "initial_design",
    "latency_table",
    "load_study",
    "load_weights",
    "make_backend",
    "make_sampler",
    "make_scorer",
    "measured_latency",
    "needed",
    "nondominated",
    "objectives_of",
    "open_storage",
    "open_study",
    "reference_latency",
    "rescore_front",
    "sampler_seed",
    "search",
    "study_names",
    "trial_attrs",
    "tune_space",
    "weights_blob",
]
