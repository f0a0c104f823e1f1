"""The accuracy evaluator: top-1/top-5 on a validation set under the early-exit policy.

A sample is judged by the logits of the exit it leaves at (``exit_assignment``: the first
exit whose softmax confidence reaches the threshold, else the final head), and it costs the
MACs spent up to that exit. Every exit's logits come from one static ``forward_exits`` pass,
which gives the same assignment and logits as ``CompressedViT.forward_dynamic`` while also
reporting each exit's own accuracy over all samples.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from vitpareto.evaluators._base import Evaluator
from vitpareto.evaluators._cost import exit_macs
from vitpareto.evaluators._deployed_accuracy import artifact_accuracy
from vitpareto.evaluators._precision import INT8
from vitpareto.evaluators._timing import resolve_device
from vitpareto.spaces import (
    Candidate,
    CompressedViT,
    ElasticViT,
    VitParetoError,
    ViTSpec,
    exit_assignment,
)

# loaders with more batches than this show a progress bar unless told otherwise
_PROGRESS_MIN_BATCHES = 20


def _exit_counts(
    exit_logits: Sequence[torch.Tensor], labels: torch.Tensor, threshold: float | Sequence[float]
) -> dict[str, torch.Tensor]:
    """Integer counts behind ``exit_metrics`` for one batch; counts of batches simply add up,
    so the evaluator never has to hold a whole validation set's logits."""
    if len(exit_logits) < 1:
        raise VitParetoError("exit_logits is empty: need at least the final head's logits")
    n = labels.shape[0]
    for i, logits in enumerate(exit_logits):
        if logits.dim() != 2 or logits.shape[0] != n:
            raise VitParetoError(
                f"exit_logits[{i}] has shape {tuple(logits.shape)}; expected [{n}, classes] "
                f"to match {n} labels"
            )
    labels = labels.to(exit_logits[-1].device)
    where = exit_assignment(list(exit_logits), threshold)
    stacked = torch.stack([logits.float() for logits in exit_logits])  # [exits + 1, n, classes]
    chosen = stacked[where, torch.arange(n, device=where.device)]  # each sample's own exit
    counts = {
        "correct": (chosen.argmax(-1) == labels).sum(),
        "exit_correct": (stacked.argmax(-1) == labels).sum(-1),
        "exit_leaving": torch.bincount(where, minlength=len(exit_logits)),
        "samples": torch.tensor(n, device=where.device),
    }
    if chosen.shape[-1] > 5:
        counts["top5_correct"] = (chosen.topk(5, dim=-1).indices == labels[:, None]).any(-1).sum()
    return counts


def _metrics(counts: dict[str, torch.Tensor], macs: Sequence[int]) -> dict[str, Any]:
    """Turn summed counts into the flat, JSON-serialisable metrics of ``exit_metrics``."""
    n = int(counts["samples"])
    if n == 0:
        raise VitParetoError("no samples to evaluate: the loader yielded no batches")
    exit_correct = [int(c) for c in counts["exit_correct"]]
    leaving = [int(c) for c in counts["exit_leaving"]]
    if len(macs) != len(leaving):
        raise VitParetoError(
            f"got {len(macs)} MAC counts for {len(leaving)} exits (early exits, then final)"
        )
    fraction = [c / n for c in leaving]
    top5 = counts.get("top5_correct")
    return {
        "accuracy": int(counts["correct"]) / n,
        "top5": int(top5) / n if top5 is not None else None,
        "final_accuracy": exit_correct[-1] / n,
        "exit_accuracy": [c / n for c in exit_correct],
        "exit_fraction": fraction,
        "expected_macs": float(sum(f * int(m) for f, m in zip(fraction, macs, strict=True))),
        "samples": n,
    }


def exit_metrics(
    exit_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    threshold: float,
    macs: Sequence[int],
) -> dict[str, Any]:
    """Accuracy and expected cost of a multi-exit model on a set of samples.

    ``exit_logits`` holds ``[samples, classes]`` logits of every early exit in order, then
    of the final head; ``macs`` the MACs a sample leaving at each of them costs
    (``exit_macs``). Returns:

    - ``accuracy``: top-1 under the exit policy (each sample judged at the exit it leaves at);
    - ``top5``: the same for top-5, ``None`` with 5 classes or fewer;
    - ``final_accuracy``: the final head's top-1 over all samples;
    - ``exit_accuracy``: each exit's own top-1 over all samples, then the final head's;
    - ``exit_fraction``: the fraction of samples leaving at each exit, then at the final head;
    - ``expected_macs``: MACs per sample under the policy, ``sum(fraction * macs)``;
    - ``samples``: the number of samples.
    """
    return _metrics(_exit_counts(exit_logits, labels, threshold), macs)


class AccuracyEvaluator(Evaluator):
    """Accuracy of a candidate's compressed model on a validation loader, early exits included.

    ``loader`` yields ``(images, labels)`` batches (a DataLoader or any iterable of pairs);
    at most ``max_batches`` of them are used. ``progress`` shows a bar on stderr: ``None``
    only for loaders with more than 20 batches. An int8 candidate's accuracy is its
    quantized ONNX graph's, in ONNX Runtime (``fp32_accuracy`` keeps the float model's);
    ``calibration``: the training images an ``int8-static`` graph is calibrated on.
    """

    name = "accuracy"
    keys = (
        "accuracy",
        "top5",
        "final_accuracy",
        "exit_accuracy",
        "exit_fraction",
        "expected_macs",
        "samples",
    )

    def __init__(
        self,
        loader: Iterable,
        device: str | torch.device = "cpu",
        max_batches: int | None = None,
        progress: bool | None = None,
        calibration: torch.Tensor | None = None,
    ):
        if max_batches is not None and (
            isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
        ):
            raise VitParetoError(f"max_batches must be a positive int or None, got {max_batches!r}")
        self.loader = loader
        self.device = resolve_device(str(device))
        self.max_batches = max_batches
        self.progress = progress
        self.calibration = calibration

    def _num_batches(self) -> int | None:
        try:
            n = len(self.loader)
        except TypeError:  # an iterable without a length
            return self.max_batches
        return n if self.max_batches is None else min(n, self.max_batches)

    def _batches(self):
        """The loader's first ``max_batches`` batches, behind a progress bar when wanted."""
        total = self._num_batches()
        show = self.progress
        if show is None:
            show = total is not None and total > _PROGRESS_MIN_BATCHES
        batches = self.loader
        if show:
            batches = tqdm(batches, total=total, desc=self.name, leave=False, file=sys.stderr)
        try:
            for i, batch in enumerate(batches):
                if self.max_batches is not None and i >= self.max_batches:
                    break
                if not isinstance(batch, tuple | list) or len(batch) != 2:
                    raise VitParetoError(
                        f"the loader must yield (images, labels) pairs; batch {i} is a "
                        f"{type(batch).__name__}"
                        + (f" of length {len(batch)}" if isinstance(batch, tuple | list) else "")
                    )
                yield batch
        finally:
            if show:
                batches.close()

    def evaluate(
        self, elastic: ElasticViT, candidate: Candidate, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self.score(elastic.extract(candidate), elastic.spec)

    def score(self, model: CompressedViT, spec: ViTSpec) -> dict[str, Any]:
        """The same metrics for a standalone compressed model (for example a fine-tuned one);
        ``spec`` is the shape of the model it was cut from (for the expected MACs)."""
        candidate = model.candidate
        was_training = model.training
        model = model.to(self.device).eval()
        total: dict[str, torch.Tensor] = {}
        try:
            with torch.inference_mode():
                for x, y in self._batches():
                    x = x.to(self.device, non_blocking=True)
                    y = torch.as_tensor(y).to(self.device, non_blocking=True)
                    counts = _exit_counts(model.forward_exits(x), y, candidate.thresholds())
                    for k, v in counts.items():
                        total[k] = total[k] + v if k in total else v
        finally:
            model.train(was_training)
        if not total:
            raise VitParetoError("no samples to evaluate: the loader yielded no batches")
        metrics = _metrics(total, exit_macs(spec, candidate))
        if candidate.precision in INT8:  # the accuracy of what ships: the int8 graph
            metrics["fp32_accuracy"] = metrics["accuracy"]
            metrics["accuracy"] = artifact_accuracy(model, self._batches(), self.calibration)
        return metrics
