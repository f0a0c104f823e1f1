"""The ``train`` and ``finetune`` commands."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

from vitpareto.errors import VitParetoError
from vitpareto.files import check_parent, read_text
from vitpareto.search.cli._common import (
    MAX_JSON,
    check_patch,
    device_args,
    read_candidate,
    setup_threads,
    storage_arg,
)
from vitpareto.search.explore import load_study
from vitpareto.search.outputs import check_writable, pick_trials, save_finetuned
from vitpareto.search.supernet import (
    FinetuneConfig,
    SupernetTrainer,
    TrainConfig,
    finetune,
    load_supernet,
    load_teacher,
)
from vitpareto.spaces import CALIBRATION_BATCHES, CRITERIA, Candidate, needs_data

# options that set TrainConfig fields of the same name
_TRAIN_OPTIONS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "label_smoothing",
    "random_candidates",
    "distill",
    "seed",
)
# everything a checkpoint fixes: refused beside --resume
_RUN_SETTINGS = (
    *_TRAIN_OPTIONS,
    "model",
    "img_size",
    "patch_size",
    "num_classes",
    "dataset",
    "space",
    "pretrained",
    "checkpoint",
    "plain",
    "importance",
    "calibration_batches",
    "teacher",
    "teacher_pretrained",
    "teacher_weights",
)


def add_parsers(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a supernet: one set of weights for every candidate of a space",
        description="Train a timm ViT as a supernet with the sandwich rule: each step trains the "
        "full model on the labels and the space's smallest candidate plus N random ones (each "
        "with its own patch size, token keep ratios, heads and channels) by distillation from "
        "the full model; every early-exit head is distilled too. AdamW, warm-up then cosine, "
        "label smoothing, bf16 on GPUs. The checkpoint is written atomically after every "
        "epoch; --resume continues an interrupted run exactly.",
        epilog="example: vitpareto train --model test_vit --img-size 32 --patch-size 8 "
        "--dataset digits --epochs 10 --batch-size 16 --out results/digits.pt",
    )
    t.add_argument(
        "--model",
        help="timm model name, or a .yaml/.json file with `name:` and `kwargs:` (timm options)",
    )
    t.add_argument("--img-size", type=int, help="input image side (default: the model's)")
    t.add_argument("--patch-size", type=int, help="base patch side (default: the model's)")
    t.add_argument("--dataset", help="digits, fashion-mnist[:DIR], imagefolder:PATH, cifar10:PATH")
    t.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    t.add_argument("--space", type=Path, help="search space file (default: the model's default)")
    t.add_argument("--pretrained", action="store_true", help="start from timm's pretrained weights")
    t.add_argument(
        "--checkpoint", type=Path, help="start from a state dict file (.pth/.safetensors)"
    )
    t.add_argument(
        "--num-classes", type=int, help="classes of --checkpoint's head (default: the model's)"
    )
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument(
        "--plain",
        action="store_true",
        help="train the full model alone on the labels (no sandwich rule, no exit heads): the "
        "normal-training baseline",
    )
    r = t.add_argument_group("ranking trained weights (--pretrained, --checkpoint)")
    r.add_argument(
        "--importance",
        choices=[c for c in CRITERIA if c != "identity"],
        help="how heads, q/k channels and MLP channels are ranked before training, so that "
        "every candidate keeps the most important ones: magnitude (weights only, the "
        "default), or on calibration batches of the training set: taylor (|weight x "
        "gradient|), similarity (what a part adds that the parts ranked before it do not "
        "carry), attention (what a part does to the class token)",
    )
    r.add_argument(
        "--calibration-batches",
        type=int,
        help=f"training batches the data-driven criteria read (default: {CALIBRATION_BATCHES})",
    )
    teacher_args(t)
    g = t.add_argument_group("training")
    g.add_argument("--epochs", type=int, help="epochs (default: 10)")
    g.add_argument("--batch-size", type=int, help="images per step (default: 64)")
    g.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: 0.05)")
    g.add_argument("--warmup-epochs", type=float, help="linear warm-up epochs (default: 1)")
    g.add_argument("--label-smoothing", type=float, help="(default: 0.1)")
    g.add_argument(
        "--random-candidates",
        type=int,
        help="random students per step, besides the smallest (default: 2)",
    )
    g.add_argument(
        "--distill",
        type=float,
        help="weight of distillation against labels for students and exits (default: 0.5)",
    )
    g.add_argument(
        "--seed", type=int, help="seed of init, data split and order, sampling (default: 0)"
    )
    device_args(t)
    t.set_defaults(handler=cmd_train)

    finetune_parser(sub)


def finetune_parser(sub) -> None:
    """`vitpareto finetune`: one trial fine-tuned into a standalone model."""
    f = sub.add_parser(
        "finetune",
        help="fine-tune one candidate with distillation and save it as a standalone model",
        description="Cut a candidate out of a supernet as a physically smaller model, train it "
        "for --steps steps with the supernet's full model as teacher, score it on the "
        "supernet's validation set before and after, and save it (safetensors weights, "
        "config.json, metrics.json) to --out.",
    )
    f.add_argument("--supernet", type=Path, required=True, help="checkpoint from `vitpareto train`")
    which = f.add_mutually_exclusive_group(required=True)
    which.add_argument("--candidate", help="candidate as JSON text or a .json file")
    which.add_argument("--trial", type=int, metavar="N", help="the candidate of trial N of --study")
    f.add_argument("--study", help="study of --trial")
    storage_arg(f, help="results database of --study")
    f.add_argument("--out", type=Path, required=True, help="model directory to write")
    f.add_argument("--force", action="store_true", help="replace --out if it exists")
    f.add_argument("--steps", type=int, default=200, help="training steps (default: 200)")
    f.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    f.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default: 5e-4)")
    f.add_argument(
        "--distill", type=float, default=0.7, help="weight of distillation against labels (0.7)"
    )
    f.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    teacher_args(f)
    device_args(f)
    f.set_defaults(handler=cmd_finetune)


def _trial_candidate(storage: str, study: str | None, number: int, supernet) -> Candidate:
    """The candidate a search trial stored, from a study of this supernet."""
    if not study:
        raise VitParetoError("--trial needs --study (and --storage unless the default)")
    st = load_study(storage, study)
    if st.user_attrs.get("supernet_sha256") not in (None, supernet.sha256):
        raise VitParetoError(
            f"study {study!r} searched another supernet (SHA-256 differs from --supernet); "
            "give the supernet it searched"
        )
    (trial,) = pick_trials(st, [number], pareto=False)
    return Candidate.from_dict(trial.user_attrs["candidate"])


def _recipe(name: str, option: str) -> tuple[str, dict]:
    """A timm name, or a config file's `name:` and `kwargs:`."""
    if not name.endswith((".yaml", ".yml", ".json")):
        return name, {}
    try:
        cfg = yaml.safe_load(read_text(name, MAX_JSON, f"{option}: model config"))
    except yaml.YAMLError as e:
        raise VitParetoError(f"{option}: {name!r} is not valid YAML/JSON: {e}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str):
        raise VitParetoError(
            f"{option}: {name!r} needs a `name:` (a timm model) and optional `kwargs:`"
        )
    return cfg["name"], dict(cfg.get("kwargs") or {})


def _teacher(args):
    """The external teacher of --teacher, or None."""
    if args.teacher is None:
        if args.teacher_pretrained or args.teacher_weights:
            raise VitParetoError("--teacher-pretrained and --teacher-weights need --teacher")
        return None
    name, kwargs = _recipe(args.teacher, "--teacher")
    return load_teacher(name, kwargs, args.teacher_pretrained, args.teacher_weights)


def teacher_args(parser) -> None:
    """--teacher and its weights, shared by train and finetune."""
    g = parser.add_argument_group("external teacher (AttentionLite-style distillation)")
    g.add_argument(
        "--teacher",
        help="distil from this larger trained model instead of the full model: a vitpareto "
        "checkpoint (its full model; `train --plain` makes one), or a timm name or "
        ".yaml/.json model file with --teacher-pretrained or --teacher-weights; it must "
        "take the dataset's images and classes",
    )
    g.add_argument("--teacher-pretrained", action="store_true", help="timm's weights for it")
    g.add_argument("--teacher-weights", type=Path, help="a state dict file for it")


def model_spec(args) -> tuple[str, dict]:
    """--model as a timm name or a config file (over a vitpareto checkpoint's own options,
    see ``own_model``), plus --img-size, --patch-size and --num-classes."""
    name, kwargs = _recipe(args.model, "--model")
    kwargs = {**getattr(args, "base_kwargs", {}), **kwargs}
    for key in ("img_size", "patch_size", "num_classes"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return name, kwargs


def _check_train(args) -> None:
    """What the options say together, and the output path, checked before any work (each
    number alone is checked by ``main`` against the table of bounds)."""
    check_patch(args)
    if args.calibration_batches is not None and not needs_data(args.importance or "magnitude"):
        raise VitParetoError(
            "--calibration-batches is for --importance taylor, similarity or attention"
        )
    check_parent(args.out, "--out")
    if args.out.exists() and not args.out.is_file():
        raise VitParetoError(f"--out {str(args.out)!r} is not a file")


def _check_room(trainer, out: Path) -> None:
    """Refuse a run whose checkpoint (weights, two AdamW moments) cannot fit beside ``out``."""
    need = 3 * sum(p.numel() * p.element_size() for p in trainer.elastic.parameters())
    where = next(p for p in out.absolute().parents if p.exists())
    free = shutil.disk_usage(where).free
    if free < need + (1 << 20):
        raise VitParetoError(
            f"--out {str(out)!r}: its disk has {free / 2**20:.1f} MiB free, a checkpoint of this "
            f"model needs about {need / 2**20:.1f} MiB; free some space or choose another --out"
        )


def _new_trainer(args, given: dict) -> SupernetTrainer:
    """The trainer of a new run (after checking the options), its plan printed."""
    if not args.model or not args.dataset:
        raise VitParetoError("train needs --model and --dataset (or --resume)")
    if args.out.exists():
        raise VitParetoError(
            f"{str(args.out)!r} already exists; pass --resume to continue it, or choose "
            "another --out"
        )
    if args.num_classes is not None and args.checkpoint is None:
        raise VitParetoError(
            "--num-classes describes --checkpoint's head; the dataset sets the rest"
        )
    name, kwargs = model_spec(args)
    config = TrainConfig(sandwich=not args.plain, **given)
    if args.plain and args.teacher:
        raise VitParetoError("--plain trains on the labels alone; drop --teacher")
    teacher = _teacher(args)
    trainer = SupernetTrainer.create(
        name,
        args.dataset,
        config,
        space=args.space,
        model_kwargs=kwargs,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        device=args.device,
        workers=args.workers,
        importance=args.importance,
        calibration_batches=args.calibration_batches or CALIBRATION_BATCHES,
        teacher=teacher,
    )
    _check_room(trainer, args.out)
    n = trainer.elastic.spec
    print(
        f"training {name} ({n.depth} blocks, {n.num_heads} heads, embed {n.embed_dim}, "
        f"{n.img_size[0]} px, patch {n.patch_size}) on {args.dataset} "
        f"({len(trainer.data.classes)} classes), {trainer.space.size():,} candidates, "
        f"{config.epochs} epochs of {trainer.steps_per_epoch} steps",
        file=sys.stderr,
    )
    return trainer


def cmd_train(args) -> int:
    setup_threads(args)
    _check_train(args)
    given = {k: getattr(args, k) for k in _TRAIN_OPTIONS if getattr(args, k) is not None}
    if args.resume:
        extra = [
            f"--{k.replace('_', '-')}"
            for k in _RUN_SETTINGS
            if getattr(args, k) not in (None, False)
        ]
        if extra:
            raise VitParetoError(
                f"--resume takes every setting from the checkpoint; drop {', '.join(extra)}"
            )
        trainer = SupernetTrainer.resume(args.out, device=args.device, workers=args.workers)
        if trainer.epoch >= trainer.config.epochs:
            print(f"{args.out} has finished all {trainer.config.epochs} epochs; nothing to resume")
            return 0
        print(
            f"resuming {args.out} at epoch {trainer.epoch}/{trainer.config.epochs}", file=sys.stderr
        )
    else:
        trainer = _new_trainer(args, given)
    try:
        last = trainer.fit(args.out)
    except KeyboardInterrupt:
        print(
            f"interrupted in epoch {trainer.epoch + 1}; {args.out} holds epoch {trainer.epoch}: "
            "continue with --resume",
            file=sys.stderr,
        )
        return 130
    print(
        json.dumps(
            {
                "checkpoint": str(args.out),
                "sha256": trainer.sha256 or trainer.save(args.out),
                "epochs": trainer.epoch,
                "steps": trainer.step,
                "full_accuracy": last.get("full_accuracy"),
                "smallest_accuracy": last.get("smallest_accuracy"),
                "train_seconds": round(trainer.seconds, 1),
            },
            indent=2,
        )
    )
    return 0


def cmd_finetune(args) -> int:
    setup_threads(args)
    check_writable(args.out, args.force)
    config = FinetuneConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        distill=args.distill,
        seed=args.seed,
    )
    supernet = load_supernet(args.supernet)
    if args.trial is not None:
        candidate = _trial_candidate(args.storage, args.study, args.trial, supernet)
    else:
        candidate = read_candidate(args.candidate)
    candidate = candidate.validate(supernet.elastic.spec)
    teacher = _teacher(args)
    result = finetune(
        supernet, candidate, config, device=args.device, workers=args.workers, teacher=teacher
    )
    save_finetuned(args.out, result, supernet, force=args.force)
    m = result.metrics
    print(
        f"accuracy {m['shared_accuracy']:.4f} on the shared weights -> {m['accuracy']:.4f} after "
        f"{config.steps} steps ({m['params']:,} parameters); wrote {args.out}"
    )
    return 0
