"""What a search optimises and how it measures: ``SearchConfig``, checked when it is made.

Every number is checked (finite, in range) and every name known before any work starts,
so a mistake costs no trial. The settings a resumed study must keep (``SETTINGS``) are
stored with it: trials scored otherwise would not compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from vitpareto.errors import VitParetoError
from vitpareto.evaluators import check_precision

DIRECTIONS = {
    "accuracy": "maximize",
    "latency_ms": "minimize",
    "macs": "minimize",
    "params": "minimize",
}
SAMPLERS = ("nsga2", "tpe", "gp", "predictor", "random", "grid")
RUNTIMES = ("eager", "compile", "onnxruntime", "cudagraphs", "tensorrt")
LATENCY_SOURCES = ("measured", "predicted")
# what a resumed study must keep: trials scored otherwise would not compare
SETTINGS = (
    "device",
    "runtime",
    "latency_batch",
    "latency_repeats",
    "latency",
    "threads",
    "max_batches",
    "max_latency_ms",
    "min_accuracy",
    "max_macs",
)


@dataclass
class SearchConfig:
    """What a search optimises and where it measures (stored with the study).

    ``device`` is the latency target: where latency is measured (and fingerprinted).
    ``accuracy_device`` is where each trial scores accuracy; the two are never confused,
    so a CPU-only machine can drive a search whose latency is measured on a GPU node.
    """

    objectives: tuple[str, ...] = ("accuracy", "latency_ms")
    sampler: str = "gp"  # bench_search (a), bench_samplers: random search's 200-trial
    # hypervolume in 50 trials on both spaces (NSGA-II: 100 and more than 50)
    population: int = 10  # NSGA-II's generation size: with Optuna's 50, a 100-trial search is
    # two generations, no better than random search (benchmarks/RESULTS.md, bench_search)
    seed: int = 0
    device: str = "cpu"
    accuracy_device: str = "cpu"
    latency_batch: int = 1
    latency_repeats: int = 10
    max_batches: int | None = None  # accuracy on the first N validation batches (None: all)
    max_latency_ms: float | None = None
    min_accuracy: float | None = None
    max_macs: float | None = None
    latency: str = "measured"  # or "predicted": from the latency table, re-measured on the front
    threads: int | None = None  # CPU threads latency is measured with (None: this process's)
    runtime: str = "eager"  # what runs the deployed model: latency is timed under it
    precision: tuple[str, ...] = ("fp32",)  # the deployed artifact's arithmetics searched

    def __post_init__(self):
        if isinstance(self.objectives, str):
            self.objectives = tuple(o.strip() for o in self.objectives.split(",") if o.strip())
        self.objectives = tuple(self.objectives)
        unknown = [o for o in self.objectives if o not in DIRECTIONS]
        if unknown or not self.objectives:
            raise VitParetoError(
                f"unknown objective(s) {unknown or '(none given)'}; choose from "
                f"{', '.join(DIRECTIONS)}"
            )
        if len(set(self.objectives)) != len(self.objectives):
            raise VitParetoError(
                f"--objectives {','.join(self.objectives)} names one objective twice"
            )
        if self.sampler not in SAMPLERS:
            raise VitParetoError(
                f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}"
            )
        if self.runtime not in RUNTIMES:
            raise VitParetoError(
                f"unknown runtime {self.runtime!r}; choose from {', '.join(RUNTIMES)}"
            )
        self.precision = check_precision(self.precision, self.runtime, self.device)
        if self.latency == "predicted" and self.precision != ("fp32",):
            raise VitParetoError(
                "--latency predicted reads a table of float32 blocks; an int8, bf16 or fp16 "
                "candidate is timed as it ships: use --latency measured with --precision"
            )
        if self.latency not in LATENCY_SOURCES:
            raise VitParetoError(
                f"unknown latency source {self.latency!r}; choose measured or predicted"
            )
        _integer("population", self.population, 2)
        _integer("seed", self.seed, 0)
        _integer("batch", self.latency_batch, 1, 65536)
        _integer("latency-repeats", self.latency_repeats, 3, 10_000)
        if self.max_batches is not None:
            _integer("max-batches", self.max_batches, 1)
        if self.threads is not None:
            _integer("threads", self.threads, 1, 4096)
        if self.max_latency_ms is not None:
            _number("max-latency-ms", self.max_latency_ms, above=0)
        if self.max_macs is not None:
            _number("max-macs", self.max_macs, above=0)
        if self.min_accuracy is not None:
            _number("min-accuracy", self.min_accuracy, low=0, high=1)
        for name in ("device", "accuracy_device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise VitParetoError(f"--{name.replace('_', '-')} must name a device, e.g. cpu")

    def violations(self, m: dict[str, Any]) -> dict[str, float]:
        """Optuna constraint values (<= 0 is feasible) of a trial's metrics."""
        out = {}
        if self.max_latency_ms is not None:
            out["max_latency_ms"] = float(m["latency_ms"]) - self.max_latency_ms
        if self.min_accuracy is not None:
            out["min_accuracy"] = self.min_accuracy - float(m["accuracy"])
        if self.max_macs is not None:
            out["max_macs"] = float(m["macs"]) - self.max_macs
        return out

    def values(self, m: dict[str, Any]) -> list[float]:
        """The trial's objective values, in the study's order."""
        return [float(m[o]) for o in self.objectives]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        """A config stored with a study (keys this version does not know are left out)."""

        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _integer(name: str, v, low: int, high: int | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high and v > high):
        bound = f"between {low} and {high}" if high else f"at least {low}"
        raise VitParetoError(f"--{name} must be an integer {bound}, got {v!r}")


def _number(
    name: str,
    v,
    above: float | None = None,
    low: float | None = None,
    high: float | None = None,
) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and above is not None:
        ok = v > above
    if ok and low is not None:
        ok = low <= v <= high
    if not ok:
        if above is not None:
            want = f"above {above:g}"
        elif high == math.inf:
            want = f"of at least {low:g}"
        else:
            want = f"between {low:g} and {high:g}"
        raise VitParetoError(f"--{name} must be a finite number {want}, got {v!r}")


def check_positive(name: str, v, integer: bool = False, zero: bool = False) -> None:
    """One clear error for an option that must be a positive (or non-negative) number."""
    if integer:
        _integer(name, v, 0 if zero else 1)
    elif zero:
        _number(name, v, low=0, high=math.inf)
    else:
        _number(name, v, above=0)
