"""Latency measured on the target hardware, robust to a noisy shared machine.

The candidate is always timed interleaved with a reference (the uncompressed model), so
a speedup ratio stands beside the milliseconds and load drift cancels out of it. A
measurement whose spread is too wide is repeated, up to a bound, and flagged if it stays
wide. Every result records the device fingerprint it was measured on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vitpareto.evaluators._base import Evaluator
from vitpareto.evaluators._runtime import prepare
from vitpareto.evaluators._timing import (
    _timer,
    device_fingerprint,
    resolve_device,
    speedup,
    summarize,
    time_interleaved,
)
from vitpareto.spaces import Candidate, ElasticViT, VitParetoError


@dataclass(frozen=True)
class Measurement:
    """One candidate against the reference: medians, spread, speedup and whether to trust it."""

    median_ms: float
    iqr_ms: float
    count: int
    reference_ms: float
    speedup: float
    attempts: int
    flagged: bool


def measure_pair(
    candidate_fn,
    reference_fn,
    x: torch.Tensor,
    repeats: int = 30,
    warmup: int = 5,
    max_rel_iqr: float = 0.10,
    max_attempts: int = 3,
    seed: int = 0,
) -> Measurement:
    """Time ``candidate_fn(x)`` interleaved with ``reference_fn(x)``.

    An attempt whose interquartile range exceeds ``max_rel_iqr`` of the median (for
    either model) is repeated, up to ``max_attempts``; the steadiest attempt is kept and
    ``flagged`` says whether even it stayed too wide.
    """
    if repeats < 2:
        raise VitParetoError(f"repeats must be at least 2 to state a spread, got {repeats}")
    best = None
    for attempt in range(1, max_attempts + 1):
        times = time_interleaved(
            {"candidate": candidate_fn, "reference": reference_fn},
            x,
            repeats=repeats,
            warmup=warmup if attempt == 1 else 1,
            seed=seed + attempt,
        )
        cand, ref = summarize(times["candidate"]), summarize(times["reference"])
        spread = max(cand.iqr_ms / cand.median_ms, ref.iqr_ms / ref.median_ms)
        result = (spread, cand, ref, speedup(times["reference"], times["candidate"]))
        if best is None or spread < best[0]:
            best = result
        if spread <= max_rel_iqr:
            break
    spread, cand, ref, ratio = best
    return Measurement(
        median_ms=cand.median_ms,
        iqr_ms=cand.iqr_ms,
        count=cand.count,
        reference_ms=ref.median_ms,
        speedup=ratio,
        attempts=attempt,
        flagged=spread > max_rel_iqr,
    )


class LatencyEvaluator(Evaluator):
    """Milliseconds per batch of a candidate on ``device`` under ``runtime``.

    For a candidate with early exits, ``latency_ms`` is the expected latency per batch
    under the exit policy: each segment (the blocks up to an exit and its head, or the
    whole model) is measured, and weighted by the exit distribution measured by the
    accuracy evaluator (``context['exit_fraction']``; without it, every sample is assumed
    to run to the end).
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
    ):
        if batch_size < 1:
            raise VitParetoError(f"batch size must be at least 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise VitParetoError(f"threads must be at least 1, got {threads}")
        self.device = resolve_device(device)
        self.batch_size, self.threads, self.runtime = batch_size, threads, runtime
        self.repeats, self.warmup = repeats, warmup
        self.max_rel_iqr, self.max_attempts = max_rel_iqr, max_attempts
        self._reference: tuple[int, Any] | None = None

    def _input(self, elastic: ElasticViT) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.batch_size, 3, *elastic.spec.img_size, generator=g)
        return x.to(self.device)

    def _reference_fn(self, elastic: ElasticViT, x: torch.Tensor):
        # a compiled reference is compiled again for each candidate (``prepare`` resets dynamo)
        if (
            self._reference is None
            or self._reference[0] != id(elastic)
            or self.runtime == "compile"
        ):
            full = elastic.extract(Candidate.full(elastic.spec)).to(self.device)
            self._reference = (id(elastic), prepare(full, x, self.runtime))
        return self._reference[1]

    def evaluate(
        self, elastic: ElasticViT, candidate: Candidate, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            return self._measure(elastic, candidate, context)
        finally:
            torch.set_num_threads(before)  # the threads are the measurement's, not the caller's

    def _measure(self, elastic, candidate, context):
        x = self._input(elastic)
        model = elastic.extract(candidate).eval().to(self.device)
        candidate_fn = prepare(model, x, self.runtime)
        reference = self._reference_fn(elastic, x)
        settings = dict(
            repeats=self.repeats,
            warmup=self.warmup,
            max_rel_iqr=self.max_rel_iqr,
            max_attempts=self.max_attempts,
        )
        main = measure_pair(candidate_fn, reference, x, **settings)
        out = {
            "latency_ms": main.median_ms,
            "latency_iqr_ms": main.iqr_ms,
            "latency_count": main.count,
            "reference_ms": main.reference_ms,
            "speedup": main.speedup,
            "latency_flagged": main.flagged,
            "latency_attempts": main.attempts,
            "exit_latency_ms": None,
            "runtime": self.runtime,
            "batch_size": self.batch_size,
            "device_fingerprint": device_fingerprint(self.device),
        }
        if candidate.exits:
            segments = [
                measure_pair(
                    prepare(_ExitPrefix(model, j), x, self.runtime), reference, x, **settings
                )
                for j in range(len(candidate.exits))
            ]
            seg_ms = [m.median_ms for m in segments] + [main.median_ms]
            expected = expected_latency(seg_ms, (context or {}).get("exit_fraction"))
            out["exit_latency_ms"] = seg_ms
            out["latency_ms"] = expected
            out["speedup"] = main.reference_ms / expected
            out["latency_flagged"] = main.flagged or any(m.flagged for m in segments)
        return out


def expected_latency(segments: list[float], fractions: list[float] | None) -> float:
    """Milliseconds of a multi-exit model, each exit's prefix time weighted by the share of
    samples leaving there (the last segment: the whole model); no shares: all run to the end."""
    fractions = fractions or [0.0] * (len(segments) - 1) + [1.0]
    if len(fractions) != len(segments):
        raise VitParetoError(
            f"exit_fraction has {len(fractions)} entries, expected {len(segments)}"
        )
    return sum(f * t for f, t in zip(fractions, segments, strict=True))


class _ExitPrefix(torch.nn.Module):
    """The part of a multi-exit model a sample leaving at exit ``index`` runs."""

    def __init__(self, model, index: int):
        super().__init__()
        self.model, self.index = model, index

    def forward(self, x):
        return self.model.forward_exit(x, self.index)


@torch.inference_mode()
def dynamic_latency(model, images: torch.Tensor, warmup: int = 3) -> tuple[float, list[float]]:
    """Real multi-exit inference at batch 1: mean milliseconds per image over ``images``
    and the fraction of them leaving at each exit (then the final head).

    The check on the expected latency the evaluator derives from segment timings."""

    timer = _timer(images.device)
    for i in range(min(warmup, len(images))):
        model.forward_dynamic(images[i : i + 1])
    total, counts = 0.0, [0] * (len(model.exit_heads) + 1)
    for i in range(len(images)):
        out: dict = {}
        image = images[i : i + 1]
        total += timer(lambda o=out, x=image: o.update(where=model.forward_dynamic(x)[1]))
        counts[int(out["where"][0])] += 1
    return total / len(images), [c / len(images) for c in counts]
