"""The early-exit policy, applied offline to every exit's logits (for accuracy and cost)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def exit_assignment(
    exit_logits: list[torch.Tensor], threshold: float | Sequence[float]
) -> torch.Tensor:
    """Index of the route each sample leaves by: the first (cascade stage or exit) whose
    softmax confidence reaches its threshold (one for all, or one per route); the last
    entry (the final head) takes every sample left.

    Same rule as ``CompressedViT.forward_dynamic``, without running the model again.
    """
    *exits, final = exit_logits
    ts = list(threshold) if isinstance(threshold, Sequence) else [threshold] * len(exits)
    where = torch.full((final.shape[0],), len(exits), dtype=torch.long, device=final.device)
    undecided = torch.ones_like(where, dtype=torch.bool)
    for e, (logits, t) in enumerate(zip(exits, ts, strict=True)):
        leave = undecided & (logits.softmax(-1).amax(-1) >= t)
        where[leave] = e
        undecided &= ~leave
    return where
