"""Exporting trials of a study as standalone model directories.

Each directory holds the recipe (``config.json``: timm model and options, candidate,
classes), the weights (``model.safetensors``), ``candidate.json``, ``metrics.json`` (the
trial's stored metrics), a model card (``README.md``), and two files that load without
vitpareto: ``model.pt2`` (``torch.export``) and ``model.onnx``. Weights come from the
supernet for trials scored on the shared weights, and from the artifact store for
fine-tuned ones (``NAME/front`` studies).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vitpareto.errors import VitParetoError
from vitpareto.evaluators import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    INT8,
    calibration_images,
    channel_norm,
    check_onnxscript,
    first_images,
    precision_of,
)
from vitpareto.search.explore import front_trials, load_weights
from vitpareto.search.outputs._bench import (
    disagreement,
    full_model,
    image_shape,
    image_size,
    measure_deployed,
)
from vitpareto.search.outputs._modeldir import check_writable, model_files, rebuild, write_model_dir
from vitpareto.search.outputs._portable import portable_files
from vitpareto.search.outputs._query import completed_trials, stored_candidate
from vitpareto.spaces import HALF, Candidate


def pick_trials(study, trials: list[int] | None, pareto: bool) -> list:
    """The completed trials to export: the front, and/or the numbers asked for."""
    complete = {t.number: t for t in completed_trials(study)}
    if not trials and not pareto:
        raise VitParetoError("say what to export: --pareto, or --trial N (repeatable)")
    chosen = {t.number: t for t in front_trials(study)} if pareto else {}
    for n in trials or []:
        if n not in complete:
            raise VitParetoError(
                f"study {study.study_name!r} has no completed trial {n}; "
                f"`vitpareto query --study {study.study_name}` lists them"
            )
        chosen[n] = complete[n]
    if not chosen and pareto and study.best_trials:
        acc = (study.user_attrs.get("full") or {}).get("accuracy", float("nan"))
        raise VitParetoError(
            f"the full model (accuracy {acc:.4f}) dominates every trial of study "
            f"{study.study_name!r}: no compressed model beats it yet; search further, or "
            "repair the front with --finetune-front"
        )
    if not chosen:
        raise VitParetoError(f"study {study.study_name!r} has no trial on its front yet")
    return [chosen[n] for n in sorted(chosen)]


def build_model(study, trial, supernet=None, artifacts=None):
    """The trial's compressed model: fine-tuned weights when it has them (from ``artifacts``,
    else where they were stored), else cut from the supernet (the one the study searched)."""
    cand = stored_candidate(study, trial)
    if "weights_artifact" in trial.user_attrs:
        store = artifacts or trial.user_attrs["artifacts"]
        state = load_weights(store, trial.user_attrs["weights_artifact"])
        return rebuild(study.user_attrs["model"], cand, state, str(store))
    if supernet is None:
        raise VitParetoError("this trial's weights are the supernet's: pass --supernet CKPT")
    if supernet.sha256 != study.user_attrs.get("supernet_sha256"):
        raise VitParetoError(
            f"--supernet {str(supernet.path)!r} is not the supernet study "
            f"{study.study_name!r} searched (SHA-256 differs)"
        )
    try:
        return supernet.elastic.extract(cand).eval()
    except VitParetoError as e:  # the candidate's fields against the supernet's
        raise VitParetoError(
            f"study {study.study_name!r}, trial {trial.number}: its user attribute 'candidate' "
            f"does not fit the supernet ({e}); a study changed by hand, or another supernet"
        ) from None


def export_trials(
    study,
    trials: list,
    out: str | os.PathLike,
    supernet=None,
    force: bool = False,
    portable: bool = True,
    progress: bool = True,
    artifacts: str | os.PathLike | None = None,
    measure: bool = True,
) -> list[Path]:
    """Write one model directory per trial under ``out`` (``trial_N``); return their paths.
    With ``measure``, each model's latency as it ships is timed here first and written into
    its metrics.json and card beside the search's figure.

    Every directory is checked and every model built before any is written, so a missing
    file or an existing directory stops the export before anything changes."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VitParetoError(f"--out {str(out)!r} is a file, not a directory")
    if portable:
        check_onnxscript()  # before any model is built, not at the first model.onnx
    dirs = [check_writable(out / f"trial_{t.number}", force) for t in trials]
    models = [build_model(study, t, supernet, artifacts) for t in trials]
    calibration = export_calibration(models, supernet) if portable else None
    timing = deployed_timing(study, supernet) if measure else None
    made = not out.exists()
    try:
        return _write(
            study, trials, dirs, models, supernet, force, portable, timing, progress, calibration
        )
    except OSError as e:
        raise VitParetoError(
            f"cannot write the models under {str(out)!r} ({e.strerror or e}); the directories "
            "already written are complete, the one being written was removed"
        ) from None
    finally:
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing written: no empty directory left behind


def _write(study, trials, dirs, models, supernet, force, portable, timing, progress, calibration):
    written = []
    for t, d, model in tqdm(
        list(zip(trials, dirs, models, strict=True)),
        desc="export",
        unit="model",
        disable=None if progress else True,  # bars on a terminal only
        file=sys.stderr,
    ):
        metrics = {k: v for k, v in t.user_attrs.items() if k not in ("artifacts",)}
        metrics.update(study=study.study_name, trial=t.number, values=list(t.values))
        portable_set = portable_files(model, calibration) if portable else {}
        if timing is not None:  # this machine's latency of the very file written
            onnx = str(portable_set["model.onnx"].path()) if portable else None
            metrics.update(timing(model, t.user_attrs.get("exit_fraction"), onnx))
            why = disagreement(metrics)
            if why:
                print(f"warning: trial {t.number}: {why}", file=sys.stderr)
        written.append(_files_of(study, t, model, supernet, metrics, portable_set, d, force))
    return written


def _files_of(study, t, model, supernet, metrics, portable_set, d, force) -> Path:
    """Write trial ``t``'s model directory ``d``: its recipe, weights, metrics, card and
    ``portable_set`` (the files that load without vitpareto)."""
    attrs = study.user_attrs
    files = model_files(
        model,
        attrs["model"]["name"],
        attrs["model"]["kwargs"],
        attrs.get("classes") or _classes(supernet, model),
        metrics,
        attrs.get("supernet_sha256"),
        preprocessing(model),
    )
    files["candidate.json"] = json.dumps(t.user_attrs["candidate"], indent=2) + "\n"
    files["README.md"] = model_card(study, t, model, metrics)
    files.update(portable_set)
    return write_model_dir(d, files, force=force)


def export_calibration(models, supernet):
    """The training images int8-static models are calibrated on (the search's own), None
    when no model needs them; refused before any is written when they cannot be read."""
    if not any(precision_of(m) == "int8-static" for m in models):
        return None
    if supernet is None:
        raise VitParetoError(
            "an int8-static model's ranges are calibrated on the training images: pass "
            "--supernet CKPT (the checkpoint the study searched)"
        )
    return calibration_images(supernet.load_data(batch_size=128).train)


def deployed_timing(study, supernet, device: str = "cpu", repeats: int = 20):
    """What times each exported model on this machine: the study's runtime and batch,
    against the full model; on the supernet's validation images for an exit policy."""
    config = study.user_attrs.get("config") or {}
    runtime, batch = config.get("runtime", "eager"), int(config.get("latency_batch", 1))
    if supernet is not None:
        reference = supernet.elastic.extract(Candidate.full(supernet.elastic.spec)).eval()
        images = first_images(supernet.load_data(batch_size=128).val, batch)
    else:
        reference, images = full_model(study.user_attrs["model"]), None
    prepared: dict = {}  # the reference exported for the runtime once, not once per model
    return lambda model, fraction, onnx=None: measure_deployed(
        model, reference, runtime, batch, device, images, fraction, onnx, repeats, prepared
    )


def _classes(supernet, model) -> list[str]:
    if supernet is not None:
        return list(supernet.data["classes"])
    return [str(i) for i in range(model.vit.num_classes)]


def model_card(study, trial, model, metrics: dict | None = None) -> str:
    """README.md of an exported model: what it is, how it scored, how fast it runs as it
    ships, how to load it."""
    a, c = study.user_attrs, trial.user_attrs["candidate"]
    m = metrics if metrics is not None else trial.user_attrs
    h, w = image_size(model)
    pre = preprocessing(model)
    batch = m.get("batch_size") or (a.get("config") or {}).get("latency_batch", "?")
    target = a.get("target") if isinstance(a.get("target"), dict) else {}
    hardware = f"{target.get('gpu') or target.get('cpu', '?')} ({target.get('device', '?')})"
    if not target:
        hardware = "each trial's own node (the study's target is 'per trial')"
    rows = _card_rows(m, batch)
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    exits = _card_exits(c)
    source = f", from trial {m['source_trial']}" if "source_trial" in m else ""
    dynamic = c.get("exits") or c.get("cascade")
    outputs = "(logits, route of each sample)" if dynamic else "logits"
    return f"""# {a["model"]["name"]}, compressed (study `{study.study_name}`, trial {trial.number}{source})

A standalone Vision Transformer cut from a vitpareto supernet: {len(c["heads"])} blocks,
{h} x {w} px input, patch {c["patch_size"]}, dataset `{a.get("dataset")}`.
Fidelity: `{m.get("fidelity")}` (`shared`: scored on the supernet's weights;
`finetuned`: distilled from the supernet's full model, then scored).

| metric | value |
|---|---|
{table}

Searched latency on {hardware}, torch {target.get("torch", "?")}
({"predicted from the latency table" if m.get("latency_predicted") else "measured"}, under
{m.get("runtime", "eager")}); "as deployed here": the exported model timed by `vitpareto
export` on {(m.get("deployed_fingerprint") or {}).get("cpu", "?")}; time it where it will
run with `vitpareto bench DIR`.

## The candidate

| knob | per block |
|---|---|
| heads | {list(c["heads"])} |
| q/k channels per head | {list(c["qk_dim"])} |
| MLP channels | {list(c["mlp"])} |
| token keep ratio | {list(c["keep"])} |
| token reduction | {list(c.get("token_mode") or [])} |

{exits}

## Loading

```python
import vitpareto                       # pip install vitpareto
model = vitpareto.load("this/directory")

import torch                           # torch alone
model = torch.export.load("model.pt2").module()
outputs = model(images)                # {outputs}

import onnxruntime as ort              # no torch at all
session = ort.InferenceSession("model.onnx")
outputs = session.run(None, {{"images": images_nchw_float32}})
```

Inputs: float32 images, N x {pre["channels"]} x {h} x {w}: pixel values scaled to 0..1, resized
(bilinear) to {h} x {w}, then normalised with mean {pre["mean"]} and std {pre["std"]}
(also in `config.json`, under `preprocessing`). Outputs: logits over the classes listed in
`config.json`. Supernet SHA-256: `{a.get("supernet_sha256")}`.
"""


def _card_rows(m: dict, batch) -> list[tuple[str, str]]:
    """The model card's table of figures: accuracy, latency as searched and as deployed
    here, MACs, parameters."""
    segments = m.get("exit_latency_ms")
    static_ms = segments[-1] if segments else m.get("latency_ms")
    precision = (m.get("candidate") or {}).get("precision", "fp32")
    where = {
        **dict.fromkeys(INT8, " (of model.onnx, in ONNX Runtime; the other files are fp32)"),
        **dict.fromkeys(HALF, " (the weights and .pt2 files; the .onnx files are fp32)"),
    }.get(precision, "")
    return [
        ("precision", precision + where),
        ("accuracy (validation set)", _fmt(m.get("accuracy"))),
        ("accuracy in float32, before quantization", _fmt(m.get("fp32_accuracy"))),
        ("accuracy on the held-out test set", _fmt(m.get("test_accuracy"))),
        ("accuracy of the final head alone", _fmt(m.get("final_accuracy"))),
        ("accuracy on the shared weights", _fmt(m.get("shared_accuracy"))),
        (f"latency, static forward (ms per batch of {batch})", _fmt(static_ms)),
        (
            f"latency, expected with early exits (ms per batch of {batch})",
            _fmt(m.get("latency_ms")) if segments else "-",
        ),
        ("speedup over the full model (as searched)", _fmt(m.get("speedup"))),
        (
            f"latency as deployed here, {m.get('deployed_runtime', '-')} "
            f"({m.get('deployed_method', '-')}, ms per batch of {m.get('deployed_batch', '-')})",
            _fmt(m.get("deployed_latency_ms")),
        ),
        ("speedup as deployed here", _fmt(m.get("deployed_speedup"))),
        ("MACs per image", f"{int(m['macs']):,}" if "macs" in m else "-"),
        ("parameters", f"{int(m['params']):,}" if "params" in m else "-"),
    ]


def _card_exits(c: dict) -> str:
    """What the model card says of the exits and the cascade, and which file runs what."""
    exits = (
        f"Early exits after blocks {list(c['exits'])} (threshold {c['exit_threshold']}). "
        "`model.pt2` and `model.onnx` run the exit policy: each sample leaves at the first "
        "exit whose softmax confidence reaches the threshold, later blocks run only on the "
        "samples still in; they return the logits and each sample's exit (the last index: "
        "the final head), as `vitpareto.load(dir).forward_dynamic(x)` does. What follows "
        "each exit sits behind a conditional (`torch.cond` in the `.pt2`, an `If` in the "
        "`.onnx`): once every sample of a batch has left, it does not run. "
        "`model_static.pt2` and `model_static.onnx` run every block and the final head, for "
        "runtimes that cannot take data-dependent shapes (TensorRT, CUDA graphs); their "
        "accuracy is the final head's above."
        if c.get("exits")
        else "No early exits."
    )
    if c.get("cascade"):
        exits += (
            f" A patch-size cascade runs first: patch sizes {list(c['cascade'])} (thresholds "
            f"{list(c['cascade_thresholds'])}), coarsest first; a sample whose confidence at a "
            "stage reaches its threshold stops there. The dynamic files return each sample's "
            "route: the stages first, then the exits, then the final head."
        )
    elif not c.get("exits"):
        exits += " Every format runs the same forward."
    return exits


def preprocessing(model) -> dict[str, Any]:
    """What the model expects of its input (vitpareto's datasets all normalise so)."""
    channels = image_shape(model)[0]
    mean, std = channel_norm(DEFAULT_MEAN, DEFAULT_STD, channels)
    return {"image_size": list(image_size(model)), "channels": channels, "mean": mean, "std": std}


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
