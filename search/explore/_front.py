"""The work of the search's second stage (``rescore_front``): the front re-scored at a
higher fidelity, stored apart.

Every trial of a search is scored cheaply (accuracy on the shared weights; latency
measured, or predicted from the latency table). Optuna cannot report intermediate values
for several objectives and Ray's ASHA takes one metric, so the fidelities are staged:
once the search is done, each trial on its front is fine-tuned (``steps`` > 0) and its
latency timed again at length (``retime``; else only where it was predicted). The results
go into a study of their own, ``NAME/front``, one trial per re-scored candidate with the
same parameters, its ``fidelity`` (``finetuned`` or ``shared``), ``source_trial`` and the
low-fidelity figures kept as ``shared_accuracy``, ``predicted_latency_ms`` or
``search_latency_ms``, and ``search_speedup``. Query, export and report read it
like any study; fine-tuned weights are kept in an Optuna artifact store.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from safetensors.torch import load, save

from vitpareto.errors import VitParetoError
from vitpareto.evaluators import expected_latency
from vitpareto.search.explore._config import SearchConfig
from vitpareto.search.supernet import FinetuneConfig, finetune
from vitpareto.spaces import Candidate


def remeasured(metrics: dict, measured: dict) -> None:
    """Replace the search's latency by one measured now, keeping the search's figure: the
    prediction, or the short timing and its speedup."""
    kept = "predicted_latency_ms" if metrics.get("latency_predicted") else "search_latency_ms"
    metrics[kept], metrics["search_speedup"] = metrics["latency_ms"], metrics.get("speedup")
    metrics.update(measured)
    metrics["latency_predicted"] = False


class LocalFrontScorer:
    """Scores the front's trials one after another in this process; ``latency`` re-measures
    predicted latencies, and every latency when ``retime`` (None leaves that to the
    caller: a Ray task on the target)."""

    def __init__(
        self, supernet, config: SearchConfig, recipe: FinetuneConfig, latency=None, retime=False
    ):
        self.supernet, self.config, self.recipe = supernet, config, recipe
        # the supernet's own train/validation split, batched as the fine-tuning recipe says
        self.data = supernet.load_data(batch_size=recipe.batch_size)
        self.latency, self.retime = latency, retime

    def __call__(self, todo, steps: int):
        for t in todo:
            yield (t, *self.score(dict(t.user_attrs), steps))

    def score(self, attrs: dict, steps: int):
        """One front trial at the higher fidelity: fine-tuned ``steps`` (when > 0) and
        scored once on the whole validation set, its predicted latency measured. Returns
        its metrics and, when fine-tuned, its weights (safetensors bytes)."""
        elastic = self.supernet.elastic.eval()
        cand = Candidate.from_dict(attrs["candidate"])
        metrics: dict[str, Any] = dict(attrs)
        metrics["fidelity"], blob, model = "shared", None, None
        if steps:
            ft = finetune(
                self.supernet,
                cand,
                self.recipe,
                device=self.config.accuracy_device,
                progress=False,
                data=self.data,
                before={"accuracy": attrs["accuracy"]},  # scored by the search already
            )
            metrics.update(ft.metrics["finetuned"])
            metrics["finetune"] = ft.metrics["finetune"]
            metrics["fidelity"], blob, model = "finetuned", weights_blob(ft.model), ft.model
        predicted = attrs.get("latency_predicted")
        exits_moved = model is not None and cand.routes > 0  # its samples leave elsewhere
        if self.latency is not None and (self.retime or predicted or exits_moved):
            if model is not None and hasattr(self.latency, "measure"):
                measured = self.latency.measure(elastic, model, metrics)  # as it ships
            else:
                measured = self.latency(elastic, cand, metrics)
            remeasured(metrics, measured)
        elif exits_moved and metrics.get("exit_latency_ms"):
            # a derived latency follows where the fine-tuned model's samples leave
            expected = expected_latency(metrics["exit_latency_ms"], metrics["exit_fraction"])
            metrics["speedup"] = metrics["speedup"] * metrics["latency_ms"] / expected
            metrics["latency_ms"] = expected
        return metrics, blob


def weights_blob(model) -> bytes:
    """A model's weights as safetensors bytes."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={"format": "pt"})


def store_weights(store_dir: Path, blob: bytes) -> str:
    """Write weights (safetensors bytes) into the artifact store; return their id."""
    artifact_id = hashlib.sha256(blob).hexdigest()
    store_dir.mkdir(parents=True, exist_ok=True)
    FileSystemArtifactStore(str(store_dir)).write(artifact_id, io.BytesIO(blob))
    return artifact_id


def load_weights(store_dir: str | Path, artifact_id: str) -> dict:
    """The state dict a re-scored trial stored, checked against its id."""
    try:
        with FileSystemArtifactStore(str(store_dir)).open_reader(artifact_id) as f:
            blob = f.read()
    except (ArtifactNotFound, OSError):
        raise VitParetoError(
            f"fine-tuned weights {artifact_id[:12]} are missing from {str(store_dir)!r}; "
            "pass --artifacts DIR where the artifact store is now"
        ) from None
    if hashlib.sha256(blob).hexdigest() != artifact_id:
        raise VitParetoError(f"fine-tuned weights {artifact_id[:12]} in {store_dir} are damaged")
    return load(blob)
