"""Search benchmark on the Fashion-MNIST supernet (benchmarks/fmnist/).

(a) Search efficiency: the front's hypervolume against trials for NSGA-II, TPE and random
    search, three seeds each. Latency comes from the latency table (deterministic, so the
    samplers are compared on the same landscape, not on timing noise) and accuracy from
    the first ``--val-batches`` validation batches. Target: NSGA-II reaches random
    search's 200-trial hypervolume within 100 trials.
(b) The headline: the searched front against hand-made uniform baselines (EViT-style keep
    ratios at the space's fixed blocks; uniform heads; uniform MLP ratio; patch size
    alone), every model scored on the whole test set on the same shared weights and timed
    here, interleaved with the full model. Target: at 2x speedup the front is at least 1
    point more accurate than the best baseline and within 1 point of the full model.
(c) Seconds per trial, by stage (from what each trial recorded).

    python benchmarks/bench_search.py --supernet results/fmnist_bench/supernet.pt \\
        --part a --trials 200 --jobs 2        # then --part b, then --part table

The supernet comes from ``vitpareto train --model benchmarks/fmnist/model.yaml --space
benchmarks/fmnist/space.yaml --dataset fashion-mnist ...`` (see RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
from datetime import date
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from vitpareto.search._checkpoint import load_supernet
from vitpareto.search._pareto import front_hypervolume, normalized
from vitpareto.search._query import trials_frame
from vitpareto.search._study import SearchConfig, search
from vitpareto.spaces import Candidate

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

SAMPLERS = ("nsga2", "tpe", "random")
SEEDS = (0, 1, 2)
CHECKPOINTS = (25, 50, 100, 150, 200)


def _run(args_tuple):
    supernet, storage, sampler, seed, trials, val_batches = args_tuple
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    net = load_supernet(supernet)
    config = SearchConfig(
        sampler=sampler, seed=seed, latency="predicted", max_batches=val_batches, latency_batch=64
    )
    search(net, storage, f"{sampler}-{seed}", trials, config, progress=False)
    print(f"done {sampler} seed {seed}", flush=True)


def part_a(args) -> None:
    """Run the nine searches (two at a time on two cores) into one database."""
    net = load_supernet(args.supernet)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    # build the latency table once, before the workers need it
    config = SearchConfig(latency="predicted", latency_batch=64)
    from vitpareto.search._study import evaluators

    evaluators(net, config)
    jobs = [
        (str(args.supernet), args.storage, s, k, args.trials, args.val_batches)
        for k in SEEDS
        for s in SAMPLERS
    ]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        list(pool.imap_unordered(_run, jobs))


def hv_curve(study, ref) -> dict[int, float]:
    """Hypervolume of the feasible non-dominated set among the first n trials."""
    df = trials_frame(study).sort_values("trial")
    objectives = study.user_attrs["objectives"]
    out = {}
    for n in CHECKPOINTS:
        head = df.iloc[:n].copy()
        if len(head) < n:
            continue
        pts = normalized(head, objectives, ref)
        keep = np.ones(len(pts), dtype=bool)
        for i in range(len(pts)):  # non-dominated rows
            keep[i] = not np.any(np.all(pts <= pts[i], axis=1) & np.any(pts < pts[i], axis=1))
        head["pareto"] = keep
        out[n] = front_hypervolume(head, objectives, ref)[0]
    return out


def table_a(storage: str) -> tuple[str, dict]:
    curves = {}
    ref = None
    for s in SAMPLERS:
        for k in SEEDS:
            st = optuna.load_study(study_name=f"{s}-{k}", storage=storage)
            ref = ref or {"accuracy": 0.0, "latency_ms": st.user_attrs["full"]["latency_ms"]}
            curves[(s, k)] = hv_curve(st, ref)
    lines = [
        "| sampler | " + " | ".join(f"{n} trials" for n in CHECKPOINTS) + " |",
        "|---|" + "---|" * len(CHECKPOINTS),
    ]
    medians = {}
    for s in SAMPLERS:
        cells = []
        for n in CHECKPOINTS:
            vals = [curves[(s, k)].get(n) for k in SEEDS if n in curves[(s, k)]]
            medians[(s, n)] = float(np.median(vals)) if vals else float("nan")
            cells.append(
                f"{medians[(s, n)]:.4f} ({min(vals):.4f}-{max(vals):.4f})" if vals else "-"
            )
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    target = medians.get(("random", 200))
    reach = {}
    for s in SAMPLERS:
        reach[s] = next(
            (n for n in CHECKPOINTS if target is not None and medians[(s, n)] >= target), None
        )
    text = "\n".join(lines) + (
        f"\n\nHypervolume (median over seeds {SEEDS}, range in brackets), reference: accuracy 0,"
        f" latency {ref['latency_ms']:.3f} ms (the full model, predicted). Random search's "
        f"200-trial median is {target:.4f}; first checkpoint at which each sampler's median "
        f"reaches it: " + ", ".join(f"{s} {reach[s] or 'not within 200'}" for s in SAMPLERS) + "."
    )
    return text, {"medians": {f"{s}@{n}": v for (s, n), v in medians.items()}, "reach": reach}


def baselines(spec, space) -> dict[str, Candidate]:
    """Hand-made uniform compressions, one knob family at a time, inside the space."""
    blocks = list(space.keep.blocks or range(spec.depth)) if space.keep else [spec.depth // 2]
    out = {}
    for r in (0.5, 0.6, 0.7, 0.8, 0.9):
        out[f"EViT keep {r} at blocks {blocks}"] = Candidate.make(spec, keep={b: r for b in blocks})
    for h in range(1, spec.num_heads):
        out[f"uniform heads {h}/{spec.num_heads}"] = Candidate.make(spec, heads=h)
    for f in (0.25, 0.5, 0.75):
        out[f"uniform MLP {f}"] = Candidate.make(spec, mlp=[int(m * f) for m in spec.mlp_hidden])
    for p in space.patch_size or ():
        if p != spec.patch_size:
            out[f"patch {p} alone"] = Candidate.make(spec, patch_size=p)
    return out


def part_b(args) -> None:
    """Score the NSGA-II front (seed 0) and the baselines on the full test set, timed here."""
    from vitpareto.evaluators import AccuracyEvaluator, LatencyEvaluator

    torch.set_num_threads(args.threads)
    net = load_supernet(args.supernet)
    spec = net.elastic.spec
    st = optuna.load_study(study_name="nsga2-0", storage=args.storage)
    cands = {"full model": Candidate.full(spec)}
    for t in st.best_trials:
        cands[f"front trial {t.number}"] = Candidate.from_dict(t.user_attrs["candidate"])
    cands.update(baselines(spec, net.space))
    data = net.load_data(batch_size=256)
    acc = AccuracyEvaluator(data.val, progress=False)
    lat = LatencyEvaluator(batch_size=64, repeats=15)
    rows = {}
    for i, (name, c) in enumerate(cands.items()):
        m = acc(net.elastic, c)
        m.update(lat(net.elastic, c, m))
        rows[name] = {k: m[k] for k in ("accuracy", "latency_ms", "speedup")}
        print(f"[{i + 1}/{len(cands)}] {name}: {rows[name]}", flush=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))


def table_b(rows: dict) -> tuple[str, dict]:
    full = rows["full model"]["accuracy"]

    def family(name: str) -> str:
        for f in ("front", "EViT", "uniform heads", "uniform MLP", "patch"):
            if name.startswith(f):
                return f
        return name

    best = {}
    for name, r in rows.items():
        f = family(name)
        if r["speedup"] >= 2.0 and r["accuracy"] > best.get(f, (-1, ""))[0]:
            best[f] = (r["accuracy"], name)
    lines = ["| model | accuracy | latency ms | speedup |", "|---|---|---|---|"]
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["speedup"]):
        lines.append(
            f"| {name} | {r['accuracy']:.4f} | {r['latency_ms']:.2f} | {r['speedup']:.2f}x |"
        )
    front = best.get("front", (float("nan"), "none"))[0]
    base = max((v for f, v in best.items() if f != "front"), default=(float("nan"), "none"))
    summary = (
        f"\n\nAt >= 2x speedup: best front model {front:.4f}; best uniform baseline "
        f"{base[0]:.4f} ({base[1]}); full model {full:.4f}. Front - baseline "
        f"{100 * (front - base[0]):+.2f} points (target >= +1), front - full "
        f"{100 * (front - full):+.2f} points (target >= -1)."
    )
    return "\n".join(lines) + summary, {"front": front, "baseline": base, "full": full}


def table_c(storage: str) -> str:
    stages: dict[str, list[float]] = {}
    totals = []
    for s in SAMPLERS:
        for k in SEEDS:
            st = optuna.load_study(study_name=f"{s}-{k}", storage=storage)
            for t in st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                sec = t.user_attrs.get("stage_seconds") or {}
                for name, v in sec.items():
                    stages.setdefault(f"{name} ({s})" if name == "none" else name, []).append(v)
                total = (t.datetime_complete - t.datetime_start).total_seconds()
                totals.append(total)
                stages.setdefault("sampler, storage and the rest", []).append(
                    total - sum(sec.values())
                )
    lines = ["| stage | median s | p90 s |", "|---|---|---|"]
    for name, v in stages.items():
        lines.append(f"| {name} | {np.median(v):.3f} | {np.percentile(v, 90):.3f} |")
    lines.append(f"| whole trial | {np.median(totals):.3f} | {np.percentile(totals, 90):.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", type=Path, default=Path("results/fmnist_bench/supernet.pt"))
    p.add_argument("--storage", default="sqlite:///results/fmnist_bench/search.db")
    p.add_argument("--part", choices=["a", "b", "table"], required=True)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--val-batches", type=int, default=8, help="128-image batches for (a)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="results/fmnist_bench/headline.json")
    p.add_argument("--extra", default="", help="measured seconds of other stages, as markdown")
    args = p.parse_args()
    if args.part == "a":
        part_a(args)
    elif args.part == "b":
        part_b(args)
    else:
        a, _ = table_a(args.storage)
        b, _ = table_b(json.loads(Path(args.json).read_text()))
        c = table_c(args.storage)
        head = (
            f"{date.today()}, {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"optuna {optuna.__version__}. Supernet: benchmarks/fmnist/model.yaml + "
            f"space.yaml on Fashion-MNIST ({args.supernet.name})."
        )
        md = (
            f"{head}\n\n### (a) Hypervolume against trials\n\n{a}\n\n"
            f"### (b) The front against uniform baselines\n\n{b}\n\n"
            f"### (c) Seconds per trial, by stage (the {len(SAMPLERS) * len(SEEDS)} searches "
            f"of (a))\n\n{c}\n{args.extra}"
        )
        write_section("bench_search", "## Search (bench_search.py)\n\n" + md)
        print(md)


if __name__ == "__main__":
    main()
