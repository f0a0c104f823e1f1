"""Bounds on every number a user gives: one table, ``OPTIONS``, of each numeric option of
every command (by its argparse dest), and one of the environment's settings.

Each entry says whether the number is whole or a finite real, its lowest and highest
value and what it counts, so a number is refused the same way wherever it comes from (an
option of any command, ``metrics.json``, a stored config) and before any work starts: the
command line checks the whole table once, right after parsing. Counts of threads and
processes are bounded by what this machine has: torch and OpenMP crash the interpreter (a
segmentation fault, no message) when asked for 100,000 threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vitpareto.errors import VitParetoError

MAX_BATCH = 65536  # images in one forward pass
MAX_INPUT_SHARE = 0.25  # of this machine's memory, for one batch of input images
MAX_IMG_SIZE = 4096  # pixels per side: larger inputs are a mistake, not a ViT
MAX_SEED = 2**32 - 1  # NumPy's and Optuna's samplers take seeds of 32 bits


def cpus() -> int:
    """Logical CPUs of this machine."""
    return os.cpu_count() or 1


def memory_bytes() -> int:
    """Physical memory of this machine (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass(frozen=True)
class Bound:
    """One number a user gives: whole or a finite real, from ``low`` to ``high`` (a
    function of this machine where it depends on it), and ``what`` it counts, as read
    after "a whole number" or "a finite number". ``above``/``below``: the end itself is
    refused (a learning rate above 0); ``off``: 0 is allowed too, and means this."""

    whole: bool
    low: int | float
    high: int | float | Callable[[], int | float]
    what: str
    above: bool = False
    below: bool = False
    off: str | None = None

    def highest(self) -> int | float:
        return self.high() if callable(self.high) else self.high

    def allows(self, value: Any) -> bool:
        """Whether ``value`` is a number of this kind within the range."""
        if isinstance(value, bool) or not isinstance(value, int if self.whole else (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.off is not None and value == 0:
            return True
        high = self.highest()
        return (self.low < value if self.above else self.low <= value) and (
            value < high if self.below else value <= high
        )

    def describe(self) -> str:
        """The rule in words: "a whole number of CPU threads from 1 to 8"."""
        low, high = _number(self.low), _number(self.highest())
        if not (self.above or self.below):
            span = f"from {low} to {high}"
        else:
            span = f"{'above' if self.above else 'at least'} {low} and "
            span += f"{'below' if self.below else 'at most'} {high}"
        kind = "a whole number" if self.whole else "a finite number"
        text = f"{kind} {self.what} {span}"
        if self.high is cpus:
            text += f" (this machine has {cpus()} logical CPUs)"
        return f"0 ({self.off}) or {text}" if self.off else text

    def check(self, value: Any, label: str) -> Any:
        """``value`` if allowed, else one error naming ``label`` and the rule."""
        if not self.allows(value):
            raise VitParetoError(f"{label} must be {self.describe()}, got {_shown(value)}")
        return value


def _number(v: int | float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def _shown(value: Any) -> str:
    """A value as the user gave it, cut short where it is thousands of digits long."""
    if isinstance(value, int) and abs(value) >= 10**40:
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + "..."


def _whole(low: int, high, what: str, **kw) -> Bound:
    return Bound(True, low, high, what, **kw)


def _real(low: float, high: float, what: str, **kw) -> Bound:
    return Bound(False, low, high, what, **kw)


# every numeric option of every command, by argparse dest (a test walks the parsers)
OPTIONS: dict[str, Bound] = {
    # bounded by this machine
    "threads": _whole(1, cpus, "of CPU threads"),
    "workers": _whole(0, cpus, "of data loader processes"),
    "jobs": _whole(1, cpus, "of worker processes"),
    "batch": _whole(1, MAX_BATCH, "of images per forward pass"),
    "batch_size": _whole(1, MAX_BATCH, "of images per training step"),
    # the model and its data
    "img_size": _whole(1, MAX_IMG_SIZE, "of pixels per image side"),
    "patch_size": _whole(1, MAX_IMG_SIZE, "of pixels per patch side"),
    "num_classes": _whole(1, 1_000_000, "of classes"),
    "calibration_batches": _whole(1, 100_000, "of calibration batches"),
    "exit_images": _whole(0, 10**9, "of training images for the exit branches"),
    # training and fine-tuning
    "seed": _whole(0, MAX_SEED, "(the random generators' seed)"),
    "epochs": _whole(1, 100_000, "of epochs"),
    "steps": _whole(1, 10**8, "of training steps"),
    "random_candidates": _whole(0, 1000, "of random students per step"),
    "lr": _real(0, 10, "(the peak learning rate)", above=True),
    "weight_decay": _real(0, 10, "(AdamW's weight decay)"),
    "warmup_epochs": _real(0, 100_000, "of warm-up epochs"),
    "label_smoothing": _real(0, 1, "(the label smoothing)", below=True),
    "distill": _real(0, 1, "(the weight of distillation against the labels)"),
    # the search
    "trials": _whole(1, 10**6, "of trials"),
    "population": _whole(2, 100_000, "of trials per NSGA-II generation"),
    "max_latency_ms": _real(0, 1e7, "of milliseconds (the latency constraint)", above=True),
    "min_accuracy": _real(0, 1, "(the accuracy constraint, a fraction)"),
    "max_macs": _real(0, 1e18, "of MACs per image (the constraint)", above=True),
    "finetune_front": _whole(0, 10**8, "of fine-tuning steps per front model"),
    "finetune_lr": _real(0, 10, "(the peak learning rate)", above=True),
    "front_rounds": _whole(3, 100_000, "of timing rounds", off="keep the search's timing"),
    "cpus_per_trial": _real(0, 4096, "of CPUs per trial", above=True),
    "gpus_per_trial": _real(0, 1024, "of GPUs per trial"),
    "wait_for_target": _real(0, 7 * 86400, "of seconds"),
    # reading and timing results
    "limit": _whole(1, 10**9, "of rows"),
    "trial": _whole(0, 2**31 - 1, "(a trial's number)"),
    "repeats": _whole(2, 100_000, "of timed rounds (two at least, to state a spread)"),
}

# environment variables: (bound, default)
ENVIRONMENT: dict[str, tuple[Bound, int | float]] = {
    "VITPARETO_DB_TIMEOUT": (
        _real(0, 86400, "of seconds to wait for a locked database"),
        30.0,
    ),
}


def check_options(values: Mapping[str, Any]) -> None:
    """Every value of ``values`` (a parsed command line's, by dest) that ``OPTIONS``
    names, when given (not None), within its bounds; a list (a repeated option) item by
    item. The first one out of bounds raises one error naming its flag."""
    for dest, value in values.items():
        bound = OPTIONS.get(dest)
        if bound is None or value is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            bound.check(v, f"--{dest.replace('_', '-')}")


def environment_number(name: str) -> int | float:
    """The number environment variable ``name`` holds (its default where it is not set),
    checked against ``ENVIRONMENT``; read when needed, so a bad value is one error."""
    bound, default = ENVIRONMENT[name]
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value: Any = int(text) if bound.whole else float(text)
    except ValueError:
        value = text
    if not bound.allows(value):
        raise VitParetoError(
            f"environment variable {name} must be {bound.describe()}, got {_shown(value)}; "
            f"unset it for the default, {default:g}"
        )
    return value


def check_environment() -> None:
    """Every setting of ``ENVIRONMENT`` that is set, checked."""
    for name in ENVIRONMENT:
        environment_number(name)


def check_count(name: str, value, label: str | None = None) -> int | None:
    """``value`` (None: not given) if it is a whole number within ``OPTIONS[name]``, else
    one error naming ``label`` (default ``--name``) and the allowed range."""
    if value is None:
        return None
    return OPTIONS[name].check(value, label or f"--{name}")


def check_input(batch: int, shape: tuple[int, ...], label: str = "--batch") -> None:
    """Refuse a batch of float32 images of ``shape`` that would take more than a quarter
    of this machine's memory before it is allocated."""
    check_count("batch", batch, label)
    need = 4 * batch
    for side in shape:
        need *= side
    have = memory_bytes()
    if have and need > MAX_INPUT_SHARE * have:
        raise VitParetoError(
            f"{label} {batch} of {'x'.join(map(str, shape))} images needs {need / 2**30:.1f} GiB "
            f"for the input alone; this machine has {have / 2**30:.1f} GiB: use a smaller batch"
        )


def use_threads(n: int | None, label: str = "--threads") -> None:
    """Set torch's CPU threads to ``n`` (None: leave them), checked first."""
    if check_count("threads", n, label) is not None:
        torch.set_num_threads(n)
