"""Ray, for the Ray backend (``_raybackend``): connecting, the target nodes, and what runs
on the workers (the supernet from the object store, latency tasks, one Tune trial).

The Ray backend runs the same trial loop, with its trials as Ray Tune trials on a cluster.

The driver holds the study and its sampler: a Tune ``Searcher`` of our own hands Tune each
trial the loop starts (``TrialLoop.start``) and stores each result (``TrialLoop.finish``),
so every database write is the driver's and the local and Ray backends record trials
alike. Trials run anywhere in the cluster on ``cpus_per_trial`` / ``gpus_per_trial``; the
supernet reaches the nodes through Ray's object store (written once per node). With
``target``, latency is measured in a Ray task that needs the custom resource
``target:NAME``: only nodes started with ``ray start --resources '{"target:NAME": 1}'``
measure, one model at a time each, while accuracy runs elsewhere. This is the only module
that imports Ray (``ray_module``), and only when a Ray backend is used.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from vitpareto.errors import VitParetoError
from vitpareto.evaluators import (
    Evaluator,
    PredictedLatencyEvaluator,
    check_runtime,
    device_fingerprint,
)
from vitpareto.files import atomic_write
from vitpareto.search.explore._config import SearchConfig
from vitpareto.search.explore._front import LocalFrontScorer
from vitpareto.search.explore._scoring import (
    latency_table,
    make_scorer,
    measured_latency,
    validation_images,
)
from vitpareto.search.supernet import FinetuneConfig, load_supernet
from vitpareto.spaces import Candidate

PREFIX = "target:"
CONNECT_TIMEOUT_S = 10
_CACHE: dict[Any, Any] = {}  # per worker process: supernets, scorers, front scorers
NODE_DIR = Path(tempfile.gettempdir()) / "vitpareto-ray"  # per node: supernets, latency tables


def ray_module():
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise VitParetoError(
            "--backend ray needs Ray Tune; install it with pip install 'vitpareto[ray]'"
        ) from None
    return ray


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` ('auto', HOST:PORT), or start Ray on this machine;
    an address nothing answers at is refused within ``CONNECT_TIMEOUT_S``."""
    ray = ray_module()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment tables on stdout
    if ray.is_initialized():
        return
    if address and address != "auto":
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), CONNECT_TIMEOUT_S).close()
        except (OSError, ValueError) as e:
            raise VitParetoError(
                f"no Ray cluster answers at {address!r} ({getattr(e, 'strerror', None) or e}); "
                "start one with `ray start --head`, or leave out --address to run Ray here"
            ) from None
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise VitParetoError(
            f"no Ray cluster at {address!r} ({str(e).splitlines()[0]}); start one with "
            "`ray start --head`, or leave out --address to run Ray on this machine"
        ) from None


def tune_space(space) -> dict[str, Any]:
    """A bound ``JointSpace`` as a Ray Tune param space (``tune.choice`` per parameter),
    for driving Tune with a searcher of one's own; ``space.decode(config)`` reads it back."""
    tune = ray_module().tune
    return {name: tune.choice(list(choices)) for name, choices in space.params().items()}


# -- the target device -------------------------------------------------------------------------
def target_nodes(name: str) -> list[dict]:
    return [
        n for n in ray_module().nodes() if n["Alive"] and n["Resources"].get(PREFIX + name, 0) > 0
    ]


def wait_for_target(name: str, wait_s: float, say=print) -> list[dict]:
    """The live nodes holding ``target:NAME``; waits ``wait_s`` seconds for one, then stops:
    latency is never measured on other hardware."""
    ray = ray_module()
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


def comparable(fp: dict) -> dict:
    """A fingerprint without what differs between identical devices (node, threads)."""
    return {k: v for k, v in fp.items() if k not in ("node", "threads")}


def check_fingerprints(
    name: str, device: str, nodes: list[dict], say=print, runtime: str = "eager"
) -> list[dict]:
    """Each target node's device fingerprint; nodes of one target that differ are reported
    (their latencies would not compare)."""
    ray = ray_module()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = [
        tasks()["fingerprint"]
        .options(
            resources={PREFIX + name: 1},
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
        )
        .remote(device, runtime)
        for n in nodes
    ]
    try:
        fps = ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(e.cause, VitParetoError) else str(e).splitlines()[-1]
        raise VitParetoError(f"the target {name!r} cannot measure on {device!r}: {cause}") from None
    kinds = {json.dumps(comparable(f), sort_keys=True) for f in fps}
    if len(kinds) > 1:
        say(
            f"warning: the {len(fps)} nodes holding {PREFIX}{name} are not the same device; "
            "their latencies will not compare (give each kind of device its own target name):"
        )
        for f in fps:
            say(
                f"  node {f['node'][:12]}: "
                + ", ".join(f"{k} {v}" for k, v in comparable(f).items())
            )
    return fps


# -- tasks and trials on the workers -----------------------------------------------------------
@functools.cache
def tasks() -> dict:
    """The remote functions, defined once Ray is imported."""
    ray = ray_module()

    @ray.remote(num_cpus=0)
    def fingerprint(device, runtime="eager"):
        check_runtime(runtime, device)  # the target has the runtime's package and device
        return {"node": ray.get_runtime_context().get_node_id(), **device_fingerprint(device)}

    @ray.remote(num_cpus=0, max_retries=3)
    def measure(holder, candidate, config, table=False, context=None):
        """Latency of one candidate (or the latency table) measured on this node."""
        net, config = _supernet(holder), SearchConfig(**config)
        if table:
            return latency_table(net, config, str(NODE_DIR / "latency"))
        images = validation_images(net.load_data(batch_size=128), config)
        metrics = measured_latency(config, images)(
            net.elastic.eval(), Candidate.from_dict(candidate), context or {}
        )
        metrics["latency_node"] = ray.get_runtime_context().get_node_id()
        return metrics

    @ray.remote(max_retries=2)
    def rescore(holder, attrs, steps, recipe, config):
        """One front trial fine-tuned and scored on this worker (``LocalFrontScorer``)."""
        key = ("front", holder["sha256"], json.dumps([recipe, config], sort_keys=True))
        if key not in _CACHE:
            _CACHE[key] = LocalFrontScorer(
                _supernet(holder), SearchConfig(**config), FinetuneConfig(**recipe)
            )
        return _CACHE[key].score(attrs, steps)

    return {"fingerprint": fingerprint, "measure": measure, "rescore": rescore}


def holder(supernet) -> dict:
    """What workers need to load the supernet: its bytes in the object store, its hash, and
    the directory its dataset path is relative to."""
    ref = ray_module().put(Path(supernet.path).read_bytes())
    return {"ref": ref, "sha256": supernet.sha256, "cwd": os.getcwd()}


def _supernet(holder: dict):
    """The supernet of ``holder``, loaded once per process and written once per node."""
    sha = holder["sha256"]
    if sha not in _CACHE:
        path = NODE_DIR / f"{sha}.pt"
        if not path.is_file():
            atomic_write(path, ray_module().get(holder["ref"]))
        net = load_supernet(path)
        kind, _, where = net.data["spec"].partition(":")
        if where and not Path(where).is_absolute():
            # a dataset path relative to where the search was started (Tune moves each
            # trial into a directory of its own)
            net.data["spec"] = f"{kind}:{Path(holder['cwd']) / where}"
        _CACHE[sha] = net
    return _CACHE[sha]


class OnNode(Evaluator):
    """Latency measured in a Ray task: on a node holding ``target:NAME`` (one model at a time
    there), or, without a target, on any node with the trial's CPUs and GPUs."""

    name = "latency"
    keys = ()

    def __init__(self, holder: dict, config: dict, target: str | None, resources: dict):
        self.holder, self.config = holder, config
        # outside the trial's placement group: the target is another node's resource
        where = {"resources": {PREFIX + target: 1}} if target else resources
        self.task = tasks()["measure"].options(**where, scheduling_strategy="DEFAULT")

    def evaluate(self, elastic, candidate, context=None):
        ref = self.task.remote(self.holder, candidate.to_dict(), self.config, context=context)
        return ray_module().get(ref)


def trial(params: dict, ctx: dict) -> None:
    """One Tune trial: score the candidate the driver started, report its metrics."""
    ray = ray_module()
    from ray import tune

    net = _supernet(ctx["holder"])
    key = ("scorer", net.sha256, json.dumps(ctx["config"], sort_keys=True), ctx["target"])
    if key not in _CACHE:  # made once per worker process
        config = SearchConfig(**ctx["config"])
        if ctx["table"] is not None:
            latency = PredictedLatencyEvaluator(ctx["table"])
        elif ctx["target"]:
            latency = OnNode(ctx["holder"], ctx["config"], ctx["target"], {})
        else:  # on this trial's own CPUs
            latency = measured_latency(config, validation_images(net.load_data(128), config))
        _CACHE[key] = make_scorer(net, config, latency)
    metrics = _CACHE[key](net.elastic.eval(), Candidate.from_dict(params["candidate"]))
    metrics["trial_node"] = ray.get_runtime_context().get_node_id()
    tune.report({"vitpareto": json.dumps(metrics, default=float)})
