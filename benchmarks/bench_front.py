"""The front's second stage against the search's own timing: which front is the true one?

    make demo                                   # the supernet this benchmark searches
    python benchmarks/bench_front.py [--supernet results/demo/supernet.pt] [--trials 48] \\
        [--seeds 3] [--rounds 100] [--truth-rounds 600]

For each seed: a search with the demo's settings (each trial timed 10 interleaved rounds
against the full model), then its second stage with ``--rounds`` and no fine-tuning (so
only the timing moves), then the truth: every model the second stage timed and the full
model, run in the same ``--truth-rounds`` rounds, each round in a fresh random order, a
model's true speedup being the median over rounds of the full model's time over its own.
Reported: how far the search's and the second stage's speedups were from the truth, and
the true hypervolume of each front (accuracy against 1 / true speedup, the full model at
1): does the front the second stage chose beat the one the search chose?
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import stamp, write_section  # noqa: E402

from vitpareto.evaluators import first_images, speedup, time_interleaved  # noqa: E402
from vitpareto.search import SearchConfig, load_supernet, rescore_front, search  # noqa: E402
from vitpareto.search.explore import front_hypervolume  # noqa: E402
from vitpareto.spaces import Candidate  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def truth(net, config: SearchConfig, cands: dict[int, Candidate], rounds: int) -> dict:
    """Each candidate's speedup over the full model, all timed in the same rounds."""
    images = first_images(net.load_data(batch_size=config.latency_batch).val,
                          config.latency_batch)  # fmt: skip
    b = config.latency_batch
    models = {}
    for key, cand in {**cands, "full": Candidate.full(net.elastic.spec)}.items():
        model = net.elastic.extract(cand).eval()
        models[key] = (lambda t, m=model: m.forward_dynamic(t)) if cand.exits else (
            lambda t, m=model: m(t[:b]))  # fmt: skip
    times = time_interleaved(models, images, repeats=rounds, warmup=10)
    return {k: speedup(times["full"], times[k]) for k in cands}


def true_volume(rows: pd.DataFrame, true_speedup: dict[int, float]) -> float:
    """Hypervolume of ``rows`` (accuracy, source trial) at their true speedups."""
    df = pd.DataFrame({
        "accuracy": rows["accuracy"].to_numpy(),
        "latency_ms": [1 / true_speedup[t] for t in rows["source"]],
    })  # fmt: skip
    return front_hypervolume(df, ["accuracy", "latency_ms"], {"accuracy": 0.0, "latency_ms": 1})[0]


def one_seed(net, seed: int, args, url: str) -> dict:
    config = SearchConfig(latency_batch=64, seed=seed, threads=args.threads)
    name = f"s{seed}"
    log(f"seed {seed}: search of {args.trials} trials ...")
    study = search(net, url, name, args.trials, config, progress=False)
    log(f"seed {seed}: the front timed again at {args.rounds} rounds ...")
    front = rescore_front(net, url, name, config, steps=0, progress=False, rounds=args.rounds)
    rows = pd.DataFrame([
        dict(source=t.user_attrs["source_trial"], accuracy=t.user_attrs["accuracy"],
             searched=t.user_attrs["search_speedup"], retimed=t.user_attrs["speedup"])
        for t in front.get_trials(deepcopy=False) if t.values
    ])  # fmt: skip
    cands = {
        int(s): Candidate.from_dict(study.trials[int(s)].user_attrs["candidate"])
        for s in rows["source"]
    }
    log(f"seed {seed}: the truth, {len(cands)} models at {args.truth_rounds} rounds ...")
    true = truth(net, config, cands, args.truth_rounds)
    rows["true"] = [true[int(s)] for s in rows["source"]]
    searched_front = {t.number for t in study.best_trials}
    retimed_front = {t.user_attrs["source_trial"] for t in front.best_trials}
    err = {k: (rows[k] / rows["true"] - 1).abs() for k in ("searched", "retimed")}
    return dict(
        seed=seed,
        models=len(rows),
        err_searched=err["searched"].median(),
        worst_searched=err["searched"].max(),
        err_retimed=err["retimed"].median(),
        worst_retimed=err["retimed"].max(),
        hv_searched=true_volume(rows[rows["source"].isin(searched_front)], true),
        hv_retimed=true_volume(rows[rows["source"].isin(retimed_front)], true),
        hv_all=true_volume(rows, true),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--supernet", type=Path, default=Path("results/demo/supernet.pt"))
    p.add_argument("--trials", type=int, default=48)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--truth-rounds", type=int, default=600)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if not args.supernet.is_file():
        raise SystemExit(f"no supernet at {args.supernet}: run `make demo` first, or pass one")
    if args.threads:  # the truth's threads, as the searches' are
        torch.set_num_threads(args.threads)
    net = load_supernet(args.supernet)
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{Path(d) / 'front.db'}"
        results = [one_seed(net, seed, args, url) for seed in range(args.seeds)]
    head = ("| seed | models timed again | searched speedup off the truth (median / worst) "
            "| timed again off the truth (median / worst) | true hypervolume: search's front "
            "| second stage's front | every model timed |")  # fmt: skip
    lines = [
        "## The front's second stage against the search's timing (bench_front.py)",
        "",
        f"{stamp()}. Supernet `{args.supernet.name}` (the demo's: test_vit on digits), "
        f"searches of {args.trials} trials with the demo's settings (eager, batch 64, 10 "
        f"interleaved rounds per trial), the second stage at {args.rounds} rounds without "
        f"fine-tuning; the truth: every model it timed and the full model in the same "
        f"{args.truth_rounds} rounds, each in a fresh random order. Hypervolumes are on the "
        f"true speedups (box: accuracy 0..1 x latency 0..full model).",
        "",
        head,
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['seed']} | {r['models']} | {r['err_searched']:.1%} / {r['worst_searched']:.1%}"
            f" | {r['err_retimed']:.1%} / {r['worst_retimed']:.1%} | {r['hv_searched']:.4f}"
            f" | {r['hv_retimed']:.4f} | {r['hv_all']:.4f} |"
        )
    med = {k: statistics.median(r[k] for r in results) for k in results[0] if k != "seed"}
    lines.append(
        f"| median | {med['models']:.0f} | {med['err_searched']:.1%} / "
        f"{med['worst_searched']:.1%} | {med['err_retimed']:.1%} / {med['worst_retimed']:.1%} "
        f"| {med['hv_searched']:.4f} | {med['hv_retimed']:.4f} | {med['hv_all']:.4f} |"
    )
    write_section("bench_front", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
