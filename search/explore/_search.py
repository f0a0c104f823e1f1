"""The two stages of a search, each one call whatever the backend: ``search`` (from the
study's creation to its last trial) and ``rescore_front`` (the front at a higher fidelity,
in the study ``NAME/front``: fine-tuned, its latency timed again at length)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState, create_trial
from tqdm import tqdm

from vitpareto.errors import VitParetoError
from vitpareto.search.explore._backend import Backend
from vitpareto.search.explore._config import SearchConfig
from vitpareto.search.explore._design import enqueue_design
from vitpareto.search.explore._front import store_weights
from vitpareto.search.explore._local import LocalBackend, ProcessBackend
from vitpareto.search.explore._pareto import front_trials, near_front
from vitpareto.search.explore._progress import SearchProgress
from vitpareto.search.explore._raybackend import RayBackend
from vitpareto.search.explore._scoring import (
    candidate_key,
    full_accuracy,
    reference_latency,
    trial_attrs,
)
from vitpareto.search.explore._storage import (
    check_study_name,
    load_study,
    open_storage,
    storage_errors,
)
from vitpareto.search.explore._study import SUFFIX, open_study
from vitpareto.search.supernet import FinetuneConfig
from vitpareto.spaces import Candidate


def search(
    supernet,
    storage_url: str,
    name: str,
    trials: int,
    config: SearchConfig | None = None,
    backend: Backend | str | None = None,
    progress: bool = True,
    jobs: int = 1,
):
    """Run (or resume) a search until study ``name`` has ``trials`` completed trials; return
    the study. ``backend``: a ``Backend``, or ``"local"`` (the default; ``jobs`` > 1 runs
    that many worker processes) or ``"ray"``."""
    config = config or SearchConfig()
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise VitParetoError(f"--trials must be at least 1, got {trials!r}")
    check_study_name(name)
    if backend is None or isinstance(backend, str):
        backend = make_backend(backend or "local", jobs=jobs)
    elif jobs != 1:
        raise VitParetoError("give jobs to the backend (ProcessBackend(jobs)), not to search")
    config = backend.prepare(supernet, config)
    with storage_errors(storage_url):
        study, storage = open_study(
            storage_url, name, supernet, config, backend.target(config), extra=backend.study_attrs()
        )
        full = dict(study.user_attrs.get("full") or {})
        if "latency_ms" not in full:  # the hypervolume's reference, fixed for the whole study
            latency = backend.latency(supernet, config)
            full["latency_ms"] = reference_latency(latency, supernet.elastic)
        if "accuracy" not in full:  # the full model: a point of every front
            full["accuracy"] = full_accuracy(supernet, config)
        if full != study.user_attrs.get("full"):
            study.set_user_attr("full", full)
        if not isinstance(backend, ProcessBackend):
            # a new study's first trials; not with worker processes, whose trial loops count
            # the running trials ahead of theirs by number, which a queued trial breaks
            enqueue_design(study, supernet.space, config, trials)
        with SearchProgress(study, trials, config.objectives, enabled=progress) as bar:
            backend.run(study, storage, supernet, trials, config, bar)
    return study


def make_backend(name: str = "local", jobs: int = 1, **ray_options) -> Backend:
    """The backend of that name: ``local`` (``jobs`` > 1: worker processes) or ``ray``
    (``ray_options``: address, cpus_per_trial, gpus_per_trial, target, wait_for_target)."""
    if name == "local":
        if ray_options:
            raise VitParetoError(
                f"{', '.join('--' + k.replace('_', '-') for k in ray_options)} need --backend ray"
            )
        return LocalBackend() if jobs == 1 else ProcessBackend(jobs)
    if name == "ray":
        if jobs != 1:
            raise VitParetoError(
                "--jobs is for the local backend; Ray runs trials as its CPUs allow"
            )
        return RayBackend(**ray_options)
    raise VitParetoError(f"unknown backend {name!r}; choose local or ray")


def default_artifacts(storage_url: str) -> Path:
    """Where fine-tuned weights go: beside an SQLite database, else ``results/artifacts``."""
    if storage_url.startswith("sqlite:///"):
        return Path(storage_url.removeprefix("sqlite:///")).parent / "artifacts"
    return Path("results/artifacts")


FRONT_ROUNDS = 100  # the command line's rounds for the front's timing: 10x the search's
NEAR = 0.15  # a trial this much slower than the front, by the search's timing, is timed too


def needed(config: SearchConfig, steps: int, rounds: int = 0) -> bool:
    """Whether the front has anything to gain from a second stage."""
    return steps > 0 or rounds > 0 or config.latency == "predicted"


def check_rounds(rounds) -> int:
    """The front's timing rounds: 0 (as the search timed it) or 3 to 100000."""
    if (
        isinstance(rounds, bool)
        or not isinstance(rounds, int)
        or not (rounds == 0 or 3 <= rounds <= 100_000)
    ):
        raise VitParetoError(
            f"--front-rounds must be 0 (keep the search's timing) or 3 to 100000 rounds, "
            f"got {rounds!r}"
        )
    return rounds


def rescore_front(
    supernet,
    storage_url: str,
    name: str,
    config: SearchConfig | None = None,
    steps: int = 0,
    artifacts: str | Path | None = None,
    progress: bool = True,
    lr: float | None = None,
    backend=None,
    rounds: int = 0,
):
    """Re-score the front of study ``name`` into ``name + '/front'``; return that study.

    ``rounds`` > 0 times every model of the stage again, that many rounds interleaved with
    the full model (the search's short timing picks its lucky trials onto the front), and
    takes in the trials within ``NEAR`` of the front by the search's latency; the front of
    ``name + '/front'`` is then chosen on the figures timed again, each trial's latency
    the full model's (timed at length once) over its speedup: the machine's drift from
    one trial to the next moves milliseconds, not speedups (``measured_latency_ms``
    keeps the trial's own). ``backend`` (a
    ``Backend``; by default this process) says where the work runs. Resumable: candidates
    already re-scored are skipped, so a cut-off stage (or a front that grew with more
    trials) is completed by running it again with the same settings.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise VitParetoError(f"--finetune-front must be 0 or more steps, got {steps!r}")
    rounds = check_rounds(rounds)
    with storage_errors(storage_url):
        return _rescore(
            supernet, storage_url, name, config, steps, artifacts, progress, lr, backend, rounds
        )


def _rescore(supernet, storage_url, name, config, steps, artifacts, progress, lr, backend, rounds):
    src = load_study(storage_url, name)
    dst, lr = _front_study(src, storage_url, name, steps, lr, rounds)
    stored = SearchConfig.from_dict(src.user_attrs.get("config") or {})
    config = replace(config or stored, threads=(config or stored).threads or stored.threads)
    if rounds:  # every model of the stage timed at length, the full model too
        config = replace(config, latency_repeats=rounds)
    recipe = FinetuneConfig(steps=max(steps, 1), seed=config.seed, lr=lr)
    backend = backend or LocalBackend()
    todo = _todo(src, dst, rounds)
    if not todo:
        return dst
    store_dir = (Path(artifacts) if artifacts else default_artifacts(storage_url)).resolve()
    scorer = backend.front_scorer(supernet, config, recipe, retime=rounds > 0)
    full = dict(dst.user_attrs.get("full") or {})
    if (stored.latency == "predicted" and not full.get("latency_measured")) or (
        rounds and full.get("latency_rounds") != rounds
    ):
        # the hypervolume's reference in the units of this study: the full model, timed
        full["latency_ms"] = reference_latency(scorer.latency, supernet.elastic)
        full["latency_measured"] = True
        full["latency_rounds"] = config.latency_repeats  # rounds, when timed again
        dst.set_user_attr("full", full)
    on_front = {t.number for t in front_trials(src)}
    bar = tqdm(
        total=len(todo),
        desc=f"front of {name}",
        unit="model",
        disable=None if progress else True,  # bars on a terminal only
        file=sys.stderr,
    )
    for t, metrics, blob in scorer(todo, steps):
        metrics.update(source_trial=t.number, shared_accuracy=t.user_attrs["accuracy"])
        if rounds:  # in the reference's milliseconds: drift between trials cancels out
            metrics.update(latency_rounds=rounds, search_front=t.number in on_front)
            metrics["measured_latency_ms"] = metrics["latency_ms"]
            metrics["latency_ms"] = full["latency_ms"] / metrics["speedup"]
        if blob is not None:
            metrics["weights_artifact"] = store_weights(store_dir, blob)
            metrics["artifacts"] = str(store_dir)
        _record(dst, t, metrics, list(src.user_attrs["objectives"]), config)
        bar.update()
        bar.set_postfix(trial=t.number, accuracy=f"{metrics['accuracy']:.3f}")
    bar.close()
    return dst


def _front_study(src, storage_url, name, steps, lr, rounds):
    """The front's study (created, or resumed when its settings are the ones asked for)
    and the learning rate it fine-tunes at; its settings are written once, marker last."""
    dst = optuna.create_study(
        study_name=name + SUFFIX,
        storage=open_storage(storage_url),
        directions=src.directions,
        load_if_exists=True,
    )
    done = dst.user_attrs
    if "finetune_steps" in done and done["finetune_steps"] != steps:
        raise VitParetoError(
            f"study {name + SUFFIX!r} was fine-tuned with {done['finetune_steps']} steps, not "
            f"{steps}; pass the same --finetune-front, or search another --study"
        )
    if lr is None:  # not given: the rate the stage began with, else the recipe's default
        lr = done.get("finetune_lr") or FinetuneConfig().lr
    elif done.get("finetune_lr") not in (None, lr):
        raise VitParetoError(
            f"study {name + SUFFIX!r} was fine-tuned with learning rate {done['finetune_lr']}, "
            f"not {lr}; pass the same --finetune-lr, or search another --study"
        )
    if "finetune_steps" in done and done.get("front_rounds", 0) != rounds:
        raise VitParetoError(
            f"study {name + SUFFIX!r} was timed at {done.get('front_rounds', 0)} rounds, not "
            f"{rounds}; pass the same --front-rounds, or search another --study"
        )
    if "finetune_steps" not in done:
        dst.set_metric_names(list(src.user_attrs.get("objectives") or src.metric_names))
        attrs = {
            **src.user_attrs,  # a search study's: never a front's "finetune_steps"
            "source_study": name,
            "finetune_lr": lr,
            "front_rounds": rounds,
            "latency_source": "measured",
            "finetune_steps": steps,  # last: the others wait for it, as a search's "config"
        }
        for k, v in attrs.items():  # a second process reads all of them or no marker
            dst.set_user_attr(k, v)
    return dst, lr


def _todo(src, dst, rounds) -> list:
    """The search's trials the stage still has to score: the front (with ``rounds``, every
    trial near it), each candidate once (samplers can suggest one candidate twice)."""
    seen = {
        candidate_key(Candidate.from_dict(t.user_attrs["candidate"]))
        for t in dst.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    todo = []
    for t in near_front(src, NEAR) if rounds else front_trials(src):
        key = candidate_key(Candidate.from_dict(t.user_attrs["candidate"]))
        if key not in seen:
            seen.add(key)
            todo.append(t)
    return todo


def _record(dst, t, metrics, objectives, config) -> None:
    """One re-scored trial of the search, stored in the front's study."""
    cand = Candidate.from_dict(t.user_attrs["candidate"])
    dst.add_trial(
        create_trial(
            params=t.params,
            distributions=t.distributions,
            values=[float(metrics[o]) for o in objectives],
            user_attrs=trial_attrs(cand, {k: v for k, v in metrics.items() if k != "candidate"}),
            constraints=config.violations(metrics) or None,
        )
    )
