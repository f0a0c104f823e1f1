"""Building the timm ViT a user names, with one clear error for every way that can fail."""

from __future__ import annotations

import difflib
import hashlib
import pickle
import re
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

from vitpareto.bounds import MAX_IMG_SIZE, memory_bytes
from vitpareto.errors import VitParetoError
from vitpareto.spaces._spec import describe

MAX_SIDE = MAX_IMG_SIZE  # pixels: larger inputs are a mistake, not a ViT
READABLE = (  # what a weights file other than a vitpareto checkpoint may be
    "is not a checkpoint vitpareto can read: give a state dict saved by "
    "torch.save (.pt, .pth, .bin; optionally under 'state_dict', 'model' or 'model_ema') "
    "or a .safetensors file"
)
_BOUNDS = (  # option, lowest, highest of a recipe read from a file
    ("img_size", 0, MAX_SIDE),
    ("patch_size", 0, MAX_SIDE),
    ("num_classes", 0, 10**6),
    ("in_chans", 1, 1024),
    ("depth", 1, 256),
    ("embed_dim", 1, 65536),
    ("num_heads", 1, 1024),
)
# timm options that would load weights from elsewhere: a recipe read from a file (a
# checkpoint, a model directory, a study) builds the architecture only
_FETCHING = (
    "pretrained",
    "checkpoint_path",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "cache_dir",
)


def check_recipe(recipe, where: str) -> tuple[str, dict]:
    """The (timm name, options) of a model recipe read from a file, checked: a mapping with
    a ``name`` string and ``kwargs`` mapping, no option that fetches or loads weights, and
    image, patch and class counts in range. ``where`` names the file in the error."""
    if not isinstance(recipe, dict) or not isinstance(recipe.get("name"), str):
        raise VitParetoError(f"{where}: the model must be a mapping with a timm `name`")
    kwargs = recipe.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(
        isinstance(k, str) and k.isidentifier() for k in kwargs
    ):
        raise VitParetoError(
            f"{where}: the model's `kwargs` must be a mapping of timm option names "
            "(Python identifiers) to values"
        )
    fetching = sorted(set(kwargs) & set(_FETCHING))
    if fetching:
        raise VitParetoError(
            f"{where}: the model options {fetching} would load weights from elsewhere; a "
            "recipe builds the architecture only (remove them)"
        )
    for key, low, high in _BOUNDS:
        v = kwargs.get(key)
        values = v if isinstance(v, (list, tuple)) else [v]
        if v is not None and not all(
            isinstance(x, int) and not isinstance(x, bool) and low <= x <= high for x in values
        ):
            raise VitParetoError(
                f"{where}: the model's {key} {v!r} is out of range ({low} to {high})"
            )
    _check_size(kwargs, where)
    return recipe["name"], dict(kwargs)


def _check_size(kwargs: dict, where: str) -> None:
    """Refuse a recipe whose float32 weights alone would not fit this machine's memory
    (timm's defaults stand in for the sizes it does not give), before anything is built."""
    ratio = kwargs.get("mlp_ratio", 4.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 64:
        raise VitParetoError(f"{where}: the model's mlp_ratio {ratio!r} is out of range (0 to 64]")
    width, depth = kwargs.get("embed_dim", 768), kwargs.get("depth", 12)
    if not (isinstance(width, int) and isinstance(depth, int)):
        raise VitParetoError(f"{where}: the model's depth and embed_dim must be whole numbers")
    need = 4 * depth * width * width * (4 + 2 * ratio)
    have = memory_bytes()
    if have and need > have:
        raise VitParetoError(
            f"{where}: the model's weights alone (depth {depth}, embed_dim {width}) would take "
            f"{need / 2**30:.0f} GiB; this machine has {have / 2**30:.0f} GiB"
        )


def create_model(
    name: str, pretrained: bool = False, checkpoint: str | Path | None = None, **kwargs
) -> nn.Module:
    """A timm ViT by name (random init, ``pretrained`` weights, or a ``checkpoint`` file).

    Raises ``VitParetoError`` for a name timm does not know, a model vitpareto cannot
    compress, weights that cannot be downloaded and a checkpoint that does not fit.
    """

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = (
            f"; did you mean {', '.join(close)}?" if close else "; see `timm.list_models('*vit*')`"
        )
        raise VitParetoError(f"unknown timm model {name!r}{hint}")
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise VitParetoError(f"model {name!r} does not accept these options: {e}") from None
    except (OSError, RuntimeError) as e:
        if not pretrained:
            raise
        raise VitParetoError(
            f"could not load pretrained weights for {name!r} ({type(e).__name__}); without "
            "network access pass a local file with --checkpoint instead"
        ) from None
    describe(model)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict file (safely: tensors only) into ``model``; strict about fit."""
    return load_state(model, _read_state(Path(path)), f"checkpoint {str(path)!r}")


def read_torch(path: str | Path, where: str, unreadable: str) -> Any:
    """``torch.load`` of tensors and plain values only (no code runs), its failures as one
    line: a file holding code or other objects is named as such, never with torch's advice
    to load it unsafely; any other failure reads ``where`` + ``unreadable`` (in which
    ``{error}`` stands for the failure's type)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors: all one thing to a user
        # torch names the function or class a refused file would have called (a GLOBAL);
        # other refusals are of bytes that are no pickle at all
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and found:
            raise VitParetoError(
                f"{where} holds code or objects other than tensors ({found.group(1)}); "
                "vitpareto loads weights only and never runs code from a file: save the "
                "weights alone (torch.save(model.state_dict(), PATH)) or as .safetensors"
            ) from None
        raise VitParetoError(f"{where} {unreadable.format(error=type(e).__name__)}") from None


def _read_state(path: Path) -> dict:
    """The state dict of a weights file (.safetensors, or torch.save'd, perhaps under
    'state_dict', 'model' or 'model_ema'), every tensor finite; one line otherwise."""
    where = f"checkpoint {str(path)!r}"
    if not path.exists():
        raise VitParetoError(f"{where} does not exist")
    if not path.is_file():
        raise VitParetoError(f"{where} is not a regular file")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise VitParetoError(f"{where} is not a readable safetensors file: {e}") from None
    else:
        state = read_torch(path, where, READABLE)
    for key in ("state_dict", "model", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise VitParetoError(f"{where} holds no state dict")
    _check_finite(state, where)
    return state


def _check_finite(state: dict, where: str) -> None:
    """Refuse weights that are NaN or infinite, naming the first such tensor: they come
    from a run that diverged, and training on them would only fail later, misleadingly."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise VitParetoError(
                f"{where} holds values that are not finite (NaN or inf) in {name!r}: the run "
                "that saved it diverged; give weights saved before it did"
            )


def load_state(model: nn.Module, state: dict, where: str) -> nn.Module:
    """Load the state dict ``state`` (named ``where`` in messages) into ``model``; strict
    about fit, with what does not fit named."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", shapes),
        ):
            if keys:
                parts.append(
                    f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                )
        raise VitParetoError(
            f"{where} does not match the model: {'; '.join(parts)}; "
            "was it saved from another architecture or image size?"
        )
    model.load_state_dict(state)
    return model


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the weights' names, shapes, dtypes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
