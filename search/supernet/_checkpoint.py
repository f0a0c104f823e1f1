"""Supernet checkpoints: everything needed to rebuild, resume and trust a trained supernet.

A checkpoint is a ``torch.save`` file of tensors and plain Python values only, so it loads
with ``weights_only=True`` (no code runs on load). It holds the timm model name and
options, the search space, the importance orders, the weights, the optimizer and schedule
state, the training config, the dataset spec and class names, metrics, a SHA-256 of the
weights that the results database records, and a SHA-256 of everything else; loading
verifies both, the entries' types and that every number is finite.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitpareto.errors import VitParetoError
from vitpareto.evaluators import load_data
from vitpareto.files import atomic_write
from vitpareto.search.supernet._integrity import check_schema, first_non_finite, payload_sha256
from vitpareto.spaces import (
    ElasticViT,
    JointSpace,
    create_model,
    load_state,
    read_torch,
    weights_sha256,
)

KIND = "vitpareto-supernet"
FORMAT = 1


@dataclass
class Supernet:
    """A loaded supernet: the elastic model, its space and what the checkpoint recorded."""

    elastic: ElasticViT
    space: JointSpace
    model_name: str
    model_kwargs: dict[str, Any]
    data: dict[str, Any]
    sha256: str
    meta: dict[str, Any] = field(
        default_factory=dict
    )  # init, importance, step, epoch, config, metrics
    train_state: dict[str, Any] = field(default_factory=dict)  # optimizer and schedule
    path: Path | None = None  # the checkpoint file it was loaded from

    @property
    def importance(self) -> dict[str, Any]:
        """How the weights' heads and channels were ranked (checkpoints from before the
        criteria were recorded: magnitude for trained weights, none for random ones)."""
        got = self.meta.get("importance")
        if isinstance(got, dict) and isinstance(got.get("criterion"), str):
            return dict(got)
        return {
            "criterion": "identity" if self.meta.get("init", "random") == "random" else "magnitude"
        }

    def load_data(self, batch_size: int = 64, seed: int | None = None, workers: int = 0):
        """The dataset the supernet was trained on, at its image size, split as in training
        (``seed`` defaults to the training seed: another one would score accuracy on
        training images; the official test split held out where the run held it out);
        refused when the data on disk now has other classes."""

        if seed is None:
            seed = int((self.meta.get("config") or {}).get("seed", 0))

        data = load_data(
            self.data["spec"],
            self.elastic.spec.img_size,
            batch_size=batch_size,
            seed=seed,
            num_workers=workers,
            holdout=bool(self.data.get("holdout", False)),  # older runs validated on test
            channels=self.elastic.spec.in_chans,
        )
        if list(data.classes) != list(self.data["classes"]):
            raise VitParetoError(
                f"dataset {self.data['spec']!r} now has classes {data.classes[:5]}..., the "
                f"supernet was trained on {self.data['classes'][:5]}...; it needs the same data"
            )
        return data


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> str:
    """Write ``payload`` (with the weights' SHA-256 added) atomically; return the hash."""
    bad = first_non_finite(payload["state_dict"])
    if bad is not None:
        kept = (
            f"{str(path)!r} keeps its last good epoch"
            if Path(path).exists()
            else f"nothing was written to {str(path)!r}"
        )
        raise VitParetoError(
            f"training diverged: the weights are not finite ({bad.strip('/')}); {kept}; "
            "train again with a lower --lr"
        )
    digest = weights_sha256(payload["state_dict"])
    payload = {**payload, "kind": KIND, "format": FORMAT, "sha256": digest}
    payload["payload_sha256"] = payload_sha256(payload)
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except OSError as e:
        raise VitParetoError(
            f"cannot write checkpoint {str(path)!r} ({e.strerror or e}); the file keeps its "
            "last complete epoch: free some space (or choose another --out) and --resume"
        ) from None
    return digest


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict, after checking it is a whole vitpareto supernet checkpoint."""
    path = Path(path)
    if not path.exists():
        raise VitParetoError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file() or not stat.S_ISREG(os.stat(path).st_mode):
        raise VitParetoError(f"checkpoint {str(path)!r} is not a regular file")
    ckpt = read_torch(
        path,
        f"checkpoint {str(path)!r}",
        "is corrupted or not a torch file ({error}); train again or restore it from a copy",
    )
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise VitParetoError(
            f"{str(path)!r} is not a vitpareto supernet checkpoint (make one with `vitpareto "
            "train`; plain timm weights go to --checkpoint of `vitpareto train`)"
        )
    if ckpt.get("format") != FORMAT:
        raise VitParetoError(
            f"checkpoint {str(path)!r} has format {ckpt.get('format')}, this vitpareto reads {FORMAT}"
        )
    where = f"checkpoint {str(path)!r}"
    check_schema(ckpt, where)
    if weights_sha256(ckpt["state_dict"]) != ckpt.get("sha256"):
        raise VitParetoError(f"{where} is corrupted: its weights do not match their SHA-256")
    if "payload_sha256" in ckpt and payload_sha256(ckpt) != ckpt["payload_sha256"]:
        raise VitParetoError(
            f"{where} is corrupted: its optimizer state, schedule or settings do not match "
            "their SHA-256; restore it from a copy"
        )
    bad = first_non_finite({k: ckpt.get(k) for k in ("state_dict", "optimizer")})
    if bad is not None:
        raise VitParetoError(
            f"{where} holds values that are not finite ({bad.strip('/')}): the run it "
            "comes from diverged; restore an earlier copy or train again with a lower --lr"
        )
    return ckpt


def load_supernet(path: str | os.PathLike, device: str = "cpu") -> Supernet:
    """Rebuild the elastic model of a checkpoint (weights verified against their hash)."""
    ckpt = read_checkpoint(path)
    model = create_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    elastic = ElasticViT(model, importance="identity", exit_blocks=ckpt["exit_blocks"])
    # the other designs' heads, by block (a checkpoint made before designs has none)
    for design, blocks in ckpt.get("exit_designs", {}).items():
        elastic.hold([design], blocks)
    try:
        elastic.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise VitParetoError(f"checkpoint {str(path)!r} does not fit its own model: {e}") from None
    elastic.orders = ckpt["orders"]
    space = JointSpace.from_dict(ckpt["space"], elastic)
    return Supernet(
        elastic=elastic.to(device),
        space=space,
        model_name=ckpt["model"]["name"],
        model_kwargs=dict(ckpt["model"]["kwargs"]),
        data=dict(ckpt["data"]),
        sha256=ckpt["sha256"],
        meta={
            k: ckpt[k]
            for k in (
                "init",
                "importance",
                "teacher",
                "step",
                "epoch",
                "config",
                "metrics",
                "exit_training",
                "source",
            )
            if k in ckpt
        },
        train_state={k: ckpt[k] for k in ("optimizer", "scheduler") if k in ckpt},
        path=Path(path),
    )


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a checkpoint vitpareto wrote (rather than a plain state dict)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file at all: the reader that follows names the problem
        return False
    return isinstance(ckpt, dict) and ckpt.get("kind") == KIND


def base_model(name: str, pretrained: bool, checkpoint, kwargs: dict[str, Any]):
    """The timm model ``name`` with its weights: timm's pretrained ones, a state-dict file,
    or the full model of a checkpoint vitpareto wrote (``train --plain``, a supernet),
    whose weights are verified against their hash first."""
    if checkpoint is None or not is_checkpoint(checkpoint):
        return create_model(name, pretrained=pretrained, checkpoint=checkpoint, **kwargs)
    ckpt = read_checkpoint(checkpoint)
    if ckpt["model"]["name"] != name:
        raise VitParetoError(
            f"{str(checkpoint)!r} holds {ckpt['model']['name']}, not {name}: give --model "
            f"{ckpt['model']['name']}, or give the checkpoint itself as --model"
        )
    full = load_supernet(checkpoint).elastic.vit.state_dict()
    return load_state(create_model(name, **kwargs), full, f"checkpoint {str(checkpoint)!r}")
