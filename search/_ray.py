"""Distributed search on Ray Tune: the same study, in the same Optuna storage, run by a cluster.

The driver holds the sampler (Ray Tune's ``OptunaSearch`` on the study itself, so query,
export and report read it unchanged) and does every database write; trials run as Tune
trials anywhere in the cluster and send their metrics back with their result. The supernet
reaches the nodes through Ray's object store (written once per node to its temporary
directory). With ``target``, latency is measured in a Ray task that needs the custom
resource ``target:NAME``: only nodes started with ``ray start --resources
'{"target:NAME": 1}'`` measure, one model at a time each, while accuracy runs elsewhere.
The driver sends a heartbeat for each running trial, so the trials of a killed driver are
failed and retried when the study is resumed; a trial on a node that dies is retried by
Tune on another node.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from vitpareto.spaces import Candidate, VitParetoError

PREFIX = "target:"
_CACHE: dict[Any, Any] = {}  # per worker process: supernets, evaluators, front scorers


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` ('auto', HOST:PORT), or start Ray on this machine."""
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise VitParetoError(
            "--backend ray needs Ray Tune; install it with pip install 'vitpareto[ray]'"
        ) from None
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise VitParetoError(
            f"no Ray cluster at {address!r} ({str(e).splitlines()[0]}); start one with "
            "`ray start --head`, or leave out --address to run Ray on this machine"
        ) from None


# -- the target device -------------------------------------------------------------------------
def target_nodes(name: str) -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get(PREFIX + name, 0) > 0]


def wait_for_target(name: str, wait_s: float, say=print) -> list[dict]:
    """The live nodes holding ``target:NAME``; waits ``wait_s`` seconds for one, then stops:
    latency is never measured on other hardware."""
    import ray

    nodes = target_nodes(name)
    if nodes:
        return nodes
    address = ray.get_runtime_context().gcs_address
    how = (
        f"start one on the target device with `ray start --address {address} "
        f"--resources '{{\"{PREFIX}{name}\": 1}}'`"
    )
    if wait_s > 0:
        say(f"waiting up to {wait_s:g} s for a node holding {PREFIX}{name} ({how})")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            time.sleep(1.0)
            if nodes := target_nodes(name):
                return nodes
    raise VitParetoError(
        f"no node of the Ray cluster holds the resource '{PREFIX}{name}', and latency is "
        f"only measured on the target; {how}, or pass --wait-for-target SECONDS"
    )


def _comparable(fp: dict) -> dict:
    """A fingerprint without what differs between identical devices (node, threads)."""
    return {k: v for k, v in fp.items() if k not in ("node", "threads")}


def check_fingerprints(name: str, device: str, nodes: list[dict], say=print) -> list[dict]:
    """Each target node's device fingerprint; nodes of one target that differ are reported
    (their latencies would not compare)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = [
        _fingerprint_task()
        .options(
            resources={PREFIX + name: 1},
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
        )
        .remote(device)
        for n in nodes
    ]
    fps = ray.get(refs)
    kinds = {json.dumps(_comparable(f), sort_keys=True) for f in fps}
    if len(kinds) > 1:
        say(
            f"warning: the {len(fps)} nodes holding {PREFIX}{name} are not the same device; "
            "their latencies will not compare (give each kind of device its own target name):"
        )
        for f in fps:
            say(
                f"  node {f['node'][:12]}: "
                + ", ".join(f"{k} {v}" for k, v in _comparable(f).items())
            )
    return fps


@functools.cache
def _fingerprint_task():
    import ray

    @ray.remote(num_cpus=0)
    def fingerprint(device):
        from vitpareto.evaluators import device_fingerprint

        return {"node": ray.get_runtime_context().get_node_id(), **device_fingerprint(device)}

    return fingerprint


@functools.cache
def _measure_task():
    import ray

    @ray.remote(num_cpus=0, max_retries=3)
    def measure(holder, candidate, config, table=False, context=None):
        """Latency of one candidate (or the latency table) measured on this node."""
        from vitpareto.evaluators import LatencyPredictor
        from vitpareto.search._study import SearchConfig, measured_latency

        net = _supernet(holder)
        config = SearchConfig(**config)
        if table:
            return LatencyPredictor.cached(
                net.elastic, net.space, config.device, config.latency_batch
            )
        cand = Candidate.from_dict(candidate)
        metrics = measured_latency(config)(net.elastic.eval(), cand, context or {})
        metrics["latency_node"] = ray.get_runtime_context().get_node_id()
        return metrics

    return measure


@functools.cache
def _score_task():
    import ray

    @ray.remote(max_retries=2)
    def rescore(holder, attrs, steps, recipe, config, here):
        """One front trial fine-tuned and scored on this worker (``LocalScorer.score``)."""
        from vitpareto.search._finetune import FinetuneConfig
        from vitpareto.search._front import LocalScorer
        from vitpareto.search._study import SearchConfig

        key = ("front", holder["sha256"], json.dumps([recipe, config, here], sort_keys=True))
        if key not in _CACHE:
            recipe, config = FinetuneConfig(**recipe), SearchConfig(**config)
            _CACHE[key] = LocalScorer(_supernet(holder), config, recipe, measure=here)
        return _CACHE[key].score(attrs, steps)

    return rescore


class RayScorer:
    """The front's second stage spread over a Ray cluster: one task per trial (fine-tuning
    and accuracy, with ``cpus``/``gpus`` each), latency re-measured on the target."""

    def __init__(self, supernet, config, recipe, target=None, cpus=1.0, gpus=0.0, address=None):
        connect(address)
        self.config, self.recipe, self.target = config, recipe, target
        self.resources = {"num_cpus": cpus, "num_gpus": gpus}
        self.holder = _holder(supernet)
        self.spec = supernet.elastic.spec

    def _measure(self, candidate: dict, context=None) -> dict:
        import ray

        where = {"resources": {PREFIX + self.target: 1}} if self.target else self.resources
        task = _measure_task().options(**where)
        return ray.get(task.remote(self.holder, candidate, asdict(self.config), context=context))

    def full_latency(self) -> float:
        return self._measure(Candidate.full(self.spec).to_dict())["latency_ms"]

    def __call__(self, todo, steps):
        import ray

        from vitpareto.search._front import remeasured

        task = _score_task().options(**self.resources)
        args = (steps, asdict(self.recipe), asdict(self.config), self.target is None)
        pending = {task.remote(self.holder, dict(t.user_attrs), *args): t for t in todo}
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            t = pending.pop(ready)
            metrics, blob = ray.get(ready)
            if self.target and t.user_attrs.get("latency_predicted"):
                remeasured(metrics, self._measure(t.user_attrs["candidate"], metrics))
            yield t, metrics, blob


def _holder(supernet) -> dict:
    """What workers need to load the supernet: its bytes in the object store, its hash, and
    the directory its dataset path is relative to."""
    import ray

    ref = ray.put(Path(supernet.path).read_bytes())
    return {"ref": ref, "sha256": supernet.sha256, "cwd": os.getcwd()}


# -- on the workers ----------------------------------------------------------------------------
def _supernet(holder: dict):
    """The supernet of ``holder`` (an object-store reference and its SHA-256), loaded once
    per process and written once per node."""
    import ray

    from vitpareto.search._checkpoint import load_supernet

    sha = holder["sha256"]
    if sha not in _CACHE:
        path = Path(tempfile.gettempdir()) / "vitpareto-ray" / f"{sha}.pt"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(ray.get(holder["ref"]))
            tmp.replace(path)
        net = load_supernet(path)
        kind, _, where = net.data["spec"].partition(":")
        if where and not Path(where).is_absolute():
            # a dataset path relative to where the search was started (Tune moves each
            # trial into a directory of its own)
            net.data["spec"] = f"{kind}:{Path(holder['cwd']) / where}"
        _CACHE[sha] = net
    return _CACHE[sha]


class _OnTarget:
    """Latency measured in a Ray task on a node holding ``target:NAME``, one model at a
    time there (the node holds one unit)."""

    name = "latency"

    def __init__(self, holder: dict, target: str, config: dict):
        self.holder, self.config = holder, config
        # outside the trial's placement group: the target is another node's resource
        self.task = _measure_task().options(
            resources={PREFIX + target: 1}, scheduling_strategy="DEFAULT"
        )

    def __call__(self, elastic, candidate, context=None):
        import ray

        return ray.get(self.task.remote(self.holder, candidate.to_dict(), self.config))


def _evaluators(net, ctx: dict) -> list:
    """The search's evaluators, made once per worker process: latency here (on the trial's
    own CPUs), from the latency table, or on the target."""
    from vitpareto.evaluators import PredictedLatencyEvaluator
    from vitpareto.search._study import SearchConfig, evaluators

    key = ("evs", net.sha256, json.dumps([ctx["config"], ctx["target"]], sort_keys=True))
    if key not in _CACHE:
        latency = None
        if ctx["table"] is not None:
            latency = PredictedLatencyEvaluator(ctx["table"])
        elif ctx["target"]:
            latency = _OnTarget(ctx["holder"], ctx["target"], ctx["config"])
        _CACHE[key] = evaluators(net, SearchConfig(**ctx["config"]), latency=latency)
    return _CACHE[key]


def _trial(params: dict, ctx: dict) -> None:
    """One Tune trial: decode the candidate, score it, report objectives and metrics."""
    import ray
    from ray import tune

    from vitpareto.search._study import score_candidate

    net = _supernet(ctx["holder"])
    metrics = score_candidate(_evaluators(net, ctx), net.elastic.eval(), net.space.decode(params))
    metrics["trial_node"] = ray.get_runtime_context().get_node_id()
    report = {o: float(metrics[o]) for o in ctx["config"]["objectives"]}
    tune.report({**report, "vitpareto": json.dumps(metrics, default=float)})


# -- on the driver -----------------------------------------------------------------------------
def _searcher(study, storage, config, space, on_done):
    """Ray Tune's OptunaSearch on the study itself; each result's metrics are stored on its
    trial as the local backend stores them, before the values are told."""
    from ray.tune.search.optuna import OptunaSearch

    from vitpareto.search._study import DIRECTIONS, WORKER, _sampler, record

    class Search(OptunaSearch):
        def on_trial_complete(self, trial_id, result=None, error=False):
            ot = self._ot_trials.get(trial_id)
            if ot is not None and result and not error and "vitpareto" in result:
                metrics = json.loads(result["vitpareto"])
                ot.set_user_attr("worker", WORKER)
                record(ot, space.decode(ot.params), metrics, config, "shared")
            super().on_trial_complete(trial_id, result, error)
            on_done()

        def save(self, checkpoint_path):
            """Nothing to save: the study in the results database is the searcher's state."""

        def live(self) -> list[int]:
            return [
                t._trial_id for k, t in self._ot_trials.items() if k not in self._completed_trials
            ]

    def define(trial):
        space.suggest(trial)  # the parameters; the trial decodes them into its candidate

    modes = ["max" if DIRECTIONS[o] == "maximize" else "min" for o in config.objectives]
    return Search(
        space=define,
        metric=list(config.objectives),
        mode=modes,
        sampler=_sampler(config, space, salt=len(study.trials)),
        study_name=study.study_name,
        storage=storage,
    )


class _Heartbeat(threading.Thread):
    """Beats for the driver's running trials: when the driver dies they go stale, and the
    next run fails and retries them (Optuna's heartbeat, as for the local backend)."""

    def __init__(self, storage, interval: float):
        super().__init__(daemon=True)
        self.storage, self.interval, self.searcher = storage, interval, None
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(self.interval):
            for trial_id in self.searcher.live() if self.searcher else ():
                with contextlib.suppress(Exception):  # a missed beat is sent next interval
                    self.storage.record_heartbeat(trial_id)


def ray_search(
    supernet,
    storage_url: str,
    name: str,
    trials: int,
    config,
    address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    target: str | None = None,
    wait_target: float = 0,
    progress: bool = True,
    say=None,
):
    """Run (or resume) a search on a Ray cluster until ``trials`` trials are complete."""
    import optuna
    import ray
    from optuna.trial import TrialState
    from ray import tune

    from vitpareto.evaluators import PredictedLatencyEvaluator
    from vitpareto.search._progress import SearchProgress
    from vitpareto.search._study import HEARTBEAT_S, open_study

    say = say or (lambda m: print(m, file=sys.stderr))
    # the driver asks and tells (no Study.optimize), and beats for its trials itself
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if trials < 1:
        raise VitParetoError(f"--trials must be at least 1, got {trials}")
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise VitParetoError("--cpus-per-trial must be above 0 and --gpus-per-trial 0 or more")
    if supernet.path is None:
        raise VitParetoError("--backend ray needs the supernet as a checkpoint file")
    connect(address)
    if config.threads is None and target is None:  # a trial times on the CPUs it holds
        config = replace(config, threads=max(1, int(cpus_per_trial)))
    fps = None
    if target:
        nodes = wait_for_target(target, wait_target, say)
        fps = check_fingerprints(target, config.device, nodes, say)
    study = open_study(storage_url, name, supernet, config)
    if target and "target_name" not in study.user_attrs:
        study.set_user_attr("target_name", target)
        study.set_user_attr("target", _comparable(fps[0]))
    holder = _holder(supernet)
    measure = _measure_task().options(
        resources={PREFIX + target: 1} if target else {}, num_cpus=0 if target else cpus_per_trial
    )
    table = None
    if config.latency == "predicted":
        table = ray.get(measure.remote(holder, {}, asdict(config), table=True))
    full = dict(study.user_attrs.get("full") or {})
    if "latency_ms" not in full:  # the hypervolume's reference, in the trials' own units
        whole = Candidate.full(supernet.elastic.spec)
        if table is not None:
            full["latency_ms"] = PredictedLatencyEvaluator(table)(supernet.elastic, whole)[
                "latency_ms"
            ]
        else:
            got = ray.get(measure.remote(holder, whole.to_dict(), asdict(config)))
            full["latency_ms"] = got["latency_ms"]
        study.set_user_attr("full", full)
    storage = study._storage
    ctx = {"holder": holder, "config": asdict(config), "target": target, "table": table}
    resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(_trial, ctx=ctx), resources)
    beat = _Heartbeat(storage, HEARTBEAT_S)
    beat.start()
    try:
        with SearchProgress(study, trials, config.objectives, enabled=progress) as bar:
            while True:
                optuna.storages.fail_stale_trials(study)  # a killed driver's trials: retried
                done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
                if done >= trials:
                    break
                searcher = _searcher(study, storage, config, supernet.space, bar.refresh)
                beat.searcher = searcher
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        search_alg=searcher, num_samples=trials - done, reuse_actors=True
                    ),
                    run_config=tune.RunConfig(
                        name=f"vitpareto-{os.getpid()}-{int(time.time())}",
                        storage_path=str(Path(tempfile.gettempdir()) / "vitpareto-ray-runs"),
                        verbose=0,
                        failure_config=tune.FailureConfig(max_failures=2),
                    ),
                )
                grid = tuner.fit()
                after = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
                if after == done and grid.errors:  # nothing completes: a fault, not bad luck
                    raise VitParetoError(
                        f"every trial of this round failed on the cluster; the first: "
                        f"{str(grid.errors[0]).strip().splitlines()[-1]}"
                    )
    finally:
        beat.stop.set()
    return study
