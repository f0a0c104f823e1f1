"""An external teacher: another, larger trained model the supernet and the fine-tuned front
distil from (AttentionLite distils from a compute-heavy teacher while it prunes).

A teacher is a timm model (random init is refused: it would teach nothing), with timm's
pretrained weights or a state-dict file, or the full model of a vitpareto checkpoint (a
model trained with ``train --plain``, say). What it was is recorded (name, options, the
file and the SHA-256 of its weights), so a resumed run and the front's fine-tune load the
same teacher, and refuse a file that changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vitpareto.errors import VitParetoError
from vitpareto.search.supernet._checkpoint import is_checkpoint, load_supernet, weights_sha256
from vitpareto.spaces import Candidate, create_model


def load_teacher(
    name: str,
    kwargs: dict[str, Any] | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher model (eval mode, no gradients) and its record.

    ``name``: a timm model name (with ``kwargs``, and ``pretrained`` or a ``weights``
    state-dict file), or the path of a vitpareto checkpoint, whose full model teaches.
    """
    path = Path(name).expanduser()
    # an existing file is a file whatever its suffix (`teacher.bin`, `best`): never a timm name
    looks_like_file = path.suffix in (".pt", ".pth") or "/" in name or path.is_file()
    if looks_like_file and not path.is_file():
        raise VitParetoError(
            f"teacher {name!r} is not a file; give a vitpareto checkpoint or a timm model name"
        )
    if looks_like_file and not is_checkpoint(path):
        raise VitParetoError(
            f"teacher {name!r} is not a vitpareto checkpoint; give a timm model name with "
            "--teacher-weights FILE for a state dict"
        )
    if looks_like_file:
        if pretrained or weights is not None:
            raise VitParetoError(
                f"teacher {name!r} is a vitpareto checkpoint: it brings its own weights; "
                "drop --teacher-pretrained and --teacher-weights"
            )
        net = load_supernet(path)
        model = net.elastic.extract(Candidate.full(net.elastic.spec))
        record = {"checkpoint": str(path.resolve()), "sha256": net.sha256}
    else:
        if not pretrained and weights is None:
            raise VitParetoError(
                f"teacher {name!r} would have random weights and teach nothing: add "
                "--teacher-pretrained, --teacher-weights FILE, or give a vitpareto checkpoint"
            )
        model = create_model(name, pretrained=pretrained, checkpoint=weights, **(kwargs or {}))
        record = {
            "name": name,
            "kwargs": dict(kwargs or {}),
            "pretrained": pretrained,
            "weights": str(Path(weights).resolve()) if weights is not None else None,
        }
    record["weights_sha256"] = weights_sha256(model.state_dict())
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, record


def check_teacher(
    model: nn.Module, num_classes: int, shape: tuple[int, int, int], record: dict[str, Any]
) -> None:
    """Refuse a teacher that cannot label this dataset's images: checked before training."""
    name = record.get("name") or record.get("checkpoint")
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape, device=next(model.parameters()).device))
    except (RuntimeError, AssertionError, ValueError) as e:
        raise VitParetoError(
            f"teacher {name!r} cannot take {shape[1]}x{shape[2]} images of {shape[0]} channels "
            f"({e}); give it the student's image size and channels (img_size and in_chans "
            "in its options)"
        ) from None
    if out.ndim != 2 or out.shape[-1] != num_classes:
        raise VitParetoError(
            f"teacher {name!r} has {out.shape[-1]} outputs, the dataset {num_classes} classes: "
            "give a teacher trained on this dataset"
        )


def reload_teacher(record: dict[str, Any]) -> nn.Module:
    """The teacher a checkpoint recorded, verified to be the same weights."""
    if "checkpoint" in record:
        model, got = load_teacher(record["checkpoint"])
    else:
        model, got = load_teacher(
            record["name"],
            record.get("kwargs"),
            record.get("pretrained", False),
            record.get("weights"),
        )
    if got["weights_sha256"] != record.get("weights_sha256"):
        where = record.get("checkpoint") or record.get("weights") or record.get("name")
        raise VitParetoError(
            f"the teacher this run recorded ({where}) has changed since: its weights differ; "
            "restore the teacher file it was trained with"
        )
    return model
