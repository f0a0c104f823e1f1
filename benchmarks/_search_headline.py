"""Part (b) of bench_search: the searched front against hand-made uniform baselines, every
model scored on the whole test set and timed here (see bench_search.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import torch

from vitpareto.search import FinetuneConfig, SearchConfig, finetune, load_supernet, search
from vitpareto.spaces import Candidate


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
