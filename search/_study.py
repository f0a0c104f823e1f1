"""Multi-objective search on a supernet with Optuna; every trial kept in one results database.

One study per search, in an Optuna storage (SQLite by default). The study records what
it searched (model, dataset, supernet SHA-256, space, objectives, target device) in its
user attributes, and refuses to continue with another supernet or space. Each trial
stores its candidate, MACs, parameters, latency statistics, per-exit accuracy, the
device fingerprint and its fidelity in trial user attributes, and its objective values as
the trial's values, so ``optuna-dashboard URL`` reads the database unchanged. Running the
same search again resumes it: completed trials are kept, a trial cut off by a crash is
marked failed by Optuna's heartbeat and retried.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vitpareto.spaces import VitParetoError

DEFAULT_STORAGE = "sqlite:///results/vitpareto.db"
DIRECTIONS = {
    "accuracy": "maximize",
    "latency_ms": "minimize",
    "macs": "minimize",
    "params": "minimize",
}
SAMPLERS = ("nsga2", "tpe", "random", "grid")
HEARTBEAT_S = 30


@dataclass
class SearchConfig:
    """What a search optimises and where it measures (stored with the study)."""

    objectives: tuple[str, ...] = ("accuracy", "latency_ms")
    sampler: str = "nsga2"
    seed: int = 0
    device: str = "cpu"
    latency_batch: int = 1
    latency_repeats: int = 10
    max_batches: int | None = None  # accuracy on the first N validation batches (None: all)
    max_latency_ms: float | None = None
    min_accuracy: float | None = None
    max_macs: float | None = None

    def __post_init__(self):
        self.objectives = tuple(self.objectives)
        unknown = [o for o in self.objectives if o not in DIRECTIONS]
        if unknown or not self.objectives:
            raise VitParetoError(
                f"unknown objective(s) {unknown or '(none given)'}; choose from "
                f"{', '.join(DIRECTIONS)}"
            )
        if self.sampler not in SAMPLERS:
            raise VitParetoError(
                f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}"
            )

    def violations(self, m: dict[str, Any]) -> dict[str, float]:
        """Optuna constraint values (<= 0 is feasible) of a trial's metrics."""
        out = {}
        if self.max_latency_ms is not None:
            out["max_latency_ms"] = m["latency_ms"] - self.max_latency_ms
        if self.min_accuracy is not None:
            out["min_accuracy"] = self.min_accuracy - m["accuracy"]
        if self.max_macs is not None:
            out["max_macs"] = m["macs"] - self.max_macs
        return out


def open_storage(url: str, create: bool = True):
    """An Optuna RDB storage with a heartbeat (crashed trials are failed, then retried)."""
    import warnings

    import optuna
    import sqlalchemy.exc

    # heartbeats and retries are marked experimental; they are what resuming relies on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if path.exists() and path.is_file():
            with open(path, "rb") as f:
                head = f.read(16)
            if head and head != b"SQLite format 3\x00":
                raise VitParetoError(
                    f"storage {url!r}: {str(path)!r} is not an SQLite database; give another path"
                )
        if not create and not path.is_file():
            raise VitParetoError(
                f"storage {url!r}: no database at {str(path)!r}; run `vitpareto search` first"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=2 * HEARTBEAT_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=2
            ),
        )
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError) as e:
        raise VitParetoError(
            f"storage {url!r} cannot be opened as a results database: {e}"
        ) from None


def _sampler(config: SearchConfig, space):
    """Optuna's sampler; NSGA-II and TPE read the constraints each trial sets."""
    import optuna

    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=config.seed)
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=config.seed, multivariate=True)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    return optuna.samplers.GridSampler(space.params(), seed=config.seed)


def study_attrs(supernet, config: SearchConfig) -> dict[str, Any]:
    """What a study records about itself (and checks when resumed)."""
    from vitpareto.evaluators import device_fingerprint

    return {
        "model": {"name": supernet.model_name, "kwargs": supernet.model_kwargs},
        "dataset": supernet.data["spec"],
        "supernet_sha256": supernet.sha256,
        "space": supernet.space.to_dict(),
        "objectives": list(config.objectives),
        "target": device_fingerprint(config.device),
        "config": asdict(config),
    }


def open_study(storage_url: str, name: str, supernet, config: SearchConfig):
    """Create the study, or resume it after checking it searched the same supernet and space."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url)
    attrs = study_attrs(supernet, config)
    directions = [DIRECTIONS[o] for o in config.objectives]
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        got = existing.user_attrs
        for key in ("supernet_sha256", "space", "objectives"):
            if got.get(key) != attrs[key]:
                raise VitParetoError(
                    f"study {name!r} in {storage_url} was searched with another {key.replace('_', ' ')} "
                    f"({str(got.get(key))[:70]}); use another --study to search this one"
                )
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=directions,
        sampler=_sampler(config, supernet.space),
        load_if_exists=True,
    )
    if existing is None:
        for k, v in attrs.items():
            study.set_user_attr(k, v)
    return study


def search(
    supernet, storage_url: str, name: str, trials: int, config: SearchConfig, progress: bool = True
):
    """Run (or resume) a search until ``trials`` trials are complete; return the study."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from vitpareto.evaluators import AccuracyEvaluator, CostEvaluator, LatencyEvaluator

    if trials < 1:
        raise VitParetoError(f"--trials must be at least 1, got {trials}")
    study = open_study(storage_url, name, supernet, config)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if done >= trials:
        return study
    elastic = supernet.elastic.eval()
    space = supernet.space
    data = supernet.load_data(batch_size=128)
    evaluators = [
        CostEvaluator(),
        AccuracyEvaluator(
            data.val, device=config.device, max_batches=config.max_batches, progress=False
        ),
        LatencyEvaluator(
            device=config.device, batch_size=config.latency_batch, repeats=config.latency_repeats
        ),
    ]

    def objective(trial):
        candidate = space.suggest(trial)
        metrics: dict[str, Any] = {}
        for ev in evaluators:
            metrics.update(ev(elastic, candidate, metrics))
        trial.set_user_attr("candidate", candidate.to_dict())
        trial.set_user_attr("fidelity", "shared")
        for k, v in metrics.items():
            trial.set_user_attr(k, json.loads(json.dumps(v, default=float)))
        for key, value in config.violations(metrics).items():
            trial.set_constraint(key, float(value))
        return tuple(float(metrics[o]) for o in config.objectives)

    study.optimize(
        objective,
        n_trials=trials - done,
        callbacks=[MaxTrialsCallback(trials, states=(TrialState.COMPLETE,))],
        show_progress_bar=progress and sys.stderr.isatty(),
        gc_after_trial=False,
    )
    return study
