"""bench_dynamic's judgement: the trials near and past each target speedup, scored again on
the whole validation set and timed again at length, so the best at a speedup is not the
luckiest of many short measurements.

A search times each trial briefly (here 10 interleaved rounds, an exit policy 5 rounds of
8 images) and its accuracy on a few batches. Taking the best accuracy among trials whose
speedup passed a line selects the ones whose noise ran upward on both counts: in the
fourth run the same uncut patch-4 exit candidate measured from 1.70x to 2.33x in one
space. Every trial at least ``FLOOR`` of the lowest target is therefore timed again
(``ROUNDS`` times as long, against the full model interleaved with it, the trials of all
spaces in one shuffled order so that load drift falls on them alike) and scored on the
whole validation set; the target is judged on those figures.
"""

from __future__ import annotations

import math
import random
import statistics
import sys

from vitpareto.evaluators import AccuracyEvaluator, LatencyEvaluator, first_images
from vitpareto.search.outputs import trials_frame
from vitpareto.spaces import Candidate

FLOOR = 0.8  # re-time trials whose search speedup reached this share of the lowest target
ROUNDS = 320  # single-image pairs (a static graph) or 40 rounds of 8 images (exit policy)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pool(studies: dict, lowest: float) -> tuple[dict, dict]:
    """Per space, the trials whose search speedup reached ``FLOOR * lowest`` (their
    candidates), and those speedups."""
    trials, searched = {}, {}
    for kind, study in studies.items():
        df = trials_frame(study)
        df = df[df["speedup"] >= FLOOR * lowest]
        trials[kind] = {int(r.trial): Candidate.from_json(r.candidate) for r in df.itertuples()}
        searched[kind] = {int(r.trial): float(r.speedup) for r in df.itertuples()}
    return trials, searched


def cached(study, key: str) -> dict[int, float]:
    """A figure of each trial kept in the study by an earlier run (``key`` is named by its
    setting, so a changed setting measures afresh)."""
    return {int(t): v for t, v in study.user_attrs.get(key, {}).items()}


def keep(study, key: str, figures: dict[int, float]) -> None:
    study.set_user_attr(key, {str(t): v for t, v in sorted(figures.items())})


def retime(net, studies: dict, trials: dict, threads: int) -> dict[str, dict[int, float]]:
    """Each trial's speedup timed again as the search timed it (ONNX Runtime, batch 1,
    deployed graph, the same validation images), ``ROUNDS`` long; trials of every space
    in one seeded shuffled order. Kept in each study: a later run times only new trials."""
    key = f"bench_speedup_{ROUNDS}_rounds"
    out = {kind: cached(studies[kind], key) for kind in trials}
    order = [(kind, t) for kind, ts in trials.items() for t in ts if t not in out[kind]]
    random.Random(0).shuffle(order)
    log(f"timing {len(order)} trials again ...")
    images = first_images(net.load_data(batch_size=128).val, 1)
    timer = LatencyEvaluator(runtime="onnxruntime", threads=threads, repeats=ROUNDS,
                             images=images)  # fmt: skip
    elastic = net.elastic.eval()
    for i, (kind, t) in enumerate(order, 1):
        out[kind][t] = timer.evaluate(elastic, trials[kind][t])["speedup"]
        if i % 10 == 0 or i == len(order):
            log(f"  timed again {i}/{len(order)}")
            for k in trials:
                keep(studies[k], key, out[k])
    return out


def whole_accuracy(net, studies: dict, trials: dict) -> dict[str, dict[int, float]]:
    """Each trial's accuracy on the whole validation set (exit policy applied); a
    candidate met in several spaces is scored once. Kept in each study, as ``retime``."""
    log("scoring them on the whole validation set ...")
    scorer = AccuracyEvaluator(net.load_data(batch_size=256).val, progress=False)
    seen: dict[str, float] = {}
    out: dict[str, dict[int, float]] = {}
    for kind, ts in trials.items():
        out[kind] = cached(studies[kind], "bench_whole_accuracy")
        for t, cand in ts.items():
            if t in out[kind]:
                continue
            key = cand.to_json()
            if key not in seen:
                seen[key] = scorer.evaluate(net.elastic.eval(), cand)["accuracy"]
            out[kind][t] = seen[key]
        keep(studies[kind], "bench_whole_accuracy", out[kind])
    return out


def best(acc: dict[int, float], speed: dict[int, float], s: float) -> tuple[float, int | None]:
    """The most accurate trial at least ``s`` times faster, by these figures."""
    fast = [t for t in acc if speed[t] >= s]
    if not fast:
        return float("nan"), None
    top = max(fast, key=lambda t: acc[t])
    return acc[top], top


def label(kind: str, seed: int, seeds) -> str:
    """A study's name in the tables: its space, and its sampler seed when there are several."""
    return kind if len(seeds) == 1 else f"{kind}, seed {seed}"


def gain(best_of: dict, dynamic: str, static: str, s: float) -> float | None:
    """Points the dynamic study's best leads the static one's by at speedup ``s``: inf
    where only the dynamic one reaches it, None where it does not."""
    a, b = best_of[dynamic][s][0], best_of[static][s][0]
    if math.isnan(a):
        return None
    return math.inf if math.isnan(b) else (a - b) * 100


def verdicts(best_of: dict, targets, seeds=(0,)) -> list[str]:
    """The target, the dynamic space against the static one at each speedup, from
    ``best_of[label][s]``; with several sampler seeds, each seed's searches are compared
    with each other and the target is judged on the median lead: one search's best is one
    draw of a noisy search, and the runs so far moved the lead by half a point."""
    out = []
    for s in targets:
        gains = [gain(best_of, label("exits + cascade", k, seeds), label("static", k, seeds), s)
                 for k in seeds]  # fmt: skip
        if any(g is None for g in gains):
            out.append(f"{s:g}x: a search of the dynamic space does not reach it (MISSES)")
            continue
        mid = statistics.median(gains)
        each = ", ".join("only the dynamic space" if math.isinf(g) else f"{g:+.2f}" for g in gains)
        judge = f"{'meets' if mid >= 0.5 else 'MISSES'} +0.5"
        if len(gains) > 1:
            judge = f"median {mid:+.2f}: {judge}"
        out.append(f"{s:g}x: {each} points ({judge})")
    return out


def judged(net, studies: dict, targets, threads: int, seeds=(0,)):
    """Table rows (best on the whole set by search speedup, then by speedup timed again),
    the timing-noise rows, and the target's verdicts on the figures timed again."""
    trials, searched = pool(studies, min(targets))
    again = retime(net, studies, trials, threads)
    acc = whole_accuracy(net, studies, trials)
    cell = "{:.4f} ({}, {:.2f}x)"
    rows = [
        "| space | trials | "
        + " | ".join(f"best at >= {s:g}x: search speedup | timed again" for s in targets)
        + " |",
        "|---|---:|" + "---:|---:|" * len(targets),
    ]
    noise = ["| space | trials | timed again / search speedup: median | 10% | 90% "
             "| fastest timed again |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    final = {}
    for kind in studies:
        cells, final[kind] = [], {}
        for s in targets:
            for speed in (searched[kind], again[kind]):
                a, t = best(acc[kind], speed, s)
                cells.append("none" if t is None else cell.format(a, t, speed[t]))
            final[kind][s] = best(acc[kind], again[kind], s)
        rows.append(f"| {kind} | {len(trials[kind])} | " + " | ".join(cells) + " |")
        ratios = sorted(again[kind][t] / searched[kind][t] for t in trials[kind])
        if ratios:
            q = statistics.quantiles(ratios, n=10) if len(ratios) > 1 else ratios * 9
            noise.append(f"| {kind} | {len(ratios)} | {statistics.median(ratios):.3f} | "
                         f"{q[0]:.3f} | {q[-1]:.3f} | {max(again[kind].values()):.2f}x |")  # fmt: skip
    return rows, noise, verdicts(final, targets, seeds)
