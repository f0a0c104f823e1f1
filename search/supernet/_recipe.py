"""The optimisation recipe that supernet training and fine-tuning share: settings, losses,
the learning-rate schedule and the optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitpareto.errors import VitParetoError


@dataclass
class Recipe:
    """The optimisation settings that supernet training and fine-tuning share."""

    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    distill: float = 0.5  # students' and exits' loss: distill * KD + (1 - distill) * labels
    temperature: float = 1.0
    grad_clip: float = 1.0  # 0 turns clipping off
    seed: int = 0

    def _checks(self) -> dict[str, bool]:
        return {
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "min_lr": 0 <= self.min_lr <= self.lr,
            "weight_decay": self.weight_decay >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "distill": 0 <= self.distill <= 1,
            "temperature": self.temperature > 0,
            "grad_clip": self.grad_clip >= 0,
        }

    def __post_init__(self):
        wrong = [name for name, ok in self._checks().items() if not ok]
        if wrong:
            name = wrong[0]
            raise VitParetoError(
                f"training option {name} = {getattr(self, name)!r} is out of range (steps, "
                "epochs and batch_size >= 1; lr > 0; 0 <= min_lr <= lr; warm-up within the run; "
                "0 <= label_smoothing < 1; 0 <= distill <= 1; the rest >= 0)"
            )


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """KL divergence from the teacher's softened outputs, scaled by t^2 (Hinton et al.)."""
    return F.kl_div(
        F.log_softmax(student.float() / t, -1),
        F.softmax(teacher.float() / t, -1),
        reduction="batchmean",
    ) * (t * t)


def mixed_loss(
    outs: list[torch.Tensor],
    y: torch.Tensor,
    teacher: torch.Tensor | None,
    distill: float,
    temperature: float,
    label_smoothing: float,
) -> torch.Tensor:
    """Sum over ``outs`` of ``distill * KD + (1 - distill) * CE`` (CE alone without teacher)."""
    total = outs[0].new_zeros((), dtype=torch.float32)
    for o in outs:
        ce = F.cross_entropy(o.float(), y, label_smoothing=label_smoothing)
        if teacher is None:
            total = total + ce
        else:
            kd = distill_loss(o, teacher, temperature)
            total = total + distill * kd + (1 - distill) * ce
    return total


def lr_factor(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to ``min_lr``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))) / lr


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms, tokens and position embeddings."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (
                decay if p.ndim > 1 and "token" not in n and "pos_embed" not in n else no_decay
            ).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)
