"""Standalone compressed models on disk: a recipe, not a pickle.

A model directory holds ``config.json`` (the timm model name and options, the candidate,
the class names, the supernet's SHA-256 and the weights' own), ``model.safetensors`` (the
weights of the compressed model only), ``metrics.json`` and ``manifest.json`` (every file's
SHA-256, checked before any is read). ``load_model`` rebuilds the module through a pure
function: timm builds the architecture, the candidate cuts it, the weights fill it.
Writes are atomic: a directory is complete or absent, and an existing one is replaced only
when asked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load, save

from vitpareto.errors import VitParetoError
from vitpareto.files import atomic_dir, check_parent, read_bytes
from vitpareto.search.outputs._manifest import verify_dir, with_manifest
from vitpareto.search.outputs._schemas import ModelConfig, read_json
from vitpareto.spaces import Candidate, CompressedViT, ElasticViT, check_recipe, create_model

KIND = "vitpareto-model"
FORMAT = 1
CONFIG, WEIGHTS, METRICS = "config.json", "model.safetensors", "metrics.json"
MAX_WEIGHTS = 1 << 36  # bytes of model.safetensors (64 GiB)


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse to overwrite an existing path unless ``force``, a symbolic link even with it
    (replacing one would write where it points, or drop it), and a path that cannot be
    written; return the path."""
    path = Path(path)
    if path.is_symlink():
        raise VitParetoError(
            f"{str(path)!r} is a symbolic link (to {os.readlink(path)!r}); vitpareto neither "
            "writes through nor replaces one, even with --force: remove it or choose another "
            "--out"
        )
    if path.exists() and not force:
        raise VitParetoError(f"{str(path)!r} already exists; choose another path or pass --force")
    if path.exists() and not path.is_dir():
        raise VitParetoError(f"{str(path)!r} exists and is not a directory")
    check_parent(path, "output")
    return path


def model_files(
    model: CompressedViT,
    model_name: str,
    model_kwargs: dict[str, Any],
    classes: list[str],
    metrics: dict[str, Any],
    supernet_sha256: str | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The files of a model directory, ready for ``write_model_dir``."""
    config = {
        "kind": KIND,
        "format": FORMAT,
        "model": {"name": model_name, "kwargs": model_kwargs},
        "candidate": model.candidate.to_dict(),
        "classes": list(classes),
        "supernet_sha256": supernet_sha256,
    }
    if preprocessing:
        config["preprocessing"] = preprocessing
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save(state, metadata={"format": "pt"})
    config["weights_sha256"] = hashlib.sha256(weights).hexdigest()  # what studies record
    return {
        CONFIG: json.dumps(config, indent=2) + "\n",
        WEIGHTS: weights,
        METRICS: json.dumps(metrics, indent=2, default=float) + "\n",
    }


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a model directory, checked against its schema (kind, format,
    candidate, class names, hashes) and its model recipe against ``check_recipe``."""
    path = Path(path)
    if not path.is_dir():
        raise VitParetoError(f"{str(path)!r} is not a model directory (it does not exist)")
    if not (path / CONFIG).exists():
        raise VitParetoError(f"{str(path)!r} is not a vitpareto model directory: no {CONFIG}")
    cfg = read_json(path / CONFIG, ModelConfig, "vitpareto model config").model_dump()
    check_recipe(cfg["model"], str(path / CONFIG))
    return cfg


def load_model(path: str | os.PathLike, device: str = "cpu", trust: bool = False) -> CompressedViT:
    """Rebuild a saved compressed model (architecture from timm and the candidate, weights
    from safetensors, strictly: every tensor must fit), once every file matches the
    directory's manifest (``trust``: unchecked). Nothing is fetched: the recipe builds the
    architecture only."""
    path = Path(path)
    if path.is_dir():  # else read_config names what is wrong
        verify_dir(path, trust)
    cfg = read_config(path)
    weights = path / WEIGHTS
    if not weights.exists():
        raise VitParetoError(f"{str(path)!r} has no {WEIGHTS}")
    blob = read_bytes(weights, MAX_WEIGHTS, "weights")  # checked by the manifest above
    try:
        state = load(blob)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise VitParetoError(f"{str(weights)!r} is damaged: {e}") from None
    try:
        candidate = Candidate.from_dict(cfg["candidate"])
    except (VitParetoError, KeyError, TypeError, ValueError) as e:
        raise VitParetoError(f"{str(path / CONFIG)!r}: its candidate is invalid ({e})") from None
    model = rebuild(cfg["model"], candidate, state, str(path))
    if len(cfg["classes"]) != model.vit.num_classes:
        raise VitParetoError(
            f"{str(path / CONFIG)!r} names {len(cfg['classes'])} classes for a head of "
            f"{model.vit.num_classes}: export the model again"
        )
    return model.to(device).eval()


def rebuild(model_cfg: dict[str, Any], candidate: Candidate, state: dict, source: str):
    """The compressed model a recipe describes (timm name and options, candidate), filled
    strictly with ``state``: timm builds it, the candidate cuts it, the weights fill it."""
    name, kwargs = check_recipe(model_cfg, source)
    try:
        vit = create_model(name, pretrained=False, **kwargs)
        elastic = ElasticViT(vit, "identity", candidate.exits, exit_types=candidate.exit_types)
        model = elastic.extract(candidate)
    except VitParetoError:
        raise
    except Exception as e:  # a recipe read from a file: timm's own checks, in one line
        raise VitParetoError(
            f"the model recipe in {source!r} cannot be built ({type(e).__name__}: {_line(e)})"
        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise VitParetoError(
            f"the weights in {source!r} do not fit its config.json ({_line(e)}): export it again"
        ) from None
    return model.eval()


def _line(e: Exception, limit: int = 300) -> str:
    """An exception's text in one line, cut at ``limit`` characters (torch lists keys)."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def write_model_dir(path: str | os.PathLike, files: dict[str, Any], force: bool = False) -> Path:
    """Write a model directory's ``files`` in one rename (replacing ``path`` only when
    ``force``), with the manifest of every file (see ``with_manifest``)."""
    return atomic_dir(check_writable(path, force), with_manifest(files), replace=force)


def save_finetuned(path: str | os.PathLike, result, supernet, force: bool = False) -> Path:
    """Write a fine-tuned candidate (``finetune``'s result) as a standalone model directory."""
    files = model_files(
        result.model,
        supernet.model_name,
        supernet.model_kwargs,
        supernet.data["classes"],
        result.metrics,
        supernet.sha256,
    )
    return write_model_dir(path, files, force=force)
