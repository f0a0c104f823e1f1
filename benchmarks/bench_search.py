"""Search benchmark on the Fashion-MNIST supernet (benchmarks/fmnist/).

(a) Search efficiency: the front's hypervolume against trials for every sampler (NSGA-II
    at three generation sizes, TPE, Gaussian processes, the predictor in the loop, random
    search), five seeds each; random search runs ``--random-trials`` (200), the others
    ``--trials``. Latency comes from the latency table (deterministic, so the samplers are
    compared on the same landscape, not on timing noise) and accuracy from the first
    ``--val-batches`` validation batches. Target: the default sampler reaches random
    search's 200-trial hypervolume within 25 trials.
(b) The headline: the searched front against hand-made uniform baselines (EViT-style keep
    ratios at the space's fixed blocks; uniform heads; uniform MLP ratio; patch size
    alone), every model scored on the whole test set on the same shared weights and timed
    here, interleaved with the full model. Target: at 2x speedup the front is at least 1
    point more accurate than the best baseline and within 1 point of the full model.
(c) Seconds per trial, by stage (from what each trial recorded); ``--part c`` runs the
    TPE and random searches of (a) alone, into their own database, for this table only.

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

from vitpareto.search import SearchConfig, load_supernet, search
from vitpareto.search.explore import front_hypervolume, latency_table
from vitpareto.search.outputs import trials_frame

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402
from _search_headline import part_b, part_budget, part_second, table_b  # noqa: E402

# study name prefixes, in table order
STUDIES = ("nsga2p10", "nsga2p20", "nsga2", "tpe", "gp", "predictor", "random")
# (sampler, NSGA-II population): Optuna's default population of 50, 20, and vitpareto's 10
RUNS = (
    ("nsga2", 50),
    ("nsga2", 20),
    ("nsga2", 10),
    ("tpe", 0),
    ("gp", 0),
    ("predictor", 0),
    ("random", 0),
)
LABELS = {
    "nsga2": "nsga2 (population 50)",
    "nsga2p20": "nsga2 (population 20)",
    "nsga2p10": "nsga2 (population 10)",
}
SEEDS = (0, 1, 2, 3, 4)
CHECKPOINTS = (10, 15, 25, 50, 100, 150, 200)


def study_prefix(sampler: str, population: int) -> str:
    """The name of a run's studies, before the seed (see ``STUDIES``)."""
    return f"nsga2p{population}" if sampler == "nsga2" and population != 50 else sampler


def _run(args_tuple):
    supernet, storage, sampler, seed, trials, val_batches, population = args_tuple
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    net = load_supernet(supernet)
    config = SearchConfig(
        sampler=sampler,
        seed=seed,
        population=population or 10,  # NSGA-II's only; the others ignore it
        latency="predicted",
        max_batches=val_batches,
        latency_batch=64,
        threads=1,
    )
    name = f"{study_prefix(sampler, population)}-{seed}"
    search(net, storage, name, trials, config, progress=False)
    print(f"done {sampler} seed {seed}", flush=True)


def part_a(args) -> None:
    """Run the nine searches (two at a time on two cores) into one database."""
    net = load_supernet(args.supernet)
    # build the latency table (one thread, as every search uses) before the workers need it
    config = SearchConfig(latency="predicted", latency_batch=64, threads=1)
    latency_table(net, config)
    wanted = args.samplers.split(",")
    jobs = [
        (str(args.supernet), args.storage, s, k, trials(args, s), args.val_batches, p)
        for k in SEEDS
        for s, p in RUNS
        if study_prefix(s, p) in wanted
    ]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        list(pool.imap_unordered(_run, jobs))


def trials(args, sampler: str) -> int:
    """Random search runs long enough to set the target; the others, ``--trials``."""
    return args.random_trials if sampler == "random" else args.trials


def part_c(args) -> None:
    """(c) alone: the TPE and random searches of (a), into their own database, and the
    seconds per trial by stage from them (to check a change made no stage slower)."""
    args.samplers = "tpe,random"
    part_a(args)
    head = (
        f"{date.today()}, {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, optuna {optuna.__version__}; {args.trials} trials per search, "
        f"accuracy on {args.val_batches} batches, predicted latency at batch 64."
    )
    md = f"### (c) Seconds per trial, by stage\n\n{head}\n\n{table_c(args.storage, {})}\n"
    write_section("bench_search:c", md)
    print(md)


def hv_curve(study, ref) -> dict[int, float]:
    """Hypervolume of the feasible trials among the first n (dominated ones add nothing)."""
    df = trials_frame(study).sort_values("trial")
    objectives = study.user_attrs["objectives"]
    out = {}
    for n in CHECKPOINTS:
        if len(df) >= n:
            head = df.iloc[:n]
            head = head[head["feasible"]].drop(columns="pareto")
            out[n] = front_hypervolume(head, objectives, ref)[0]
    return out


def table_a(storage: str) -> tuple[str, dict]:
    curves = {}
    ref = None
    names = {st.study_name for st in optuna.get_all_study_summaries(storage)}
    samplers = [s for s in STUDIES if all(f"{s}-{k}" in names for k in SEEDS)]
    for s in samplers:
        for k in SEEDS:
            st = optuna.load_study(study_name=f"{s}-{k}", storage=storage)
            ref = ref or {"accuracy": 0.0, "latency_ms": st.user_attrs["full"]["latency_ms"]}
            curves[(s, k)] = hv_curve(st, ref)
    lines = [
        "| sampler | " + " | ".join(f"{n} trials" for n in CHECKPOINTS) + " | sampler s/trial |",
        "|---|" + "---|" * (len(CHECKPOINTS) + 1),
    ]
    medians = {}
    for s in samplers:
        cells = []
        for n in CHECKPOINTS:
            vals = [curves[(s, k)].get(n) for k in SEEDS if n in curves[(s, k)]]
            medians[(s, n)] = float(np.median(vals)) if vals else float("nan")
            cells.append(
                f"{medians[(s, n)]:.4f} ({min(vals):.4f}-{max(vals):.4f})" if vals else "-"
            )
        cells.append(f"{sampler_seconds(storage, s):.3f}")
        lines.append(f"| {LABELS.get(s, s)} | " + " | ".join(cells) + " |")
    target = medians.get(("random", 200))
    reach = {}
    for s in samplers:
        reach[s] = next(
            (n for n in CHECKPOINTS if target is not None and medians[(s, n)] >= target), None
        )
    text = "\n".join(lines) + (
        f"\n\nHypervolume (median over seeds {SEEDS}, range in brackets), reference: accuracy 0,"
        f" latency {ref['latency_ms']:.3f} ms (the full model, predicted). Random search's "
        f"200-trial median is {target:.4f}; first checkpoint at which each sampler's median "
        "reaches it: "
        + ", ".join(
            f"{LABELS.get(s, s)} {reach[s] or f'not within {max(curves[(s, 0)], default=0)}'}"
            for s in samplers
        )
        + ". Sampler s/trial: the median time of a trial outside its scoring stages (the "
        "sampler's proposal, the database, the trial loop)."
    )
    return text, {"medians": {f"{s}@{n}": v for (s, n), v in medians.items()}, "reach": reach}


def sampler_seconds(storage: str, prefix: str) -> float:
    """Median seconds of a trial outside its scoring stages, over a run's seeds."""
    rest = []
    for k in SEEDS:
        st = optuna.load_study(study_name=f"{prefix}-{k}", storage=storage)
        for t in st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            total = (t.datetime_complete - t.datetime_start).total_seconds()
            rest.append(total - sum((t.user_attrs.get("stage_seconds") or {}).values()))
    return float(np.median(rest))


def part_a_table(args) -> None:
    """(a)'s table alone, into its own section."""
    text, _ = table_a(args.storage)
    head = (
        f"{date.today()}, {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, optuna {optuna.__version__}; supernet {args.supernet.name} "
        f"(Fashion-MNIST), accuracy on {args.val_batches} batches, predicted latency at batch "
        f"64; random search {args.random_trials} trials, the others {args.trials}; two "
        "searches at a time on two cores."
    )
    md = f"### (a) Hypervolume against trials, every sampler\n\n{head}\n\n{text}\n"
    write_section("bench_search:a", md)
    print(md)


def table_c(storage: str, extra: dict[str, list[float]]) -> str:
    stages: dict[str, list[float]] = {}
    totals = []
    for s in ("tpe", "random"):  # the sampler's own time differs; these two bracket it
        for k in SEEDS:
            st = optuna.load_study(study_name=f"{s}-{k}", storage=storage)
            for t in st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                sec = t.user_attrs.get("stage_seconds") or {}
                for name, v in sec.items():
                    stages.setdefault(name, []).append(v)
                total = (t.datetime_complete - t.datetime_start).total_seconds()
                totals.append(total)
                stages.setdefault("sampler, storage and the rest", []).append(
                    total - sum(sec.values())
                )
    lines = ["| stage | median s | p90 s |", "|---|---|---|"]
    for name, v in stages.items():
        lines.append(f"| {name} | {np.median(v):.3f} | {np.percentile(v, 90):.3f} |")
    lines.append(f"| whole trial | {np.median(totals):.3f} | {np.percentile(totals, 90):.3f} |")
    if extra:
        lines.append("| *per model of the front's second stage (part b):* | | |")
    for name, v in extra.items():
        lines.append(f"| {name} | {np.median(v):.3f} | {np.percentile(v, 90):.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", type=Path, default=Path("results/fmnist_bench/supernet.pt"))
    p.add_argument("--storage", default="sqlite:///results/fmnist_bench/search.db")
    p.add_argument(
        "--part", choices=["a", "a-table", "b", "budget", "second", "table", "c"], required=True
    )
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--val-batches", type=int, default=8, help="128-image batches for (a)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument(
        "--samplers",
        default=",".join(STUDIES),
        help="runs of part a to do, by study prefix (nsga2 is NSGA-II with population 50)",
    )
    p.add_argument("--random-trials", type=int, default=200, help="random search's trials")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="results/fmnist_bench/headline.json")
    args = p.parse_args()
    if args.part == "a":
        part_a(args)
    elif args.part == "a-table":
        part_a_table(args)
    elif args.part == "c":
        part_c(args)
    elif args.part == "b":
        part_b(args)
    elif args.part == "budget":
        part_budget(args)
    elif args.part == "second":
        part_second(args)
    else:
        a, _ = table_a(args.storage)
        headline = json.loads(Path(args.json).read_text())
        b, _ = table_b(headline["rows"])
        full = headline["rows"]["full model"]["accuracy"]
        for name, (before, after) in headline.get("second_stage", {}).items():
            b += (
                f"\n\nAfter the second stage (200 fine-tuning steps): {name}: {before:.4f} -> "
                f"{after:.4f} ({100 * (after - full):+.2f} points against the full model)"
            )
        c = table_c(args.storage, headline["stages"])
        head = (
            f"{date.today()}, {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"optuna {optuna.__version__}. Supernet: benchmarks/fmnist/model.yaml + "
            f"space.yaml on Fashion-MNIST ({args.supernet.name})."
        )
        md = (
            f"{head}\n\n### (a) Hypervolume against trials\n\n{a}\n\n"
            f"### (b) The front against uniform baselines\n\n{b}\n\n"
            f"### (c) Seconds per trial, by stage (the TPE and random searches of (a))\n\n{c}\n"
        )
        write_section("bench_search", "## Search (bench_search.py)\n\n" + md)
        print(md)


if __name__ == "__main__":
    main()
