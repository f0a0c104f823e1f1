"""Where trials run: one interface, three implementations.

``LocalBackend`` scores trials in this process; ``ProcessBackend`` in N worker processes
on this machine (accuracy in parallel, latency one candidate at a time under a file lock);
``RayBackend`` on a Ray cluster. A backend only says where things run: the trial loop, the
scorer, the reference latency and the study are the same for all of them.
"""

from __future__ import annotations

import abc
from dataclasses import replace
from typing import Any

import torch

from vitpareto.evaluators import Evaluator, check_runtime, device_fingerprint, resolve_device
from vitpareto.search.explore._config import SearchConfig
from vitpareto.search.explore._front import LocalFrontScorer
from vitpareto.search.explore._scoring import (
    local_latency,
    measured_latency,
    validation_images,
)


class Backend(abc.ABC):
    """Runs a study's trials somewhere; see the module docstring."""

    name: str = "?"

    def prepare(self, supernet, config: SearchConfig) -> SearchConfig:
        """Check, before any work, that the search can run here; return the config with
        what this backend decides filled in (the threads latency is measured with)."""
        resolve_device(config.device)
        resolve_device(config.accuracy_device)
        check_runtime(config.runtime, config.device)
        if config.threads is None:
            config = replace(config, threads=torch.get_num_threads())
        return config

    def target(self, config: SearchConfig) -> Any:
        """The fingerprint of the device latency is measured on (a study attribute)."""
        return device_fingerprint(config.device)

    def study_attrs(self) -> dict[str, Any]:
        """What a new study records about where it runs, besides its target."""
        return {}

    def latency(self, supernet, config: SearchConfig) -> Evaluator:
        """The study's latency evaluator, as the driver uses it (the reference latency)."""
        return local_latency(supernet, config)

    def measured(self, supernet, config: SearchConfig) -> Evaluator:
        """Latency measured for real on the target (the front's second stage)."""
        data = supernet.load_data(batch_size=128)
        return measured_latency(config, validation_images(data, config))

    @abc.abstractmethod
    def run(self, study, storage, supernet, trials: int, config: SearchConfig, bar) -> None:
        """Score trials until ``study`` has ``trials`` complete ones."""

    def front_scorer(self, supernet, config: SearchConfig, recipe, retime: bool = False):
        """What re-scores the front's trials (``rescore_front``); ``retime``: every
        latency timed again, as ``config`` says, not only the predicted ones."""
        latency = self.measured(supernet, config)
        return LocalFrontScorer(supernet, config, recipe, latency, retime)
