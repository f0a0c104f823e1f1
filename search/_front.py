"""The search's second stage: the front re-scored at a higher fidelity, stored apart.

Every trial of a search is scored cheaply (accuracy on the shared weights; latency
measured, or predicted from the latency table). Optuna cannot report intermediate values
for several objectives and Ray's ASHA takes one metric, so the fidelities are staged:
once the search is done, each trial on its front is fine-tuned (``steps`` > 0) and its
latency measured for real where it was predicted. The results go into a study of their
own, ``NAME/front``, one trial per re-scored candidate with the same parameters, its
``fidelity`` (``finetuned`` or ``shared``), ``source_trial`` and the low-fidelity figures
kept as ``shared_accuracy`` / ``predicted_latency_ms``. Query, export and report read it
like any study; fine-tuned weights are kept in an Optuna artifact store.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from vitpareto.spaces import Candidate, VitParetoError

SUFFIX = "/front"


def default_artifacts(storage_url: str) -> Path:
    """Where fine-tuned weights go: beside an SQLite database, else ``results/artifacts``."""
    if storage_url.startswith("sqlite:///"):
        return Path(storage_url.removeprefix("sqlite:///")).parent / "artifacts"
    return Path("results/artifacts")


def needed(config, steps: int) -> bool:
    """Whether the front has anything to gain from a second stage."""
    return steps > 0 or config.latency == "predicted"


def rescore_front(
    supernet,
    storage_url: str,
    name: str,
    config,
    steps: int = 0,
    artifacts: str | Path | None = None,
    progress: bool = True,
    lr: float | None = None,
    scorer=None,
):
    """Re-score the front of study ``name`` into ``name + '/front'``; return that study.

    ``scorer(supernet, config, recipe)`` makes what does the work: ``LocalScorer`` (the
    default) here, ``RayScorer`` across a Ray cluster. Resumable: candidates already
    re-scored are skipped, so a cut-off stage (or a front that grew with more trials) is
    completed by running it again.
    """
    import optuna
    from optuna.trial import TrialState, create_trial
    from tqdm import tqdm

    from vitpareto.search._finetune import FinetuneConfig
    from vitpareto.search._query import load_study
    from vitpareto.search._study import open_storage

    src = load_study(storage_url, name)
    store = open_storage(storage_url)
    attrs = {
        **src.user_attrs,
        "source_study": name,
        "finetune_steps": steps,
        "finetune_lr": lr,
        "latency_source": "measured",
    }
    dst = optuna.create_study(
        study_name=name + SUFFIX, storage=store, directions=src.directions, load_if_exists=True
    )
    if dst.user_attrs and dst.user_attrs.get("finetune_steps") != steps:
        raise VitParetoError(
            f"study {name + SUFFIX!r} was fine-tuned with {dst.user_attrs.get('finetune_steps')} "
            f"steps, not {steps}; pass the same --finetune-front or search another --study"
        )
    if not dst.user_attrs:
        for k, v in attrs.items():
            dst.set_user_attr(k, v)
    predicted = (src.user_attrs.get("config") or {}).get("latency") == "predicted"
    seen = {  # candidates already re-scored (samplers can suggest one candidate twice)
        json.dumps(t.user_attrs["candidate"], sort_keys=True)
        for t in dst.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    todo = []
    for t in src.best_trials:
        key = json.dumps(t.user_attrs["candidate"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            todo.append(t)
    if not todo:
        return dst
    store_dir = (Path(artifacts) if artifacts else default_artifacts(storage_url)).resolve()
    recipe = FinetuneConfig(steps=max(steps, 1), seed=config.seed, **({"lr": lr} if lr else {}))
    threads = config.threads or src.user_attrs.get("config", {}).get("threads")
    scorer = (scorer or LocalScorer)(supernet, replace(config, threads=threads), recipe)
    full = dict(dst.user_attrs.get("full") or {})
    if predicted and not full.get("latency_measured"):
        # the hypervolume's reference in the units of this study: the full model, timed
        full["latency_ms"] = scorer.full_latency()
        full["latency_measured"] = True
        dst.set_user_attr("full", full)
    bar = tqdm(
        total=len(todo),
        desc=f"front of {name}",
        unit="model",
        disable=not progress,
        file=sys.stderr,
    )
    for t, metrics, blob in scorer(todo, steps):
        metrics.update(source_trial=t.number, shared_accuracy=t.user_attrs["accuracy"])
        if blob is not None:
            metrics["weights_artifact"] = _store_weights(store_dir, blob)
            metrics["artifacts"] = str(store_dir)
        user_attrs = {k: json.loads(json.dumps(v, default=float)) for k, v in metrics.items()}
        constraints = {f"constraints:{k}": float(v) for k, v in config.violations(metrics).items()}
        dst.add_trial(
            create_trial(
                params=t.params,
                distributions=t.distributions,
                values=[float(metrics[o]) for o in src.user_attrs["objectives"]],
                user_attrs=user_attrs,
                system_attrs=constraints,
            )
        )
        bar.update()
        bar.set_postfix(trial=t.number, accuracy=f"{metrics['accuracy']:.3f}")
    bar.close()
    return dst


def remeasured(metrics: dict, measured: dict) -> None:
    """Replace a predicted latency by a measured one, keeping the prediction."""
    metrics["predicted_latency_ms"] = metrics["latency_ms"]
    metrics.update(measured)
    metrics["latency_predicted"] = False


class LocalScorer:
    """Scores the front's trials one after another in this process; ``measure=False``
    leaves re-measuring predicted latencies to the caller (a Ray task on the target)."""

    def __init__(self, supernet, config, recipe, measure: bool = True):
        from vitpareto.evaluators import AccuracyEvaluator
        from vitpareto.search._study import measured_latency

        self.supernet, self.config, self.recipe = supernet, config, recipe
        # the supernet's own train/validation split, batched as the fine-tuning recipe says
        self.data = supernet.load_data(batch_size=recipe.batch_size)
        self.acc = AccuracyEvaluator(self.data.val, device=config.device, progress=False)
        self.latency = measured_latency(config) if measure else None

    def full_latency(self) -> float:
        elastic = self.supernet.elastic.eval()
        return self.latency(elastic, Candidate.full(elastic.spec))["latency_ms"]

    def __call__(self, todo, steps):
        for t in todo:
            yield (t, *self.score(dict(t.user_attrs), steps))

    def score(self, attrs: dict, steps: int):
        """One front trial at the higher fidelity: fine-tuned ``steps`` (when > 0) and
        scored on the whole validation set, its predicted latency measured. Returns its
        metrics and, when fine-tuned, its weights (safetensors bytes)."""
        from vitpareto.evaluators import expected_latency
        from vitpareto.search._finetune import finetune

        elastic = self.supernet.elastic.eval()
        cand = Candidate.from_dict(attrs["candidate"])
        metrics: dict[str, Any] = dict(attrs)
        metrics["fidelity"], blob = "shared", None
        if steps:
            ft = finetune(
                self.supernet,
                cand,
                self.recipe,
                device=self.config.device,
                progress=False,
                data=self.data,
            )
            metrics.update(self.acc.score(ft.model, elastic.spec))
            metrics["finetune"] = ft.metrics["finetune"]
            segments = metrics.get("exit_latency_ms")
            if segments and not attrs.get("latency_predicted"):
                # exits: the expected latency follows where the fine-tuned model's samples leave
                expected = expected_latency(segments, metrics["exit_fraction"])
                metrics["speedup"] = metrics["speedup"] * metrics["latency_ms"] / expected
                metrics["latency_ms"] = expected
            metrics["fidelity"], blob = "finetuned", weights_blob(ft.model)
        if self.latency is not None and attrs.get("latency_predicted"):
            remeasured(metrics, self.latency(elastic, cand, metrics))
        return metrics, blob


def weights_blob(model) -> bytes:
    """A model's weights as safetensors bytes."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={"format": "pt"})


def _store_weights(store_dir: Path, blob: bytes) -> str:
    """Write weights (safetensors bytes) into the artifact store; return their id."""
    from optuna.artifacts import FileSystemArtifactStore

    artifact_id = hashlib.sha256(blob).hexdigest()
    store_dir.mkdir(parents=True, exist_ok=True)
    FileSystemArtifactStore(str(store_dir)).write(artifact_id, io.BytesIO(blob))
    return artifact_id


def load_weights(store_dir: str | Path, artifact_id: str) -> dict:
    """The state dict a re-scored trial stored, checked against its id."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna.artifacts.exceptions import ArtifactNotFound
    from safetensors.torch import load

    try:
        with FileSystemArtifactStore(str(store_dir)).open_reader(artifact_id) as f:
            blob = f.read()
    except ArtifactNotFound:
        raise VitParetoError(
            f"fine-tuned weights {artifact_id[:12]} are missing from {str(store_dir)!r}; "
            "pass --artifacts DIR where the artifact store is now"
        ) from None
    if hashlib.sha256(blob).hexdigest() != artifact_id:
        raise VitParetoError(f"fine-tuned weights {artifact_id[:12]} in {store_dir} are damaged")
    return load(blob)
