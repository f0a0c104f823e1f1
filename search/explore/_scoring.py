"""Scoring a candidate: the evaluators by name, the full model's reference latency, and the
one way a trial's metrics become stored attributes.

A ``Scorer`` runs named evaluators in a fixed order (cost, accuracy, then latency, which
reads the measured exit distribution) and records the seconds each took. Every backend
builds its scorer with ``make_scorer``, giving only where latency is measured: here
(measured or from the latency table), under a lock shared by this machine's workers, or
in a Ray task on the target node.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Mapping
from typing import Any

import torch

from vitpareto.bounds import use_threads
from vitpareto.evaluators import (
    AccuracyEvaluator,
    CostEvaluator,
    Evaluator,
    LatencyEvaluator,
    LatencyPredictor,
    PredictedLatencyEvaluator,
    calibration_images,
    first_images,
)
from vitpareto.search.explore._config import SearchConfig
from vitpareto.spaces import Candidate

ORDER = ("cost", "accuracy", "latency")  # latency reads the accuracy's exit distribution
TABLES = "results/latency"  # where latency tables are kept, relative to the search's directory


class Scorer:
    """Evaluators looked up by name, run in ``ORDER`` (then any others, sorted)."""

    def __init__(self, evaluators: Mapping[str, Evaluator]):
        self.evaluators = dict(evaluators)
        rest = sorted(set(self.evaluators) - set(ORDER))
        self.order = [n for n in ORDER if n in self.evaluators] + rest

    def __getitem__(self, name: str) -> Evaluator:
        return self.evaluators[name]

    def __call__(self, elastic, candidate: Candidate) -> dict[str, Any]:
        """A candidate's metrics from every evaluator, with the seconds each took."""
        metrics: dict[str, Any] = {}
        seconds = {}
        for name in self.order:
            start = time.perf_counter()
            metrics.update(self.evaluators[name](elastic, candidate, metrics))
            seconds[name] = time.perf_counter() - start
        if "artifact_seconds" in metrics:  # building the runtime's artifact: its own stage
            seconds["artifact"] = metrics["artifact_seconds"]
            seconds["latency"] -= metrics["artifact_seconds"]
        metrics["stage_seconds"] = seconds
        return metrics


def make_scorer(
    supernet, config: SearchConfig, latency: Evaluator, device: str | None = None, data=None
):
    """Cost, accuracy on the shared weights (on ``device``, by default the config's
    accuracy device, over the split the supernet was trained with) and ``latency``."""
    data = data or supernet.load_data(batch_size=128)
    acc = AccuracyEvaluator(
        data.val,
        device=device or config.accuracy_device,
        max_batches=config.max_batches,
        progress=False,
        calibration=calibration_images(data.train) if "int8-static" in config.precision else None,
    )
    return Scorer({"cost": CostEvaluator(), "accuracy": acc, "latency": latency})


def measured_latency(config: SearchConfig, images=None) -> LatencyEvaluator:
    """Latency measured for real, as the study measures it (device, batch, repeats, threads,
    runtime); ``images``: real validation images, on which an exit policy is timed."""
    return LatencyEvaluator(
        device=config.device,
        batch_size=config.latency_batch,
        repeats=config.latency_repeats,
        threads=config.threads,
        runtime=config.runtime,
        images=images,
    )


def validation_images(data, config: SearchConfig):
    """The validation images an exit policy is timed on in this search."""
    return first_images(data.val, config.latency_batch)


def latency_table(supernet, config: SearchConfig, tables: str = TABLES) -> LatencyPredictor:
    """The latency table of this device, model, batch and space, timed with the study's
    threads (it is keyed by them), built here once and reused."""
    with threads(config.threads):
        return LatencyPredictor.cached(
            supernet.elastic, supernet.space, config.device, config.latency_batch, tables
        )


def local_latency(
    supernet, config: SearchConfig, lock: str | None = None, images=None
) -> Evaluator:
    """The study's latency evaluator in this process: read from the latency table, or
    measured (under ``lock``, an exclusive file lock, when workers share the machine)."""
    if config.latency == "predicted":
        return PredictedLatencyEvaluator(latency_table(supernet, config))
    latency = measured_latency(config, images)
    return Locked(latency, lock) if lock else latency


def table_of(latency: Evaluator) -> LatencyPredictor | None:
    """The latency table behind a study's latency evaluator, where latency is predicted."""
    return getattr(latency, "predictor", None)


def reference_latency(latency: Evaluator, elastic) -> float:
    """The full model's latency as ``latency`` gives it: the hypervolume's reference."""
    return float(latency(elastic.eval(), Candidate.full(elastic.spec))["latency_ms"])


def full_accuracy(supernet, config: SearchConfig) -> float:
    """The full model's accuracy, measured as every trial's is (the same split, batches and
    device, on this process's CPU where that device is not here): the full model is a
    point of every front, and a trial it dominates is left off."""
    device = config.accuracy_device
    if device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"  # a Ray driver without the trials' GPU; accuracy is the same
    data = supernet.load_data(batch_size=128)  # the split every trial is scored on
    acc = AccuracyEvaluator(data.val, device=device, max_batches=config.max_batches, progress=False)
    elastic = supernet.elastic.eval()
    return float(acc(elastic, Candidate.full(elastic.spec))["accuracy"])


@contextlib.contextmanager
def threads(n: int | None):
    """Torch's CPU threads set to ``n`` (when given) inside the block, restored after."""
    before = torch.get_num_threads()
    use_threads(n or None, "the study's threads")
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Locked(Evaluator):
    """An evaluator run under an exclusive file lock: one measurement at a time on a machine."""

    def __init__(self, evaluator: Evaluator, path: str):
        self.evaluator, self.path = evaluator, path
        self.name, self.keys = evaluator.name, evaluator.keys

    def evaluate(self, elastic, candidate, context=None):
        with open(self.path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            return self.evaluator(elastic, candidate, context)


def jsonable(value: Any) -> Any:
    """``value`` as JSON would give it back (NumPy and torch scalars as floats)."""
    return json.loads(json.dumps(value, default=float))


def trial_attrs(candidate: Candidate, metrics: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A trial's user attributes: its candidate, every metric, and ``extra`` (fidelity,
    worker, ...), each JSON-ready: the one serialiser of the search and its second stage."""
    attrs = {k: jsonable(v) for k, v in metrics.items()}
    attrs.update({k: jsonable(v) for k, v in extra.items()})
    attrs["candidate"] = candidate.to_dict()
    return attrs


def candidate_key(candidate: Candidate) -> str:
    """Equal for equal candidates, whatever parameters decoded into them."""
    return json.dumps(candidate.to_dict(), sort_keys=True)
