"""Latency measured on the target hardware, robust to a noisy shared machine.

The candidate is always timed interleaved with a reference (the uncompressed model), so
a speedup ratio stands beside the milliseconds and load drift cancels out of it. A
measurement whose spread is too wide is repeated, up to a bound, and flagged if it stays
wide. Every result records the device fingerprint it was measured on.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from vitpareto.errors import VitParetoError
from vitpareto.evaluators._timing import _timer, speedup, summarize, time_interleaved


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


def expected_latency(segments: list[float], fractions: list[float] | None) -> float:
    """Milliseconds of a multi-exit model, each exit's prefix time weighted by the share of
    samples leaving there (the last segment: the whole model); no shares: all run to the end."""
    fractions = fractions or [0.0] * (len(segments) - 1) + [1.0]
    if len(fractions) != len(segments):
        raise VitParetoError(
            f"exit_fraction has {len(fractions)} entries, expected {len(segments)}"
        )
    return sum(f * t for f, t in zip(fractions, segments, strict=True))


@torch.inference_mode()
def dynamic_latency(
    model, images: torch.Tensor, warmup: int = 3, repeats: int = 3
) -> tuple[float, list[float]]:
    """Real multi-exit inference at batch 1: milliseconds per image averaged over ``images``
    and the fraction of them leaving at each exit (then the final head).

    The check on the expected latency the evaluator derives from segment timings. Each image
    is timed ``repeats`` times (whole passes, in turn) and its median kept, so that a stall
    of a shared machine weighs no more than it does in the evaluator's medians."""

    timer = _timer(images.device)
    for i in range(min(warmup, len(images))):
        model.forward_dynamic(images[i : i + 1])
    times = [[] for _ in range(len(images))]
    counts = [0] * (model.routes + 1)
    for r in range(max(1, repeats)):
        for i in range(len(images)):
            out: dict = {}
            image = images[i : i + 1]
            times[i].append(
                timer(lambda o=out, x=image: o.update(where=model.forward_dynamic(x)[1]))
            )
            if r == 0:
                counts[int(out["where"][0])] += 1
    per_image = [statistics.median(t) for t in times]
    return sum(per_image) / len(images), [c / len(images) for c in counts]
