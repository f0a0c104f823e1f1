"""The Ray backend on the driver: Tune runs the trial loop's trials on the cluster, and the
front's second stage runs as one Ray task per model (see ``_ray`` for the workers' side)."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import asdict, replace
from typing import Any

from vitpareto.errors import VitParetoError
from vitpareto.evaluators import Evaluator, PredictedLatencyEvaluator
from vitpareto.search.explore._backend import Backend
from vitpareto.search.explore._config import SearchConfig
from vitpareto.search.explore._front import remeasured
from vitpareto.search.explore._loop import TrialLoop
from vitpareto.search.explore._ray import (
    NODE_DIR,
    PREFIX,
    OnNode,
    check_fingerprints,
    comparable,
    connect,
    holder,
    ray_module,
    tasks,
    trial,
    wait_for_target,
)
from vitpareto.search.explore._study import PER_TRIAL
from vitpareto.spaces import Candidate


class RayBackend(Backend):
    """Trials on a Ray cluster (see the module docstring)."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        cpus_per_trial: float = 1,
        gpus_per_trial: float = 0,
        target: str | None = None,
        wait_for_target: float = 0,
        say=None,
    ):
        if not cpus_per_trial > 0 or not gpus_per_trial >= 0:
            raise VitParetoError("--cpus-per-trial must be above 0 and --gpus-per-trial 0 or more")
        if not wait_for_target >= 0:
            raise VitParetoError(
                f"--wait-for-target must be 0 or more seconds, got {wait_for_target}"
            )
        self.address, self.target_name = address, target
        self.cpus, self.gpus, self.wait = cpus_per_trial, gpus_per_trial, wait_for_target
        self.say = say or (lambda m: print(m, file=sys.stderr))
        self.fingerprint: dict | None = None
        self.holder: dict | None = None
        self.table = None

    def prepare(self, supernet, config: SearchConfig) -> SearchConfig:
        if getattr(supernet, "path", None) is None:
            raise VitParetoError("--backend ray needs the supernet as a checkpoint file")
        if self.target_name is None and config.device != "cpu" and self.gpus <= 0:
            raise VitParetoError(
                f"without --target, latency is measured on each trial's node: --device "
                f"{config.device} needs --gpus-per-trial 1 (or measure on a target node with "
                "--target NAME)"
            )
        if self.gpus > 0 and config.accuracy_device == "cpu":
            config = replace(config, accuracy_device="cuda")  # the trial holds a GPU: use it
        connect(self.address)
        if self.target_name:
            nodes = wait_for_target(self.target_name, self.wait, self.say)
            fps = check_fingerprints(
                self.target_name, config.device, nodes, self.say, config.runtime
            )
            self.fingerprint = comparable(fps[0])
            if config.threads is None:  # the target's own threads, recorded with the study
                config = replace(config, threads=fps[0]["threads"])
        elif config.threads is None:  # a trial times on the CPUs it holds
            config = replace(config, threads=max(1, int(self.cpus)))
        self.holder = holder(supernet)
        if config.latency == "predicted":  # built where latency is measured
            task = self._measure_task(config)
            self.table = ray_module().get(task.remote(self.holder, {}, asdict(config), table=True))
        return config

    def _measure_task(self, config):
        where = (
            {"resources": {PREFIX + self.target_name: 1}} if self.target_name else self._resources()
        )
        return tasks()["measure"].options(**where)

    def _resources(self) -> dict:
        return {"num_cpus": self.cpus, "num_gpus": self.gpus}

    def target(self, config: SearchConfig) -> Any:
        return self.fingerprint if self.target_name else PER_TRIAL

    def study_attrs(self) -> dict[str, Any]:
        return {"target_name": self.target_name} if self.target_name else {}

    def latency(self, supernet, config: SearchConfig) -> Evaluator:
        if self.table is not None:
            return PredictedLatencyEvaluator(self.table)
        return self.measured(supernet, config)

    def measured(self, supernet, config: SearchConfig) -> Evaluator:
        return OnNode(self.holder, asdict(config), self.target_name, self._resources())

    def run(self, study, storage, supernet, trials, config, bar) -> None:
        ray_module()
        from ray import tune

        loop = TrialLoop(study, storage, supernet.space, trials, config, self.table)
        ctx = {
            "holder": self.holder,
            "config": asdict(config),
            "target": self.target_name,
            "table": self.table,
        }
        resources = {"cpu": self.cpus, "gpu": self.gpus}
        trainable = tune.with_resources(tune.with_parameters(trial, ctx=ctx), resources)
        searcher = _searcher_class()(loop, bar.refresh)
        with loop.beat:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=f"vitpareto-{os.getpid()}-{int(time.time())}",
                    storage_path=str(NODE_DIR / "runs"),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=2),
                ),
            )
            grid = tuner.fit()
        if not loop.done():
            first = grid.errors[0] if grid.errors else "no trial completed"
            raise VitParetoError(
                f"the search stopped with {loop.completed()} of {trials} trials complete: "
                f"trials failed on the cluster; the first: {str(first).strip().splitlines()[-1]}"
            )

    def front_scorer(self, supernet, config, recipe, retime=False):
        if self.holder is None:  # the front of a search this process did not run
            config = self.prepare(supernet, config)
        return RayFrontScorer(self, supernet, config, recipe, retime)


@functools.cache
def _searcher_class():
    """The Tune searcher over the trial loop (defined once Ray is imported)."""
    from ray.tune.search import Searcher

    class LoopSearcher(Searcher):
        """``suggest`` starts a trial of the loop, a result finishes it. Tune pickles its
        searcher to resume; this one's state is the study in the database, so nothing of
        the loop (the study, the storage, their locks) is pickled."""

        def __init__(self, loop: TrialLoop, on_done, max_failures: int = 5):
            super().__init__()
            self.loop, self.on_done, self.max_failures = loop, on_done, max_failures
            self.live: dict[str, Any] = {}
            self.failures = 0

        def __getstate__(self):
            return {}

        def __setstate__(self, state):
            self.loop = None

        def suggest(self, trial_id: str):
            if self.failures >= self.max_failures:
                return Searcher.FINISHED  # every recent trial failed: a fault, not bad luck
            started = self.loop.start(wait=False)
            if started is None:
                return Searcher.FINISHED if self.loop.done() else None
            self.live[trial_id] = started
            return {"candidate": started.candidate.to_dict()}

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
            started = self.live.pop(trial_id, None)
            if started is None:
                return
            if error or not result or "vitpareto" not in result:
                self.loop.fail(started)
                self.failures += 1
                return
            self.loop.finish(started, json.loads(result["vitpareto"]))
            self.failures = 0
            self.on_done()

        def save(self, checkpoint_path: str):
            """Nothing to save: the study in the results database is the searcher's state."""

        def restore(self, checkpoint_path: str):
            """Nothing to restore: the trial loop reads the study."""

    return LoopSearcher


class RayFrontScorer:
    """The front's second stage spread over a Ray cluster: one task per trial (fine-tuning
    and accuracy, with the trial's CPUs and GPUs), latency re-measured on the target."""

    def __init__(self, backend: RayBackend, supernet, config: SearchConfig, recipe, retime):
        self.config, self.recipe, self.elastic = config, recipe, supernet.elastic
        self.latency, self.retime = backend.measured(supernet, config), retime
        self.holder, self.resources = backend.holder, backend._resources()

    def __call__(self, todo, steps):
        ray = ray_module()
        task = tasks()["rescore"].options(**self.resources)
        args = (steps, asdict(self.recipe), asdict(self.config))
        pending = {task.remote(self.holder, dict(t.user_attrs), *args): t for t in todo}
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            t = pending.pop(ready)
            metrics, blob = ray.get(ready)
            if self.retime or t.user_attrs.get("latency_predicted"):
                cand = Candidate.from_dict(t.user_attrs["candidate"])
                remeasured(metrics, self.latency(self.elastic, cand, metrics))
            yield t, metrics, blob
