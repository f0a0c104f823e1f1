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

import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, replace
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
HEARTBEAT_S = 10
# this process, as recorded by each trial it runs: concurrent searches on one study (other
# processes, other machines) tell their trials apart by it
WORKER = f"{socket.gethostname()}:{os.getpid()}"
STARTED = time.time()
# what a resumed study must keep: trials scored otherwise would not compare
SETTINGS = (
    "device",
    "latency_batch",
    "latency_repeats",
    "latency",
    "threads",
    "max_batches",
    "max_latency_ms",
    "min_accuracy",
    "max_macs",
)


@dataclass
class SearchConfig:
    """What a search optimises and where it measures (stored with the study)."""

    objectives: tuple[str, ...] = ("accuracy", "latency_ms")
    sampler: str = "nsga2"
    population: int = 10  # NSGA-II's generation size: with Optuna's 50, a 100-trial search is
    # two generations, no better than random search (benchmarks/RESULTS.md, bench_search)
    seed: int = 0
    device: str = "cpu"
    latency_batch: int = 1
    latency_repeats: int = 10
    max_batches: int | None = None  # accuracy on the first N validation batches (None: all)
    max_latency_ms: float | None = None
    min_accuracy: float | None = None
    max_macs: float | None = None
    latency: str = "measured"  # or "predicted": from the latency table, re-measured on the front
    threads: int | None = None  # CPU threads latency is measured with (None: this process's)

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
        if self.population < 2:
            raise VitParetoError(f"--population must be at least 2, got {self.population}")
        if self.latency not in ("measured", "predicted"):
            raise VitParetoError(
                f"unknown latency source {self.latency!r}; choose measured or predicted"
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
        if path.is_file() and path.stat().st_size and not _has_optuna_tables(path):
            raise VitParetoError(
                f"storage {url!r}: {str(path)!r} is an SQLite database of another program "
                "(no Optuna tables); give another path"
            )
        if not create and not path.stat().st_size:
            raise VitParetoError(f"storage {url!r}: {str(path)!r} is empty; no studies in it")
        path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=3 * HEARTBEAT_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=2
                ),
            )
        except sqlalchemy.exc.IntegrityError:
            # processes started together on a new database race to create its tables;
            # the loser finds them made on its next try
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
        except ImportError as e:
            hint = "pip install 'vitpareto[postgres]'" if url.startswith("postgres") else str(e)
            raise VitParetoError(f"storage {url!r} needs a database driver: {hint}") from None
        except (sqlalchemy.exc.SQLAlchemyError, ValueError, RuntimeError) as e:
            raise VitParetoError(
                f"storage {url!r} cannot be opened as a results database: {e}"
            ) from None


def _has_optuna_tables(path: Path) -> bool:
    """Whether an SQLite file holds an Optuna storage (checked read-only)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError:
        return False
    return {"studies", "alembic_version"} <= names


def _sampler(config: SearchConfig, space, worker: int = 0, salt: int = 0):
    """Optuna's sampler; NSGA-II and TPE read the constraints each trial sets. Each
    worker draws its own random stream (one seed would make them suggest the same), and so
    does a process joining a study that has trials (``salt``: their count)."""
    import optuna

    seed = config.seed + 1000 * worker + 7919 * salt
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=config.population, seed=seed)
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler(space.params(), seed=seed)


def study_attrs(supernet, config: SearchConfig) -> dict[str, Any]:
    """What a study records about itself (and checks when resumed)."""
    from vitpareto.evaluators import analytic_macs, count_params, device_fingerprint
    from vitpareto.spaces import Candidate

    spec = supernet.elastic.spec
    full = supernet.elastic.extract(Candidate.full(spec))
    return {
        "model": {"name": supernet.model_name, "kwargs": supernet.model_kwargs},
        "dataset": supernet.data["spec"],
        "classes": list(supernet.data["classes"]),
        "supernet_path": str(Path(supernet.path).resolve()) if supernet.path else None,
        "supernet_sha256": supernet.sha256,
        "space": supernet.space.to_dict(),
        "objectives": list(config.objectives),
        "target": device_fingerprint(config.device),
        "config": asdict(config),
        "full": {"macs": int(analytic_macs(spec)), "params": count_params(full)},
    }


def open_study(storage_url: str, name: str, supernet, config: SearchConfig, worker: int = 0):
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
    if name.endswith("/front"):
        raise VitParetoError(
            "study names ending in /front hold a search's second stage; use another --study"
        )
    if existing is not None:
        got = existing.user_attrs
        for key in ("supernet_sha256", "space", "objectives"):
            if got.get(key) != attrs[key]:
                raise VitParetoError(
                    f"study {name!r} in {storage_url} was searched with another {key.replace('_', ' ')} "
                    f"({str(got.get(key))[:70]}); use another --study to search this one"
                )
        was = got.get("config") or {}
        for key in SETTINGS:
            if key in was and was[key] != attrs["config"][key]:
                raise VitParetoError(
                    f"study {name!r} was searched with {key} {was[key]!r}, not "
                    f"{attrs['config'][key]!r}: its trials would not compare; give the same "
                    "settings to resume it, or use another --study"
                )
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=directions,
        sampler=_sampler(config, supernet.space, worker, len(existing.trials) if existing else 0),
        load_if_exists=True,
    )
    if existing is None:
        for k, v in attrs.items():
            study.set_user_attr(k, v)
    return study


def evaluators(supernet, config: SearchConfig, lock: str | None = None, latency=None) -> list:
    """Cost, accuracy on the shared weights, and latency (``latency``, by default
    ``latency_evaluator``'s)."""
    from vitpareto.evaluators import AccuracyEvaluator, CostEvaluator

    data = supernet.load_data(batch_size=128)  # the split the supernet was trained with
    acc = AccuracyEvaluator(
        data.val, device=config.device, max_batches=config.max_batches, progress=False
    )
    return [CostEvaluator(), acc, latency or latency_evaluator(supernet, config, lock)]


def score_candidate(evs: list, elastic, candidate) -> dict[str, Any]:
    """A candidate's metrics from each evaluator in turn, with the seconds each took."""
    metrics: dict[str, Any] = {}
    seconds = {}
    for ev in evs:
        start = time.perf_counter()
        metrics.update(ev(elastic, candidate, metrics))
        seconds[ev.name] = time.perf_counter() - start
    metrics["stage_seconds"] = seconds
    return metrics


def measured_latency(config: SearchConfig):
    """Latency measured for real, as the study measures it (device, batch, repeats, threads)."""
    from vitpareto.evaluators import LatencyEvaluator

    return LatencyEvaluator(
        device=config.device,
        batch_size=config.latency_batch,
        repeats=config.latency_repeats,
        threads=config.threads,
    )


def latency_evaluator(supernet, config: SearchConfig, lock: str | None = None):
    """Latency measured with the study's threads, or read from the latency table built with
    them; ``lock`` serialises measurements across processes on one machine."""
    from vitpareto.evaluators import LatencyPredictor, PredictedLatencyEvaluator

    if config.latency == "predicted":
        with _threads(config.threads):  # the table is keyed by the threads it was timed with
            table = LatencyPredictor.cached(
                supernet.elastic, supernet.space, config.device, config.latency_batch
            )
        return PredictedLatencyEvaluator(table)
    latency = measured_latency(config)
    return _Locked(latency, lock) if lock else latency


@contextlib.contextmanager
def _threads(n: int | None):
    """Torch's CPU threads set to ``n`` (when given) inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Locked:
    """An evaluator run under an exclusive file lock: one measurement at a time on a machine."""

    def __init__(self, evaluator, path: str):
        self.evaluator, self.path, self.name = evaluator, path, evaluator.name

    def __call__(self, elastic, candidate, context=None):
        import fcntl

        with open(self.path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            return self.evaluator(elastic, candidate, context)


def record(trial, candidate, metrics: dict[str, Any], config: SearchConfig, fidelity: str):
    """Store a trial's candidate, metrics, fidelity and constraints; return its values."""
    trial.set_user_attr("candidate", candidate.to_dict())
    trial.set_user_attr("fidelity", fidelity)
    for k, v in metrics.items():
        trial.set_user_attr(k, json.loads(json.dumps(v, default=float)))
    for key, value in config.violations(metrics).items():
        trial.set_constraint(key, float(value))
    return tuple(float(metrics[o]) for o in config.objectives)


def optimize(study, supernet, trials: int, config: SearchConfig, evs: list, callbacks=()):
    """Run trials on this process, scored by ``evs``, until ``trials`` are complete."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    elastic = supernet.elastic.eval()

    def objective(trial):
        _claim(study, trial, trials)
        trial.set_user_attr("worker", WORKER)
        candidate = supernet.space.suggest(trial)
        _unique(study, trial)
        metrics = score_candidate(evs, elastic, candidate)
        _unique(study, trial)  # a twin may have been suggested while this one was scored
        return record(trial, candidate, metrics, config, "shared")

    while True:  # trials that stood down (or were cut off) leave the count short: go on
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if done >= trials:
            return
        study.optimize(
            objective,
            n_trials=trials - done,
            callbacks=[MaxTrialsCallback(trials, states=(TrialState.COMPLETE,)), *callbacks],
            gc_after_trial=False,
        )


def _claim(study, trial, trials: int) -> None:
    """Go on only if this trial is needed to reach ``trials``: wait while trials started
    earlier (by other workers) could complete the count, and stand down (pruned, so never
    counted) once they have. Without it, workers finishing together overshoot the count."""
    import optuna
    from optuna.trial import TrialState

    # a trial that never sends a heartbeat (started by hand with study.ask(), or killed
    # before its first beat) is never failed by Optuna: stop waiting for it after this long
    deadline = time.monotonic() + 4 * HEARTBEAT_S
    while True:
        ts = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        complete = sum(t.state == TrialState.COMPLETE for t in ts)
        ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in ts)
        if complete >= trials:
            raise optuna.TrialPruned(f"the study already has its {trials} trials")
        if complete + ahead < trials or time.monotonic() > deadline:
            return
        time.sleep(0.5)
        optuna.storages.fail_stale_trials(study)  # a crashed worker's trial stops blocking


def _unique(study, trial) -> None:
    """Stand down (pruned, never counted) when another process working on this study now
    holds the same candidate in an earlier trial: concurrent searches (``--jobs``, several
    machines on one PostgreSQL study) then never count one candidate twice. Repeats within
    one process, and of trials from before it started, are the sampler's own business."""
    import optuna
    from optuna.trial import TrialState

    mine = trial.params
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)):
        if t.number >= trial.number or t.params != mine:
            continue
        other = t.user_attrs.get("worker")
        since = t.state == TrialState.RUNNING or t.datetime_complete.timestamp() >= STARTED - 1
        if other and other != WORKER and since:
            raise optuna.TrialPruned(f"trial {t.number} of {other} has this candidate")


def search(
    supernet,
    storage_url: str,
    name: str,
    trials: int,
    config: SearchConfig,
    progress: bool = True,
    jobs: int = 1,
):
    """Run (or resume) a search until ``trials`` trials are complete; return the study.

    ``jobs`` > 1 runs that many worker processes on this machine against the same study
    (accuracy in parallel, latency measured one candidate at a time); they need the
    supernet as a file (``supernet.path``).
    """
    from vitpareto.search._progress import SearchProgress

    if trials < 1:
        raise VitParetoError(f"--trials must be at least 1, got {trials}")
    if jobs < 1:
        raise VitParetoError(f"--jobs must be at least 1, got {jobs}")
    if config.threads is None:
        import torch

        config = replace(config, threads=torch.get_num_threads())
    study = open_study(storage_url, name, supernet, config)
    evs = evaluators(supernet, config) if jobs == 1 else [latency_evaluator(supernet, config)]
    full = dict(study.user_attrs.get("full") or {})
    if "latency_ms" not in full:  # the hypervolume's reference, fixed for the whole study
        from vitpareto.spaces import Candidate

        full["latency_ms"] = evs[-1](
            supernet.elastic.eval(), Candidate.full(supernet.elastic.spec)
        )["latency_ms"]
        study.set_user_attr("full", full)
    with SearchProgress(study, trials, config.objectives, enabled=progress) as bar:
        if jobs == 1:
            optimize(study, supernet, trials, config, evs, callbacks=[bar.callback])
        else:
            _parallel(supernet, storage_url, name, trials, config, jobs, bar)
    return study


def _parallel(supernet, storage_url, name, trials, config, jobs, bar):
    """``jobs`` worker processes on one study; the torch threads are split between them."""
    import multiprocessing as mp
    import os
    import tempfile

    if getattr(supernet, "path", None) is None:
        raise VitParetoError("--jobs needs the supernet as a checkpoint file")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    lock = os.path.join(
        tempfile.gettempdir(), f"vitpareto-{os.getuid()}-latency-{config.device}.lock"
    )
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker,
            args=(str(supernet.path), storage_url, name, trials, config, threads, lock, i),
        )
        for i in range(jobs)
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=1.0 / len(procs))
            bar.refresh()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise VitParetoError(f"{len(failed)} of {jobs} search workers failed (exit {failed})")


def _worker(path, storage_url, name, trials, config, threads, lock, index):
    import optuna
    import torch

    from vitpareto.search._checkpoint import load_supernet

    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    supernet = load_supernet(path)
    study = open_study(storage_url, name, supernet, config, worker=index + 1)
    try:
        optimize(study, supernet, trials, config, evaluators(supernet, config, lock))
    except KeyboardInterrupt:
        sys.exit(130)
