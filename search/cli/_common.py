"""Options and readers that several commands share; every check raises VitParetoError,
which ``main`` prints as one line with exit status 2. Each number alone is checked by
``main`` against the table of bounds (``vitpareto.bounds.OPTIONS``); what is checked here
is what several options say together."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitpareto.bounds import use_threads
from vitpareto.errors import VitParetoError
from vitpareto.files import read_text
from vitpareto.search.explore import DEFAULT_STORAGE
from vitpareto.spaces import Candidate, create_model

MAX_JSON = 1 << 20  # bytes of a candidate or model file


def storage_arg(p, help: str = f"Optuna storage URL ({DEFAULT_STORAGE})") -> None:
    """The results database option of every command that reads or writes one."""
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=help)


def model_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument(
        "--model",
        default=default,
        required=default is None,
        help="timm model name" + (f" (default: {default})" if default else ""),
    )
    p.add_argument("--img-size", type=int, help="input image side (default: the model's)")
    p.add_argument("--num-classes", type=int, help="classes of the head (default: the model's)")
    p.add_argument("--checkpoint", type=Path, help="weights file to load (state dict)")


def device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default: 0)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")


def check_patch(args) -> None:
    """--patch-size no larger than --img-size, when both are given."""
    given = args.patch_size is not None and args.img_size is not None
    if given and args.patch_size > args.img_size:
        raise VitParetoError(
            f"--patch-size {args.patch_size} is larger than --img-size {args.img_size}: "
            "a patch must fit in the image"
        )


def setup_threads(args) -> None:
    """torch's threads set to --threads (the table of bounds checked it)."""
    use_threads(args.threads)


def model_from_args(args):
    """The timm model of --model, --img-size, --num-classes and --checkpoint, in eval mode."""
    kwargs = {
        k: v
        for k, v in (("img_size", args.img_size), ("num_classes", args.num_classes))
        if v is not None
    }
    return create_model(args.model, checkpoint=args.checkpoint, **kwargs).eval()


def read_candidate(text: str) -> Candidate:
    """A candidate given as JSON text or as the path of a .json file."""
    if not text.lstrip().startswith("{"):
        if not Path(text).exists():
            raise VitParetoError(f"--candidate: {text!r} is neither JSON nor an existing file")
        text = read_text(text, MAX_JSON, "--candidate")
    return Candidate.from_json(text)


def candidate_or_full(args, model) -> Candidate:
    """The --candidate option; the full model when absent."""
    if args.candidate is None:
        return Candidate.full(model)
    return read_candidate(args.candidate).validate(model)
