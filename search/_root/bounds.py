"""Bounds on the counts a user gives: threads, processes and batch sizes.

One table every command and every file reader checks against, so a number is refused the
same way wherever it comes from (an option, ``metrics.json``, a stored config). Counts of
threads and processes are bounded by what this machine has: torch and OpenMP crash the
interpreter (a segmentation fault, no message) when asked for 100,000 threads.
"""

from __future__ import annotations

import os

import torch

from vitpareto.errors import VitParetoError

MAX_BATCH = 65536  # images in one forward pass
MAX_INPUT_SHARE = 0.25  # of this machine's memory, for one batch of input images


def cpus() -> int:
    """Logical CPUs of this machine."""
    return os.cpu_count() or 1


def memory_bytes() -> int:
    """Physical memory of this machine (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


# name -> (lowest, highest or a function of the machine, what it counts)
COUNTS = {
    "threads": (1, cpus, "CPU threads"),
    "workers": (0, cpus, "data loader processes"),
    "jobs": (1, cpus, "worker processes"),
    "batch": (1, lambda: MAX_BATCH, "images per forward pass"),
}


def check_count(name: str, value, label: str | None = None) -> int | None:
    """``value`` (None: not given) if it is a whole number within ``COUNTS[name]``, else
    one error naming ``label`` (default ``--name``) and the allowed range."""
    if value is None:
        return None
    low, high, what = COUNTS[name]
    high = high() if callable(high) else high
    label = label or f"--{name}"
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        where = f" (this machine has {cpus()} logical CPUs)" if high == cpus() else ""
        raise VitParetoError(
            f"{label} must be a whole number of {what} from {low} to {high}{where}, got {value!r}"
        )
    return value


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
