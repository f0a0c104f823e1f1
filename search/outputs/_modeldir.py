"""Standalone compressed models on disk: a recipe, not a pickle.

A model directory holds ``config.json`` (the timm model name and options, the candidate,
the class names and the supernet's SHA-256), ``model.safetensors`` (the weights of the
compressed model only) and ``metrics.json``. ``load_model`` rebuilds the module through
a pure function: timm builds the architecture, the candidate cuts it, the weights fill it.
Writes are atomic: a directory is complete or absent, and an existing one is replaced only
when asked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from vitpareto.errors import VitParetoError
from vitpareto.files import atomic_dir, check_parent
from vitpareto.spaces import Candidate, CompressedViT, ElasticViT, create_model

KIND = "vitpareto-model"
FORMAT = 1
CONFIG, WEIGHTS, METRICS = "config.json", "model.safetensors", "metrics.json"


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse to overwrite an existing path unless ``force``, and a path that cannot be
    written; return the path."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not force):
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
    return {
        CONFIG: json.dumps(config, indent=2) + "\n",
        WEIGHTS: lambda dest: save_file(state, str(dest), metadata={"format": "pt"}),
        METRICS: json.dumps(metrics, indent=2, default=float) + "\n",
    }


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a model directory, checked."""
    path = Path(path)
    cfg_path = path / CONFIG
    if not path.is_dir():
        raise VitParetoError(f"{str(path)!r} is not a model directory (it does not exist)")
    if not cfg_path.is_file():
        raise VitParetoError(f"{str(path)!r} is not a vitpareto model directory: no {CONFIG}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VitParetoError(f"{str(cfg_path)!r} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("kind") != KIND:
        raise VitParetoError(f"{str(cfg_path)!r} is not a vitpareto model config")
    if cfg.get("format") != FORMAT:
        raise VitParetoError(
            f"{str(cfg_path)!r} has format {cfg.get('format')}, this vitpareto reads {FORMAT}"
        )
    return cfg


def load_model(path: str | os.PathLike, device: str = "cpu") -> CompressedViT:
    """Rebuild a saved compressed model (architecture from timm and the candidate, weights
    from safetensors, strictly: every tensor must fit)."""
    path = Path(path)
    cfg = read_config(path)
    try:
        state = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise VitParetoError(f"{str(path)!r} has no {WEIGHTS}") from None
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise VitParetoError(f"{str(path / WEIGHTS)!r} is damaged: {e}") from None
    model = rebuild(cfg["model"], Candidate.from_dict(cfg["candidate"]), state, str(path))
    return model.to(device).eval()


def rebuild(model_cfg: dict[str, Any], candidate: Candidate, state: dict, source: str):
    """The compressed model a recipe describes (timm name and options, candidate), filled
    strictly with ``state``: timm builds it, the candidate cuts it, the weights fill it."""
    vit = create_model(model_cfg["name"], **model_cfg["kwargs"])
    model = ElasticViT(vit, importance="identity", exit_blocks=candidate.exits).extract(candidate)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise VitParetoError(f"the weights in {source!r} do not fit its config: {e}") from None
    return model.eval()


def write_model_dir(path: str | os.PathLike, files: dict[str, Any], force: bool = False) -> Path:
    """Write a model directory's ``files`` in one rename (replacing ``path`` only when
    ``force``)."""
    return atomic_dir(check_writable(path, force), files, replace=force)


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
