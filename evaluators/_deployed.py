"""The latency of what ships: one timing function for the search, export and ``bench``.

A compressed model is timed in the form it is deployed in for a runtime (the same ONNX
graph, the same exported program), interleaved with the full model in the same runtime.
A model with early exits ships as its exit policy: where the runtime runs that graph
(eager, ONNX Runtime) it is timed as deployed, on real validation images (whose exits are
real) chosen so that their routes follow the shares measured on the whole validation set,
against the full model on the same images (``dynamic``). Elsewhere its latency is
derived: each exit's path (the blocks before it and every exit head a sample passes on
its way) is timed, and weighted by the shares of samples leaving there (``derived``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn as nn

from vitpareto.evaluators._latency import expected_latency, measure_pair
from vitpareto.evaluators._precision import head_images
from vitpareto.evaluators._runtime import DYNAMIC, deployed, prepare
from vitpareto.evaluators._timing import device_fingerprint

IMAGES_PER_ROUND = 16  # real images timed per round (at least one batch) for an exit policy
POOL = 4  # rounds' worth of validation images the timed ones are drawn from


class ExitPath(nn.Module):
    """What a sample leaving by route ``index`` runs: every cascade stage up to it, then
    the blocks before its exit and every exit head up to it (the earlier confidences are
    outputs, so no compiler drops them); ``index == routes`` the final head after them."""

    def __init__(self, model, index: int):
        super().__init__()
        self.model, self.index = model, index

    def forward(self, x):
        m, confidences = self.model, []
        stages = len(m.stages)
        for k in range(min(self.index + 1, stages)):
            out = m.stage(x, k)
            confidences.append(out.softmax(-1).amax(-1))
        if self.index < stages:
            return out, torch.stack(confidences)
        x = m._stem(m._in(x))
        start = 0
        exits = list(zip(m.exit_heads, m.exit_after, strict=True))[: self.index - stages + 1]
        for head, at in exits:
            for blk in m.vit.blocks[start:at]:
                x = blk(x)
            start = at
            out = m._out(head(x))
            confidences.append(out.softmax(-1).amax(-1))
        if self.index == m.routes:  # the final head, after every stage and exit
            out = m._out(m.vit.forward_head(m.vit.norm(m.vit.blocks[start:](x))))
        return out, torch.stack(confidences)


def round_images(batch: int) -> int:
    """Images in one timed round of an exit policy at batch size ``batch`` (whole batches)."""
    return batch * max(1, math.ceil(IMAGES_PER_ROUND / batch))


def first_images(loader, batch: int) -> torch.Tensor:
    """The first validation images of ``loader`` an exit policy's timed images are drawn
    from at batch size ``batch`` (``representative``): the same pool for every candidate,
    the search, the export and ``bench``."""
    return head_images(loader, POOL * round_images(batch))


def apportion(fractions: list[float], n: int) -> list[int]:
    """``n`` split into whole counts in proportion to ``fractions`` (largest remainders)."""
    total = sum(fractions) or 1.0
    exact = [f / total * n for f in fractions]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def representative(model, pool: torch.Tensor, fractions, n: int) -> torch.Tensor:
    """``n`` images of ``pool`` whose routes through ``model``'s exit policy follow
    ``fractions`` (the shares of the whole validation set leaving by each route), in pool
    order: timing the first ``n`` images instead makes the latency the share of those few
    that happen to leave early, not the share the accuracy was measured with. Without
    ``fractions`` (or a pool no larger than ``n``), the first ``n``; where the pool has too
    few images of a route, the next images in order fill the round."""
    if fractions is None or len(pool) <= n:
        return pool[:n]
    with torch.no_grad():
        where = model.eval().forward_dynamic(pool)[1].cpu()
    picked: list[int] = []
    for route, count in enumerate(apportion(list(fractions), n)):
        picked += (where == route).nonzero().flatten()[:count].tolist()
    taken = set(picked)
    picked += [i for i in range(len(pool)) if i not in taken][: n - len(picked)]
    return pool[sorted(picked)]


def batches_of(images: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """``images`` cut into batches of ``batch`` (one round's worth, the last one full)."""
    rounds = max(1, math.ceil(IMAGES_PER_ROUND / batch))
    if len(images) < batch:
        raise ValueError(f"{len(images)} images are fewer than one batch of {batch}")
    n = min(rounds, len(images) // batch)
    return [images[i * batch : (i + 1) * batch] for i in range(n)]


def per_round(settings: dict[str, Any], batches: int) -> dict[str, Any]:
    """Timing settings for rounds of ``batches`` batches: about as many batches timed in
    all as a static measurement times (a round's sum is already an average), at least 5
    rounds, so an exit policy costs a trial no more than its static graph would."""
    return {
        **settings,
        "repeats": max(5, math.ceil(settings.get("repeats", 30) / batches)),
        "warmup": max(1, math.ceil(settings.get("warmup", 5) / batches)),
    }


def time_deployed(
    model,
    reference,
    x: torch.Tensor,
    runtime: str,
    settings: dict[str, Any],
    images: torch.Tensor | None = None,
    exit_fraction: list[float] | None = None,
    onnx: str | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` (a ``CompressedViT``) as deployed under ``runtime`` against
    ``reference`` (the full model, prepared for the runtime); ``x``: a batch of the study's
    size; ``images``: real images for an exit policy; ``settings``: ``measure_pair``'s;
    ``onnx``: the exported graph to time (ONNX Runtime; by default one exported now)."""
    start = time.perf_counter()
    exits = getattr(model, "routes", 0) > 0  # early exits or a cascade
    dynamic = exits and runtime in DYNAMIC and images is not None
    fn = prepare(
        deployed(model) if dynamic else model, x, runtime, onnx if dynamic or not exits else None
    )
    artifact = time.perf_counter() - start
    out: dict[str, Any] = {"exit_latency_ms": None, "latency_method": "static"}
    if dynamic:
        n = round_images(x.shape[0])
        chosen = representative(model, images.to(x.device), exit_fraction, n)
        rounds = batches_of(chosen, x.shape[0])
        main = measure_pair(
            lambda _: [fn(b) for b in rounds], lambda _: [reference(b) for b in rounds], x,
            **per_round(settings, len(rounds)),
        )  # fmt: skip
        scale = 1 / len(rounds)
        out["latency_method"] = "dynamic"
    else:
        main, scale = measure_pair(fn, reference, x, **settings), 1.0
    out.update(
        latency_ms=main.median_ms * scale,
        latency_iqr_ms=main.iqr_ms * scale,
        latency_count=main.count,
        reference_ms=main.reference_ms * scale,
        speedup=main.speedup,
        latency_flagged=main.flagged,
        latency_attempts=main.attempts,
        artifact_seconds=artifact,
        runtime=runtime,
        batch_size=x.shape[0],
        device_fingerprint=device_fingerprint(x.device),
    )
    if exits and not dynamic:
        paths = [
            measure_pair(prepare(ExitPath(model, j), x, runtime), reference, x, **settings)
            for j in range(model.routes)
        ]
        # a sample that reaches the final head ran every cascade stage first; without a
        # cascade the static pass already timed stands for it
        last = main
        if len(model.stages):
            final = prepare(ExitPath(model, model.routes), x, runtime)
            last = measure_pair(final, reference, x, **settings)
        paths.append(last)
        seg_ms = [m.median_ms for m in paths]
        expected = expected_latency(seg_ms, exit_fraction)
        out.update(
            exit_latency_ms=seg_ms,
            latency_ms=expected,
            speedup=main.reference_ms / expected,
            latency_flagged=main.flagged or any(m.flagged for m in paths),
            latency_method="derived",
        )
    return out
