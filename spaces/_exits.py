"""The early-exit policy, applied offline to every exit's logits (for accuracy and cost)."""

from __future__ import annotations

import torch


def exit_assignment(exit_logits: list[torch.Tensor], threshold: float) -> torch.Tensor:
    """Index of the exit each sample leaves at: the first exit whose softmax confidence
    reaches ``threshold``; the last entry (the final head) takes every sample left.

    Same rule as ``CompressedViT.forward_dynamic``, without running the model again.
    """
    *exits, final = exit_logits
    where = torch.full((final.shape[0],), len(exits), dtype=torch.long, device=final.device)
    undecided = torch.ones_like(where, dtype=torch.bool)
    for e, logits in enumerate(exits):
        leave = undecided & (logits.softmax(-1).amax(-1) >= threshold)
        where[leave] = e
        undecided &= ~leave
    return where
