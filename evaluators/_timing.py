"""Interleaved wall-clock timing: the way to compare models on a shared, noisy machine.

Each round runs every model once, in a fresh random order, so drift in machine load
hits all of them alike; speedups are medians of per-round ratios, not ratios of
medians taken minutes apart.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import timm
import torch

from vitpareto.spaces import VitParetoError


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call of one model: median, interquartile range and count."""

    median_ms: float
    iqr_ms: float
    count: int


def resolve_device(device: str) -> torch.device:
    """A torch device from user text, with a clear error when it does not exist here."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VitParetoError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VitParetoError(f"device {device!r} asked for, but this machine has no CUDA GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VitParetoError(
                f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise VitParetoError("device 'mps' asked for, but MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise VitParetoError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or mps")
    return dev


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    if device.type == "cuda":

        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end)

        return run

    def run(fn):
        if device.type == "mps":
            torch.mps.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "mps":
            torch.mps.synchronize()
        return (time.perf_counter() - t0) * 1e3

    return run


@torch.inference_mode()
def time_interleaved(
    models: Mapping[str, Callable[[torch.Tensor], object]],
    x: torch.Tensor,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds of each ``models[name](x)`` call over ``repeats`` interleaved rounds."""
    calls = {name: (lambda fn=fn: fn(x)) for name, fn in models.items()}
    return time_calls(calls, x.device, repeats, warmup, seed, progress)


@torch.inference_mode()
def time_calls(
    calls: Mapping[str, Callable[[], object]],
    device: torch.device,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds of each argument-free call over ``repeats`` rounds, each round in a
    fresh random order, so that load changing over time hits every call alike."""
    timer = _timer(torch.device(device))
    names = list(calls)
    rng = random.Random(seed)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        rng.shuffle(names)
        for name in names:
            times[name].append(timer(calls[name]))
        if progress is not None:
            progress(r + 1)
    return times


def summarize(times: list[float]) -> Timing:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return Timing(median_ms=statistics.median(times), iqr_ms=q[2] - q[0], count=len(times))


def speedup(reference: list[float], candidate: list[float]) -> float:
    """Median over rounds of reference time / candidate time (same-round pairs)."""
    return statistics.median(r / c for r, c in zip(reference, candidate, strict=True))


def _cpu_model() -> str:

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_fingerprint(device: str | torch.device = "cpu") -> dict[str, object]:
    """What a latency figure was measured on: CPU model, cores, threads, GPU, versions."""

    dev = torch.device(device)
    fp: dict[str, object] = {
        "device": str(dev),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
    }
    if dev.type == "cuda":
        fp["gpu"] = torch.cuda.get_device_name(dev)
        fp["cuda"] = torch.version.cuda
    return fp
