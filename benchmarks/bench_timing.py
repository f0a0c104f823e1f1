"""How far does another process move a speedup? The estimate vitpareto uses (the median
of per-round ratios) against the usual alternative for noise that only ever slows a call
(each model's fastest round, Chen and Revels 2016), on the same timings.

Two ViTs, one whose batch-1 call is shorter than a scheduler time slice (timm
``test_vit`` at 128 px, about 1 ms here) and one whose call spans several (DeiT-Tiny at
224 px, about 10 ms), each timed against a copy of itself (true speedup 1) and against a
cut of itself (true speedup: a long run on a quiet machine), in many short measurements
of ``--rounds`` interleaved rounds (the search's default), under three loads: a quiet
machine; a busy process pinned to the timing's own core (the core changes hands
mid-round); one busy process per core plus one, unpinned (a machine oversubscribed, as a
shared CI runner can be). Both estimates come from the very same timings. Reported per
model, load and estimate: the median, 5th and 95th percentile of the measurements and
the share within 10% of the truth. Writes into RESULTS.md.

    python benchmarks/bench_timing.py [--measurements 40] [--rounds 10]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import stamp, write_section  # noqa: E402

from vitpareto.evaluators import speedup, time_interleaved  # noqa: E402
from vitpareto.search import SearchConfig  # noqa: E402
from vitpareto.spaces import Candidate, ElasticViT  # noqa: E402

BUSY = [sys.executable, "-c", "while True: pass"]
MODELS = {  # name -> (timm model, overrides, the cut's knobs)
    "test_vit 128px": ("test_vit", dict(img_size=128), dict(patch_size=32)),
    "deit_tiny 224px": ("deit_tiny_patch16_224", {}, dict(mlp=384, heads=2)),
}


def fastest_rounds(reference: list[float], candidate: list[float]) -> float:
    """The alternative: each model's fastest round, their ratio."""
    return min(reference) / min(candidate)


ESTIMATES = {"median of per-round ratios (vitpareto)": speedup, "fastest rounds": fastest_rounds}


@contextmanager
def load(kind: str):
    """Run the block beside ``kind`` of load: quiet, pinned or oversubscribed."""
    before = os.sched_getaffinity(0)
    n = {"quiet": 0, "pinned": 1, "oversubscribed": len(before) + 1}[kind]
    procs = [subprocess.Popen(BUSY) for _ in range(n)]
    try:
        if kind == "pinned":
            core = {min(before)}
            os.sched_setaffinity(procs[0].pid, core)
            os.sched_setaffinity(0, core)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()
        os.sched_setaffinity(0, before)


def models(name: str):
    """The full model, a copy of it and a cut of it, compressed; and a batch-1 input."""
    arch, overrides, knobs = MODELS[name]
    torch.manual_seed(0)
    elastic = ElasticViT(copy.deepcopy(timm.create_model(arch, **overrides))).eval()
    full = Candidate.full(elastic.spec)
    fns = {
        "full": elastic.extract(full).eval(),
        "copy": elastic.extract(full).eval(),
        "cut": elastic.extract(Candidate.make(elastic, **knobs)).eval(),
    }
    return fns, torch.randn(1, *elastic.spec.image_shape)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def rows_of(name: str, args) -> tuple[list[tuple], dict, float]:
    fns, x = models(name)
    t = time_interleaved(fns, x, repeats=args.truth_rounds, warmup=20)
    truth = {k: speedup(t["full"], t[k]) for k in ("copy", "cut")}
    call_ms = statistics.median(t["full"])
    log(f"{name}: {call_ms:.2f} ms a call; truth (quiet, {args.truth_rounds} rounds) {truth}")
    rows = []
    for kind in ("quiet", "pinned", "oversubscribed"):
        got = {(k, e): [] for k in truth for e in ESTIMATES}
        with load(kind):
            for i in range(args.measurements):
                t = time_interleaved(fns, x, repeats=args.rounds, warmup=3, seed=i)
                for (k, e), out in got.items():
                    out.append(ESTIMATES[e](t["full"], t[k]))
        for (k, e), v in got.items():
            near = sum(abs(s / truth[k] - 1) <= 0.10 for s in v) / len(v)
            row = (
                name,
                kind,
                k,
                e,
                statistics.median(v),
                percentile(v, 5),
                percentile(v, 95),
                near,
            )
            rows.append(row)
            log(str(row))
    return rows, truth, call_ms


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measurements", type=int, default=40, help="short measurements per load")
    ap.add_argument(
        "--rounds",
        type=int,
        default=SearchConfig().latency_repeats,
        help="interleaved rounds per measurement (the search's default)",
    )
    ap.add_argument("--truth-rounds", type=int, default=400)
    args = ap.parse_args()
    if not hasattr(os, "sched_setaffinity"):
        sys.exit("bench_timing pins processes to a core: it needs Linux (os.sched_setaffinity)")
    torch.set_num_threads(1)
    lines = [
        "## Speedup estimates beside a busy process",
        "",
        f"`benchmarks/bench_timing.py`, {stamp()}; random weights, batch 1, eager; "
        f"{args.measurements} measurements of {args.rounds} interleaved rounds per load, both "
        f"estimates on the same timings; truth: a quiet run of {args.truth_rounds} rounds. "
        "pinned: one busy process on the timing's core; oversubscribed: one busy process per "
        "core plus one, unpinned.",
        "",
        "| model | load | against | estimate | median | 5th pct | 95th pct | within 10% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name in MODELS:
        rows, truth, call_ms = rows_of(name, args)
        notes.append(
            f"{name}: {call_ms:.2f} ms a call of the full model; truth: copy "
            f"{truth['copy']:.3f}x, cut {truth['cut']:.3f}x."
        )
        for _, kind, k, e, med, lo, hi, near in rows:
            lines.append(
                f"| {name} | {kind} | {k} | {e} | {med:.2f}x | {lo:.2f}x | {hi:.2f}x | {near:.0%} |"
            )
    write_section("bench_timing", "\n".join(lines + [""] + notes))
    print("\n".join(lines + [""] + notes))


if __name__ == "__main__":
    main()
