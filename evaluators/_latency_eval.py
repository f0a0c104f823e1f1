"""The latency evaluator: a candidate timed as it ships, on the target hardware."""

from __future__ import annotations

from typing import Any

import torch

from vitpareto.errors import VitParetoError
from vitpareto.evaluators._base import Evaluator
from vitpareto.evaluators._deployed import time_deployed
from vitpareto.evaluators._runtime import check_runtime, prepare
from vitpareto.evaluators._timing import resolve_device
from vitpareto.spaces import Candidate, ElasticViT


class LatencyEvaluator(Evaluator):
    """Milliseconds per batch of a candidate on ``device`` under ``runtime``, in the form
    ``vitpareto export`` writes for that runtime, interleaved with the full model in the
    same form (see ``time_deployed``).

    A candidate with early exits is timed as its exit policy on ``images`` (real
    validation images) where the runtime runs that graph (``latency_method`` ``dynamic``);
    else each exit's path is timed and weighted by the exit distribution the accuracy
    evaluator measured (``context['exit_fraction']``; ``derived``).
    """

    name = "latency"
    keys = (
        "latency_ms",
        "latency_iqr_ms",
        "latency_count",
        "reference_ms",
        "speedup",
        "latency_flagged",
        "latency_attempts",
        "latency_method",
        "artifact_seconds",
        "exit_latency_ms",
        "runtime",
        "batch_size",
        "device_fingerprint",
    )

    def __init__(
        self,
        device: str = "cpu",
        batch_size: int = 1,
        threads: int | None = None,
        runtime: str = "eager",
        repeats: int = 30,
        warmup: int = 5,
        max_rel_iqr: float = 0.10,
        max_attempts: int = 3,
        images: torch.Tensor | None = None,
    ):
        if batch_size < 1:
            raise VitParetoError(f"batch size must be at least 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise VitParetoError(f"threads must be at least 1, got {threads}")
        self.device = resolve_device(device)
        check_runtime(runtime, self.device)
        self.batch_size, self.threads, self.runtime = batch_size, threads, runtime
        self.images = images
        self.settings = dict(
            repeats=repeats, warmup=warmup, max_rel_iqr=max_rel_iqr, max_attempts=max_attempts
        )
        self._reference: tuple[int, Any] | None = None

    def _input(self, elastic: ElasticViT) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.batch_size, *elastic.spec.image_shape, generator=g)
        return x.to(self.device)

    def _reference_fn(self, elastic: ElasticViT, x: torch.Tensor):
        # built once per supernet: a compiled reference stays compiled (each model compiled
        # has a forward of its own, see ``prepare``), so a trial compiles its candidate only.
        # Under CUDA graphs every trial starts afresh: dynamo's reset is what frees the
        # graph trees of the trials before, which would otherwise grow for the whole search
        if self.runtime == "cudagraphs":
            torch._dynamo.reset()
        if (
            self._reference is None
            or self._reference[0] != id(elastic)
            or self.runtime == "cudagraphs"
        ):
            full = elastic.extract(Candidate.full(elastic.spec)).to(self.device)
            self._reference = (id(elastic), prepare(full, x, self.runtime))
        return self._reference[1]

    def evaluate(
        self, elastic: ElasticViT, candidate: Candidate, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self.measure(elastic, elastic.extract(candidate), context)

    def measure(self, elastic: ElasticViT, model, context: dict[str, Any] | None = None):
        """The metrics of ``model`` (a ``CompressedViT`` cut from ``elastic``, fine-tuned
        or not), against ``elastic``'s full model."""
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            x = self._input(elastic)
            return time_deployed(
                model.eval().to(self.device),
                self._reference_fn(elastic, x),
                x,
                self.runtime,
                self.settings,
                self.images,
                (context or {}).get("exit_fraction"),
            )
        finally:
            torch.set_num_threads(before)  # the threads are the measurement's, not the caller's
