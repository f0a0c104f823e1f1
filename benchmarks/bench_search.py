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
import time
from datetime import date
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from vitpareto.search import FinetuneConfig, SearchConfig, finetune, load_supernet, search
from vitpareto.search.explore import front_hypervolume, latency_table
from vitpareto.search.outputs import trials_frame
from vitpareto.spaces import Candidate

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

STUDIES = ("nsga2p10", "nsga2p20", "nsga2", "tpe", "random")  # study name prefixes, in table order
# (sampler, NSGA-II population): Optuna's default population of 50, 20, and vitpareto's 10
RUNS = (("nsga2", 50), ("nsga2", 20), ("nsga2", 10), ("tpe", 0), ("random", 0))
LABELS = {
    "nsga2": "nsga2 (population 50)",
    "nsga2p20": "nsga2 (population 20)",
    "nsga2p10": "nsga2 (population 10, the default)",
}
SEEDS = (0, 1, 2)
CHECKPOINTS = (25, 50, 100, 150, 200)


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
    name = (
        f"{sampler}-{seed}"
        if sampler != "nsga2" or population == 50
        else f"nsga2p{population}-{seed}"
    )
    search(net, storage, name, trials, config, progress=False)
    print(f"done {sampler} seed {seed}", flush=True)


def part_a(args) -> None:
    """Run the nine searches (two at a time on two cores) into one database."""
    net = load_supernet(args.supernet)
    # build the latency table (one thread, as every search uses) before the workers need it
    config = SearchConfig(latency="predicted", latency_batch=64, threads=1)
    latency_table(net, config)
    jobs = [
        (str(args.supernet), args.storage, s, k, args.trials, args.val_batches, p)
        for k in SEEDS
        for s, p in RUNS
        if s in args.samplers.split(",")
    ]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        list(pool.imap_unordered(_run, jobs))


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
        "| sampler | " + " | ".join(f"{n} trials" for n in CHECKPOINTS) + " |",
        "|---|" + "---|" * len(CHECKPOINTS),
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
        + ", ".join(f"{LABELS.get(s, s)} {reach[s] or 'not within 200'}" for s in samplers)
        + "."
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
    """Score the default search's front (NSGA-II, population 10, seed 0) and the baselines on the full test set, timed here."""
    from vitpareto.evaluators import AccuracyEvaluator, LatencyEvaluator

    torch.set_num_threads(args.threads)
    net = load_supernet(args.supernet)
    spec = net.elastic.spec
    st = optuna.load_study(study_name="nsga2p10-0", storage=args.storage)  # the default
    cands = {"full model": Candidate.full(spec)}
    for t in st.best_trials:
        cands[f"front trial {t.number}"] = Candidate.from_dict(t.user_attrs["candidate"])
    cands.update(baselines(spec, net.space))
    data = net.load_data(batch_size=256)
    acc = AccuracyEvaluator(data.val, progress=False)
    lat = LatencyEvaluator(batch_size=64, repeats=15)
    rows, stages = {}, {"accuracy, whole test set": [], "latency measured": []}
    for i, (name, c) in enumerate(cands.items()):
        t0 = time.perf_counter()
        m = acc(net.elastic, c)
        t1 = time.perf_counter()
        m.update(lat(net.elastic, c, m))
        stages["accuracy, whole test set"].append(t1 - t0)
        stages["latency measured"].append(time.perf_counter() - t1)
        rows[name] = {k: m[k] for k in ("accuracy", "latency_ms", "speedup")}
        print(f"[{i + 1}/{len(cands)}] {name}: {rows[name]}", flush=True)
    # the second stage's cost: fine-tuning two front models (200 steps)
    stages["fine-tune, 200 steps"] = []
    finetuned = []
    for t in st.best_trials[:2]:
        t0 = time.perf_counter()
        cand = Candidate.from_dict(t.user_attrs["candidate"])
        ft = finetune(net, cand, FinetuneConfig(steps=200), progress=False, data=data)
        stages["fine-tune, 200 steps"].append(time.perf_counter() - t0)
        m = ft.metrics
        finetuned.append(f"trial {t.number}: {m['shared_accuracy']:.4f} -> {m['accuracy']:.4f}")
        print("fine-tuned", finetuned[-1], flush=True)
    doc = {"rows": rows, "stages": stages, "finetuned": finetuned}
    Path(args.json).write_text(json.dumps(doc, indent=1))


def part_budget(args) -> None:
    """The user's way to a latency budget: a search constrained to half the full model's
    (predicted) latency, accuracy on the whole test set; its feasible front is then timed
    here like the rest of (b) and added to its rows."""
    from vitpareto.evaluators import AccuracyEvaluator, LatencyEvaluator

    torch.set_num_threads(args.threads)
    net = load_supernet(args.supernet)
    full = optuna.load_study(study_name="nsga2p10-0", storage=args.storage).user_attrs["full"]
    config = SearchConfig(
        latency="predicted", latency_batch=64, threads=1, max_latency_ms=full["latency_ms"] / 2
    )
    st = search(net, args.storage, "budget-2x", args.trials, config)
    data = net.load_data(batch_size=256)
    acc = AccuracyEvaluator(data.val, progress=False)
    lat = LatencyEvaluator(batch_size=64, repeats=15)
    doc = json.loads(Path(args.json).read_text())
    for t in st.best_trials:
        c = Candidate.from_dict(t.user_attrs["candidate"])
        m = acc(net.elastic, c)
        m.update(lat(net.elastic, c, m))
        name = f"front at the 2x budget, trial {t.number}"
        doc["rows"][name] = {k: m[k] for k in ("accuracy", "latency_ms", "speedup")}
        print(name, doc["rows"][name], flush=True)
    Path(args.json).write_text(json.dumps(doc, indent=1))


def part_second(args) -> None:
    """Both sides through the second stage: the best searched model and the best uniform
    baseline at >= 2x measured speedup, each fine-tuned 200 steps and scored again."""
    torch.set_num_threads(args.threads)
    net = load_supernet(args.supernet)
    spec = net.elastic.spec
    doc = json.loads(Path(args.json).read_text())
    fast = {n: r for n, r in doc["rows"].items() if r["speedup"] >= 2.0}
    searched = max((n for n in fast if n.startswith("front")), key=lambda n: fast[n]["accuracy"])
    base = max((n for n in fast if not n.startswith("front")), key=lambda n: fast[n]["accuracy"])
    study = "budget-2x" if "budget" in searched else "nsga2p10-0"
    trial = optuna.load_study(study_name=study, storage=args.storage).trials[
        int(searched.rsplit(" ", 1)[-1])
    ]
    cands = {
        searched: Candidate.from_dict(trial.user_attrs["candidate"]),
        base: baselines(spec, net.space)[base],
    }
    data = net.load_data(batch_size=FinetuneConfig().batch_size)
    out = {}
    for name, c in cands.items():
        ft = finetune(net, c, FinetuneConfig(steps=200), progress=False, data=data)
        out[name] = [ft.metrics["shared_accuracy"], ft.metrics["accuracy"]]
        print(name, out[name], flush=True)
    doc["second_stage"] = out
    Path(args.json).write_text(json.dumps(doc, indent=1))


def table_b(rows: dict) -> tuple[str, dict]:
    full = rows["full model"]["accuracy"]

    def family(name: str) -> str:
        for f in (
            "front at the 2x budget",
            "front",
            "EViT",
            "uniform heads",
            "uniform MLP",
            "patch",
        ):
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
    fronts = [v for f, v in best.items() if f.startswith("front")]
    front = max(fronts, default=(float("nan"), "none"))
    base = max(
        (v for f, v in best.items() if not f.startswith("front")), default=(float("nan"), "none")
    )
    summary = (
        f"\n\nAt >= 2x measured speedup: best searched model {front[0]:.4f} ({front[1]}); best "
        f"uniform baseline {base[0]:.4f} ({base[1]}); full model {full:.4f}. Searched - "
        f"baseline {100 * (front[0] - base[0]):+.2f} points (target >= +1), searched - full "
        f"{100 * (front[0] - full):+.2f} points (target >= -1)."
    )
    return "\n".join(lines) + summary, {"front": front, "baseline": base, "full": full}


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
    p.add_argument("--part", choices=["a", "b", "budget", "second", "table", "c"], required=True)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--val-batches", type=int, default=8, help="128-image batches for (a)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--samplers", default="nsga2,tpe,random", help="runs of part a to do")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="results/fmnist_bench/headline.json")
    args = p.parse_args()
    if args.part == "a":
        part_a(args)
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
