"""bench_dynamic's judgement: the trials near and past each target speedup, scored again on
the whole validation set and timed again at length, so the best at a speedup is not the
luckiest of many short measurements.

A search times each trial briefly (here 10 interleaved rounds, an exit policy 5 rounds of
16 images) and its accuracy on a few batches. Taking the best accuracy among trials whose
speedup passed a line selects the ones whose noise ran upward on both counts: in the
fourth run the same uncut patch-4 exit candidate measured from 1.70x to 2.33x in one
space. Every trial at least ``FLOOR`` of the lowest target is therefore timed again
(``ROUNDS`` times as long, against the full model interleaved with it, the trials of all
spaces in one shuffled order so that load drift falls on them alike) and scored on the
whole validation set. Even then two timings of one trial differ by a few percent, so the
trials that decide each verdict (each space's best at each target, or the space's cheapest
candidate where it has none) are timed ``CONFIRM`` times more and the target is judged on
their medians.
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
ROUNDS = 320  # single-image pairs (a static graph) or 20 rounds of 16 images (exit policy)
CONFIRM = 5  # timings (of ROUNDS each) of every trial that decides a verdict


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


CHEAPEST = -1  # the trial number ``confirm`` gives a space's cheapest candidate


def confirm(net, studies, trials, again, acc, targets, cheapest, threads):
    """The trials that decide each verdict, each timed ``CONFIRM`` times more, on their
    median: one 320-round figure still moves a few percent, and a best that clears a
    target by less is decided by that. Each study's best at each target is confirmed;
    where its median falls short, the next best is, until one holds. Where a study has
    no trial at a target, its space's cheapest candidate (``cheapest[kind]``, every knob
    at its minimum) joins its trials as trial ``CHEAPEST``, timed and scored the same
    way: a space that stops short is told from a search that does. Trials of every study
    in one shuffled order per timing; kept in the studies. Returns each study's timings
    (trial -> the ``CONFIRM`` figures), accuracies, and best (accuracy, trial) per target."""
    key = f"bench_confirm_{CONFIRM}x{ROUNDS}"
    timed = {k: {int(t): v for t, v in studies[k].user_attrs.get(key, {}).items()} for k in trials}
    acc = {k: dict(v) for k, v in acc.items()}
    cands = {k: {**trials[k], CHEAPEST: cheapest[k]} for k in trials}
    images = first_images(net.load_data(batch_size=128).val, 1)
    timer = LatencyEvaluator(runtime="onnxruntime", threads=threads, repeats=ROUNDS,
                             images=images)  # fmt: skip
    scorer = AccuracyEvaluator(net.load_data(batch_size=256).val, progress=False)
    elastic = net.elastic.eval()
    while True:
        for kind in trials:
            if CHEAPEST in timed[kind] and CHEAPEST not in acc[kind]:
                acc[kind][CHEAPEST] = scorer.evaluate(elastic, cheapest[kind])["accuracy"]
        speed = {k: {t: statistics.median(timed[k][t]) if t in timed[k] else again[k][t]
                     for t in acc[k]} for k in trials}  # fmt: skip
        tops = {k: {s: best(acc[k], speed[k], s) for s in targets} for k in trials}
        wanted = {(k, CHEAPEST if t is None else t) for k in trials for _, t in tops[k].values()}
        todo = sorted((k, t) for k, t in wanted if t not in timed[k])
        if not todo:
            return timed, acc, tops
        log(f"timing {len(todo)} deciding trials {CONFIRM} times more ...")
        for i in range(CONFIRM):
            random.Random(i).shuffle(todo)
            for kind, t in todo:
                figure = timer.evaluate(elastic, cands[kind][t])["speedup"]
                timed[kind].setdefault(t, []).append(figure)
        for kind in trials:
            keep(studies[kind], key, timed[kind])


def confirmed_rows(timed: dict, acc: dict, tops: dict, targets) -> list[str]:
    """Table rows of each study's best at each target on the confirmed medians, or its
    space's cheapest candidate where none reaches it."""
    rows = ["| space | target | trial | whole-set accuracy | speedup: median of "
            f"{CONFIRM} (lowest, highest) |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for kind in timed:
        for s in targets:
            t = tops[kind][s][1]
            shown = CHEAPEST if t is None else t
            v = timed[kind][shown]
            name = "the space's cheapest candidate" if shown == CHEAPEST else str(t)
            name = f"none: {name}" if t is None else name
            rows.append(f"| {kind} | {s:g}x | {name} | {acc[kind][shown]:.4f} | "
                        f"{statistics.median(v):.2f}x ({min(v):.2f}x, {max(v):.2f}x) |")  # fmt: skip
    return rows


def judged(net, studies: dict, targets, threads: int, seeds, cheapest: dict):
    """Table rows (best on the whole set by search speedup, then by speedup timed again),
    the timing-noise rows, the rows of the deciding trials confirmed (``confirm``), and the
    target's verdicts on those."""
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
    for kind in studies:
        cells = []
        for s in targets:
            for speed in (searched[kind], again[kind]):
                a, t = best(acc[kind], speed, s)
                cells.append("none" if t is None else cell.format(a, t, speed[t]))
        rows.append(f"| {kind} | {len(trials[kind])} | " + " | ".join(cells) + " |")
        ratios = sorted(again[kind][t] / searched[kind][t] for t in trials[kind])
        if ratios:
            q = statistics.quantiles(ratios, n=10) if len(ratios) > 1 else ratios * 9
            noise.append(f"| {kind} | {len(ratios)} | {statistics.median(ratios):.3f} | "
                         f"{q[0]:.3f} | {q[-1]:.3f} | {max(again[kind].values()):.2f}x |")  # fmt: skip
    timed, acc, tops = confirm(net, studies, trials, again, acc, targets, cheapest, threads)
    return rows, noise, confirmed_rows(timed, acc, tops, targets), verdicts(tops, targets, seeds)
