"""Whether a supernet checkpoint can be trusted: its shape (every entry present and of the
right type), a SHA-256 over everything it holds, and finite numbers throughout.

A checkpoint is read from disk, where anything can have happened to it: a flipped byte
in the optimizer state would otherwise resume silently into nonsense, and a diverged run
(NaN weights) would replace a good checkpoint. Each problem is named with what to do.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch

from vitpareto.errors import VitParetoError
from vitpareto.spaces import check_recipe

# entry -> the type it must have
SCHEMA: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "state_dict": dict,
    "exit_blocks": list,
    "orders": list,
    "space": dict,
    "data": dict,
    "config": dict,
    "step": int,
    "epoch": int,
    "metrics": dict,
}


def check_schema(ckpt: dict[str, Any], where: str) -> None:
    """Every entry of a checkpoint present, of its type, and its model recipe safe."""
    for key, kind in SCHEMA.items():
        if not isinstance(ckpt.get(key), kind):
            got = "missing" if key not in ckpt else f"a {type(ckpt[key]).__name__}"
            raise VitParetoError(
                f"{where} is damaged: its entry {key!r} is {got}; restore it from a copy or "
                "train again"
            )
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in ckpt["state_dict"].items()):
        raise VitParetoError(f"{where} is damaged: its state_dict holds more than named tensors")
    data = ckpt["data"]
    if not isinstance(data.get("spec"), str) or not isinstance(data.get("classes"), list):
        raise VitParetoError(f"{where} is damaged: its dataset entry lacks a spec or classes")
    if not all(isinstance(b, int) for b in ckpt["exit_blocks"]):
        raise VitParetoError(f"{where} is damaged: its exit blocks are not block numbers")
    designs = ckpt.get("exit_designs", {})  # absent before exit designs: linear exits only
    if not isinstance(designs, dict) or not all(
        isinstance(t, str) and isinstance(b, list) and all(isinstance(i, int) for i in b)
        for t, b in designs.items()
    ):
        raise VitParetoError(f"{where} is damaged: its exit designs are not names and blocks")
    check_recipe(ckpt["model"], where)


def _tensors(obj: Any, path: str = ""):
    """(path, tensor) of every tensor inside nested dicts, lists and tuples."""
    if torch.is_tensor(obj):
        yield path, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}/{i}")


def _plain(obj: Any) -> Any:
    """``obj`` with tensors replaced by their place, for hashing the rest as JSON."""
    if torch.is_tensor(obj):
        return "<tensor>"
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    return obj


def payload_sha256(ckpt: dict[str, Any]) -> str:
    """SHA-256 of everything a checkpoint holds but this hash: every tensor (weights,
    optimizer and schedule state) by place, shape, dtype and bytes, then the rest as JSON."""
    body = {k: v for k, v in ckpt.items() if k != "payload_sha256"}
    h = hashlib.sha256()
    for path, t in _tensors(body):
        t = t.detach().cpu().contiguous()
        h.update(f"{path}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(_plain(body), sort_keys=True, default=str).encode())
    return h.hexdigest()


def first_non_finite(obj: Any) -> str | None:
    """Where the first NaN or infinite value of the floating tensors in ``obj`` is."""
    for path, t in _tensors(obj):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return path
    return None
