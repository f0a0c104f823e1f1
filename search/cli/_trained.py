"""``search --model``: search a model the user already trained, without training a supernet.

The model's heads and channels are ranked once (``--importance``, on calibration batches
of the training set for the data-driven criteria), and early-exit branches of every design
are added after the searched exit blocks: the backbone frozen, each branch distilled from
the model's own final head on ``--exit-images`` training images. The result is written as
a checkpoint beside the results database, so that a resumed search, the front's fine-tune
and ``export`` find the same weights. Its space keeps the knobs that need no training
(heads, q/k and MLP channels, blocks, token keep ratios reduced by pruning or by ToMe's
merging, patch size by PI-resize) and the exits (placement, design, threshold). The
front's second stage (``--finetune-front``) then repairs each front model, backbone and
exits together, by distillation from the original.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from vitpareto.errors import VitParetoError
from vitpareto.files import file_sha256
from vitpareto.search.cli._common import check_patch
from vitpareto.search.cli._train import model_spec
from vitpareto.search.explore import default_artifacts
from vitpareto.search.supernet import (
    SupernetTrainer,
    TrainConfig,
    is_checkpoint,
    load_supernet,
    read_checkpoint,
    train_exits,
)
from vitpareto.spaces import CALIBRATION_BATCHES, CRITERIA, EXIT_TYPES

# the options of this path, refused beside --supernet
OPTIONS = (
    "model",
    "dataset",
    "checkpoint",
    "pretrained",
    "num_classes",
    "img_size",
    "patch_size",
    "importance",
    "calibration_batches",
    "exit_images",
)


def trained_args(parser) -> None:
    g = parser.add_argument_group(
        "a model you already trained (instead of --supernet)",
        "--model with --checkpoint or --pretrained searches that model directly: no "
        "supernet training; heads and channels ranked by --importance; early-exit branches "
        "distilled from its own head on --exit-images training images, the backbone frozen; "
        "give --finetune-front STEPS to repair the front models by distillation from it",
    )
    g.add_argument(
        "--model",
        help="timm model name, a .yaml/.json file (name:, kwargs:), or a checkpoint vitpareto "
        "wrote (`train --plain`, a supernet: it names its model, options and dataset)",
    )
    g.add_argument("--dataset", help="the dataset it was trained on (as for `train`)")
    g.add_argument(
        "--checkpoint",
        type=Path,
        help="its weights: a .pth/.safetensors state dict, or a checkpoint vitpareto wrote",
    )
    g.add_argument("--pretrained", action="store_true", help="timm's pretrained weights")
    g.add_argument("--num-classes", type=int, help="classes of --checkpoint's head")
    g.add_argument("--img-size", type=int, help="input image side (default: the model's)")
    g.add_argument("--patch-size", type=int, help="base patch side (default: the model's)")
    g.add_argument(
        "--importance",
        choices=[c for c in CRITERIA if c != "identity"],
        help="how heads and channels are ranked: magnitude (default), taylor, similarity, "
        "attention (the last three on calibration batches; see `train --help`)",
    )
    g.add_argument(
        "--exit-images",
        type=int,
        metavar="N",
        help="training images the exit branches are distilled on, the backbone frozen "
        "(default: one pass over the training set; 0: no early exits)",
    )
    g.add_argument(
        "--calibration-batches",
        type=int,
        help=f"batches the data-driven criteria read (default: {CALIBRATION_BATCHES})",
    )


def check_trained_args(args) -> bool:
    """Whether this search is of a trained model; every option checked before any work
    (each number alone by ``main``, against the table of bounds)."""
    given = [o for o in OPTIONS if getattr(args, o) not in (None, False)]
    if args.supernet is not None:
        if given:
            flags = ", ".join(f"--{o.replace('_', '-')}" for o in given)
            raise VitParetoError(f"--supernet brings its own model and data; drop {flags}")
        return False
    if args.model is None:
        raise VitParetoError(
            "search needs --supernet CKPT (from `vitpareto train`), or --model with "
            "--dataset and --checkpoint or --pretrained for a model you already trained"
        )
    own_model(args)
    if not args.dataset:
        raise VitParetoError("--model needs --dataset: the data it was trained on")
    if args.checkpoint is None and not args.pretrained:
        raise VitParetoError(
            "--model needs trained weights: --checkpoint FILE or --pretrained (a randomly "
            "initialised model has nothing to search; train a supernet for that)"
        )
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise VitParetoError(f"--checkpoint {str(args.checkpoint)!r} is not a file")
    check_patch(args)
    args.importance = args.importance or "magnitude"
    args.calibration_batches = args.calibration_batches or CALIBRATION_BATCHES
    return True


def own_model(args) -> None:
    """--model naming a checkpoint vitpareto wrote (``train --plain``, a supernet, a
    fine-tune): it names its model, options and dataset and brings its weights, so it
    stands for --model, --checkpoint and (unless given) --dataset."""
    path = Path(args.model).expanduser()
    if path.suffix not in (".pt", ".pth") and "/" not in args.model:
        return  # a timm name, or a recipe file (.yaml, .json)
    if not path.is_file():
        raise VitParetoError(
            f"--model {args.model!r} is not a file; give a timm model name, a recipe file "
            "(.yaml/.json) or a checkpoint vitpareto wrote"
        )
    if not is_checkpoint(path):
        if path.suffix in (".yaml", ".yml", ".json"):
            return
        raise VitParetoError(
            f"--model {args.model!r} is not a checkpoint vitpareto wrote; for a plain state "
            "dict give the timm model name as --model and the file as --checkpoint"
        )
    if args.checkpoint is not None or args.pretrained:
        raise VitParetoError(
            f"--model {args.model!r} is a vitpareto checkpoint: it brings its own weights; "
            "drop --checkpoint and --pretrained"
        )
    ckpt = read_checkpoint(path)
    args.model, args.checkpoint = ckpt["model"]["name"], path
    args.base_kwargs = dict(ckpt["model"]["kwargs"])
    args.dataset = args.dataset or ckpt["data"]["spec"]


def ranked_supernet(args):
    """The ranked model as a loaded supernet, built on the first run of the study and
    reused by the next (refused when it was built from another model or ranking)."""
    name, kwargs = model_spec(args)
    where = args.artifacts or default_artifacts(args.storage)
    path = Path(where) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.study)}.model.pt"
    source = source_record(args, name, kwargs)
    if path.exists():
        net = load_supernet(path)
        got = dict(net.meta.get("source") or {})
        got.setdefault("exit images", (net.meta.get("exit_training") or {}).get("images", 0))
        want = {k: v for k, v in source.items() if k != "exit images" or v is not None}
        changed = [k for k in want if k in got and want[k] != got[k]]
        if changed:
            what = "; ".join(f"{k}: {got[k]} then, {want[k]} now" for k in changed)
            raise VitParetoError(
                f"study {args.study!r} searched a model ranked from other settings ({what}); "
                f"give them as before, or another --study (its ranked model: {path})"
            )
        return net
    trainer = _ranked(args, name, kwargs)
    trainer.source = {**source, "exit images": (trainer.exit_training or {}).get("images", 0)}
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save(path)
    exits = trainer.exit_training
    told = "no early exits"
    if exits:
        told = (
            f"exit branches distilled on {exits['images']:,} training images in "
            f"{exits['seconds']:.0f} s; validation accuracy by branch: "
            + ", ".join(f"{k} {v:.3f}" for k, v in exits["accuracy"].items())
        )
    print(
        f"ranked {name} by {args.importance} into {path} ({trainer.space.size():,} "
        f"candidates); {told}",
        file=sys.stderr,
    )
    return load_supernet(path)


def source_record(args, name: str, kwargs: dict) -> dict:
    """What a study's ranked model is built from, compared when the study resumes: the
    model and its options, the weights (their file's SHA-256), the data, the ranking and
    the exit branches' images (when given)."""
    weights = "timm pretrained" if args.pretrained else "sha256 " + file_sha256(args.checkpoint)
    return {
        "model": name,
        "options": dict(sorted(kwargs.items())),
        "weights": weights,
        "dataset": args.dataset,
        "importance": args.importance,
        "calibration batches": args.calibration_batches,
        "exit images": args.exit_images,
    }


def _ranked(args, name: str, kwargs: dict):
    """The user's model ranked, with exit branches of every design trained on it."""
    trainer = SupernetTrainer.create(
        name,
        args.dataset,
        TrainConfig(epochs=1),
        model_kwargs=kwargs,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        device=args.accuracy_device,
        importance=args.importance,
        calibration_batches=args.calibration_batches,
    )
    space = dataclasses.replace(trainer.space, fuse=None, token_mode=["prune", "merge"])
    images = len(trainer.data.train.dataset) if args.exit_images is None else args.exit_images
    if not images or space.exits is None:
        space = dataclasses.replace(space, exits=None, exit_threshold=None)
    else:
        space = dataclasses.replace(space, exit_types=EXIT_TYPES)
        trainer.elastic.hold(EXIT_TYPES, space.exits)
        trainer.exit_training = train_exits(
            trainer.elastic, trainer.data, space.exits, images, trainer.device,
            progress=not args.no_progress,
        )  # fmt: skip
    trainer.space = space.bind(trainer.elastic)
    return trainer
