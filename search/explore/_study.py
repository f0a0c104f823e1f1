"""One study per search: created once with what it searched, resumed only with the same.

The study records its model, dataset, supernet SHA-256, space, objectives, settings and
latency target in its user attributes, and names its objectives so that
optuna-dashboard and Optuna's plots label them. Exactly one process creates a study
(Optuna refuses a second ``create_study`` of one name); every other process that joins it,
at once or later, waits for the creator's settings and checks its own against them.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna

from vitpareto.errors import VitParetoError
from vitpareto.evaluators import analytic_macs, check_precision, count_params
from vitpareto.search.explore._config import DIRECTIONS, SETTINGS, SearchConfig
from vitpareto.search.explore._predictive import PredictorSampler
from vitpareto.search.explore._storage import check_study_name, open_storage
from vitpareto.search.explore.internals import storage_of
from vitpareto.spaces import Candidate

# this process, as recorded by each trial it runs: concurrent searches on one study (other
# processes, other machines) tell their trials apart by it
WORKER = f"{socket.gethostname()}:{os.getpid()}"
SUFFIX = "/front"  # the study of a search's second stage is NAME/front
_REQUIRED = ("objectives", "supernet_sha256", "space", "config")  # "config" is written last
PER_TRIAL = "per trial"  # a study's target when each trial's node timed its own candidate


def study_attrs(supernet, config: SearchConfig, target: Any) -> dict[str, Any]:
    """What a study records about itself (and checks when resumed)."""
    spec = supernet.elastic.spec
    full = supernet.elastic.extract(Candidate.full(spec))
    return {
        "model": {"name": supernet.model_name, "kwargs": supernet.model_kwargs},
        "dataset": supernet.data["spec"],
        "classes": list(supernet.data["classes"]),
        "supernet_path": str(Path(supernet.path).resolve()) if supernet.path else None,
        "supernet_sha256": supernet.sha256,
        "importance": supernet.importance,
        "space": supernet.space.to_dict(),
        "objectives": list(config.objectives),
        "target": target,
        "full": {"macs": int(analytic_macs(spec)), "params": count_params(full)},
        "config": asdict(config),
    }


GRID_LIMIT = 1_000_000  # combinations Optuna's grid sampler holds in memory at once


def make_sampler(config: SearchConfig, space, seed: int):
    """The study's sampler; each reads the constraints every trial sets."""
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=config.population, seed=seed)
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if config.sampler == "gp":  # Gaussian processes, expected hypervolume improvement
        return optuna.samplers.GPSampler(seed=seed)
    if config.sampler == "predictor":
        return PredictorSampler(space, config, seed=seed)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    check_sampler(config, space)
    return optuna.samplers.GridSampler(space.params(), seed=seed)


def check_sampler(config: SearchConfig, space) -> None:
    """Refuse, before a study is opened, a grid the machine could not hold."""
    if config.sampler == "grid" and space.size() > GRID_LIMIT:
        raise VitParetoError(
            f"--sampler grid enumerates every parameter combination, and this space has "
            f"{space.size():,} (at most {GRID_LIMIT:,}): narrow the space or choose another "
            "sampler"
        )


def searched_space(space, config: SearchConfig):
    """The supernet's space with the search's precisions as a knob (they need no
    training: they are applied to the exported graph); a space that declares its own is
    checked against the runtime."""
    if config.precision != ("fp32",):
        return dataclasses.replace(space, precision=config.precision)
    if space.precision is not None:
        check_precision(space.precision, config.runtime, config.device)
    return space


def sampler_seed(config: SearchConfig, created: bool, worker: int, trials: int) -> int:
    """The study's own seed for the process that created it; for every other process (a
    worker, a second machine, a resumed run) a seed of its own from the start, so that no
    two draw the same candidates."""
    if created and worker == 0:
        return config.seed
    return zlib.crc32(f"{config.seed}|{WORKER}|{worker}|{trials}".encode()) % (2**31)


def open_study(
    storage_url: str,
    name: str,
    supernet,
    config: SearchConfig,
    target: Any = None,
    worker: int = 0,
    extra: dict[str, Any] | None = None,
):
    """Create the study, or join it after checking it searches the same supernet, space and
    settings; returns ``(study, storage)``. ``extra``: more attributes for a new study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_study_name(name)
    supernet.space = searched_space(supernet.space, config)
    check_sampler(config, supernet.space)
    if name.endswith(SUFFIX):
        raise VitParetoError(
            f"study names ending in {SUFFIX} hold a search's second stage; use another --study"
        )
    storage = open_storage(storage_url)
    attrs = {**(extra or {}), **study_attrs(supernet, config, target)}  # "config" last
    directions = [DIRECTIONS[o] for o in config.objectives]
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=directions)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        created = False
    if created:
        study.set_metric_names(list(config.objectives))
        for k, v in attrs.items():  # "config" last: the others wait for it
            study.set_user_attr(k, v)
    else:
        _check_same(study, storage_url, name, attrs)
    n = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(config, supernet.space, sampler_seed(config, created, worker, n))
    return study, storage


def _check_same(study, storage_url: str, name: str, attrs: dict[str, Any]) -> None:
    """Refuse to join a study that searched another supernet, space or settings."""
    deadline = time.monotonic() + 30
    got = study.user_attrs
    while not all(k in got for k in _REQUIRED) and time.monotonic() < deadline:
        if "supernet_sha256" not in got and study.trials:
            break  # trials and no settings: not a study this program made
        time.sleep(0.5)  # its creator is writing its settings
        got = study.user_attrs
    if not all(k in got for k in _REQUIRED):
        raise VitParetoError(
            f"study {name!r} in {storage_url} was not made by a vitpareto search (no settings "
            "stored); use another --study"
        )
    for key in ("supernet_sha256", "space", "objectives"):
        if got.get(key) != attrs[key]:
            raise VitParetoError(
                f"study {name!r} in {storage_url} was searched with another "
                f"{key.replace('_', ' ')} ({str(got.get(key))[:70]}); use another --study "
                "to search this one"
            )
    was, now = got["config"], attrs["config"]
    for key in SETTINGS:
        if key in was and was[key] != now[key]:
            raise VitParetoError(
                f"study {name!r} was searched with {key} {was[key]!r}, not {now[key]!r}: its "
                "trials would not compare; give the same settings to resume it, or use "
                "another --study"
            )
    if not study.metric_names:  # studies made before the names were set
        study.set_metric_names(list(got["objectives"]))


def objectives_of(study) -> list[str]:
    """The objective names a study was created with."""
    return (
        study.user_attrs.get("objectives")
        or study.metric_names
        or [f"value{i}" for i in range(len(study.directions))]
    )


def front_study(study):
    """The ``NAME/front`` study beside ``study`` (its second stage), or None."""
    try:
        return optuna.load_study(study_name=study.study_name + SUFFIX, storage=storage_of(study))
    except KeyError:
        return None
