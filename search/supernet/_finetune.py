"""Fine-tuning one candidate: the higher fidelity of a search.

The candidate is cut out of the supernet as a standalone, physically smaller model and
trained for a fixed number of steps with the supernet's full model as a frozen teacher
(knowledge distillation, mixed with the labels as in supernet training; AttentionLite
distils while it prunes). Its early exits are distilled too. The result is scored on the
same validation set as the shared weights, so the two fidelities compare directly.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm import tqdm

from vitpareto.evaluators import (
    AccuracyEvaluator,
    calibration_images,
    count_params,
    resolve_device,
)
from vitpareto.search.supernet._checkpoint import Supernet
from vitpareto.search.supernet._recipe import Recipe, adamw, lr_factor, mixed_loss
from vitpareto.search.supernet._teacher import check_teacher, reload_teacher
from vitpareto.spaces import FLOATS, HALF, Candidate, CompressedViT


@dataclass
class FinetuneConfig(Recipe):
    """How a candidate is fine-tuned (stored with its metrics)."""

    steps: int = 200
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_fraction: float = 0.1
    distill: float = 0.7

    def _checks(self) -> dict[str, bool]:
        return {
            "steps": self.steps >= 1,
            **super()._checks(),
            "warmup_fraction": 0 <= self.warmup_fraction < 1,
        }


def train_compressed(
    model: CompressedViT,
    data,
    config: FinetuneConfig,
    teacher=None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> float:
    """Train a standalone compressed model for ``config.steps`` steps, every exit included:
    distilled from ``teacher(images) -> logits`` mixed with the labels, or on the labels
    alone without a teacher (stand-alone training). Returns the seconds spent."""

    c = config
    dev = resolve_device(str(device))
    model.to(dev).train()
    optimizer = adamw(model, c.lr, c.weight_decay)
    warmup = max(1, int(c.warmup_fraction * c.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, c.steps, warmup, c.lr, c.min_lr)
    )
    amp = dev.type == "cuda"
    torch.manual_seed(c.seed)
    gen = getattr(data.train, "generator", None)
    if gen is not None:
        gen.manual_seed(c.seed)
    batches = itertools.chain.from_iterable(itertools.repeat(data.train))
    bar = tqdm(
        range(c.steps),
        desc="train",
        disable=None if progress else True,
        file=sys.stderr,
        leave=False,
    )
    t0 = time.perf_counter()
    for _ in bar:
        x, y = next(batches)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            target = None
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(x)
            outs = model.forward_exits(x)
            loss = mixed_loss(outs, y, target, c.distill, c.temperature, c.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return time.perf_counter() - t0


@dataclass
class Finetuned:
    """A fine-tuned candidate: the standalone model and its metrics at both fidelities."""

    model: CompressedViT
    metrics: dict[str, Any]


def finetune(
    supernet: Supernet,
    candidate: Candidate,
    config: FinetuneConfig | None = None,
    device: str = "cpu",
    workers: int = 0,
    progress: bool = True,
    data=None,
    before: dict[str, Any] | None = None,
    teacher: tuple[torch.nn.Module, dict[str, Any]] | None = None,
) -> Finetuned:
    """Fine-tune ``candidate`` of ``supernet`` with the full model as teacher (see module).

    ``before``: the candidate's metrics on the shared weights when already known (a
    search scored it), so the validation set is run once, after fine-tuning. ``teacher``:
    an external teacher from ``load_teacher``; by default the one the supernet was trained
    with, where it had one."""
    c = config or FinetuneConfig()
    dev = resolve_device(device)
    elastic = supernet.elastic.to(dev).eval()
    spec = elastic.spec
    candidate = candidate.validate(spec)
    if data is None:
        data = supernet.load_data(c.batch_size, workers=workers)  # the training split
    # an int8-static candidate is scored on its quantized graph, calibrated on training images
    calib = calibration_images(data.train) if candidate.precision == "int8-static" else None
    ev = AccuracyEvaluator(data.val, device=dev, progress=False, calibration=calib)
    if before is None:
        before = ev(elastic, candidate)
    # trained in float32 (half-precision weights would lose the small updates), shipped
    # in the candidate's precision
    half = candidate.precision in HALF
    student = elastic.extract(candidate.replace(precision="fp32") if half else candidate)
    full = Candidate.full(spec)
    if teacher is None and supernet.meta.get("teacher"):
        teacher = reload_teacher(supernet.meta["teacher"]), supernet.meta["teacher"]
    if teacher is not None:
        check_teacher(*teacher[:1], len(supernet.data["classes"]), spec.image_shape, teacher[1])
        external = teacher[0].to(dev).eval()
    for p in elastic.parameters():
        p.requires_grad_(False)
    try:
        seconds = train_compressed(
            student,
            data,
            c,
            teacher=external if teacher is not None else lambda x: elastic(x, full),
            device=dev,
            progress=progress,
        )
    finally:
        for p in elastic.parameters():
            p.requires_grad_(True)
    student.eval()
    if half:
        student = student.to(FLOATS[candidate.precision])
        student.candidate = candidate
    after = ev.score(student, spec)
    if data.test is not None:  # reported apart: the front was chosen on validation
        test = AccuracyEvaluator(data.test, device=dev, progress=False, calibration=calib)
        test = test.score(student, spec)
        after["test_accuracy"] = test["accuracy"]
    metrics = {
        "candidate": candidate.to_dict(),
        "accuracy": after["accuracy"],
        "test_accuracy": after.get("test_accuracy"),
        "shared_accuracy": before["accuracy"],
        "finetuned": after,
        "shared": before,
        "params": count_params(student),
        "finetune": {**asdict(c), "seconds": seconds},
        "teacher": teacher[1] if teacher is not None else "the supernet's full model",
        "dataset": supernet.data["spec"],
        "supernet_sha256": supernet.sha256,
    }
    return Finetuned(student, metrics)
