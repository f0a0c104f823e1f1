"""The samplers on a second space: deit_small's shapes (12 blocks, 6 heads, MLP 1536, embed
384), latency predicted from a table timed on deit_small itself at 224 px, accuracy from a
digits-sized proxy (the same shapes at 32 px, patch 8, trained on scikit-learn's digits).

Each sampler searches five seeds (random search ``--random-trials``, the others
``--trials``); the front's hypervolume is read at checkpoints against the full model
(accuracy 0, the full model's predicted latency), and the first checkpoint at which each
sampler's median reaches random search's final median is stated, as in bench_search (a).

    python benchmarks/bench_samplers.py [--trials 100] [--random-trials 200] [--jobs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

import numpy as np
import optuna
import timm
import torch
from optuna.trial import TrialState

from vitpareto.evaluators import Evaluator, LatencyPredictor, PredictedLatencyEvaluator
from vitpareto.search import SearchConfig, SupernetTrainer, TrainConfig, load_supernet
from vitpareto.search.explore import (
    TrialLoop,
    enqueue_design,
    hypervolume,
    make_scorer,
    open_study,
)
from vitpareto.spaces import Candidate, ElasticViT, JointSpace

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

SPACE = {
    "heads": {"choices": [2, 3, 4, 5, 6], "groups": [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]},
    "mlp": {
        "choices": [0.25, 0.5, 0.75, 1.0],
        "groups": [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]],
    },
    "keep": {"blocks": [3, 6, 9], "choices": [0.5, 0.7, 1.0]},
}
SAMPLERS = ("nsga2", "tpe", "gp", "predictor", "random")
SEEDS = (0, 1, 2, 3, 4)
CHECKPOINTS = (10, 15, 25, 50, 100, 150, 200)
WORK = Path("results/samplers_deit")


def proxy(epochs: int) -> Path:
    """The deit_small-shaped digits supernet (trained once, then reused)."""
    path = WORK / "supernet.pt"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        trainer = SupernetTrainer.create(
            "deit_small_patch16_224",
            "digits",
            TrainConfig(epochs=epochs, batch_size=64, random_candidates=1),
            space=JointSpace.from_dict(SPACE),
            model_kwargs=dict(img_size=32, patch_size=8),
        )
        trainer.fit(path)
    return path


def table() -> tuple[LatencyPredictor, ElasticViT]:
    """The latency table of deit_small at 224 px for the space, on one thread, and the
    model it was timed on."""
    torch.set_num_threads(1)
    elastic = ElasticViT(timm.create_model("deit_small_patch16_224")).eval()
    space = JointSpace.from_dict(SPACE, elastic)
    return LatencyPredictor.cached(elastic, space, "cpu", 1, WORK), elastic


class AtFullSize(Evaluator):
    """A proxy candidate's latency on deit_small at 224 px: the same heads, MLP channels
    and keep ratios, deit_small's own patch size."""

    name = "latency"
    keys = PredictedLatencyEvaluator.keys

    def __init__(self, lat: LatencyPredictor, elastic: ElasticViT):
        self.inner, self.elastic = PredictedLatencyEvaluator(lat), elastic

    def evaluate(self, elastic, candidate, context=None):
        full_size = dataclasses.replace(candidate, patch_size=self.elastic.spec.patch_size)
        return self.inner(self.elastic, full_size, context)


def _search(job) -> None:
    sampler, seed, trials, val_batches = job
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    net = load_supernet(WORK / "supernet.pt")
    config = SearchConfig(
        sampler=sampler, seed=seed, latency="predicted", max_batches=val_batches, threads=1
    )
    lat, big = table()
    url = f"sqlite:///{WORK / 'searches.db'}"
    study, storage = open_study(url, f"{sampler}-{seed}", net, config)
    enqueue_design(study, net.space, config, trials)  # as search() does for a new study
    scorer = make_scorer(net, config, AtFullSize(lat, big))
    elastic = net.elastic.eval()
    TrialLoop(study, storage, net.space, trials, config).run(lambda c: scorer(elastic, c))
    print(f"done {sampler} seed {seed}", flush=True)


def curve(study, full_ms: float) -> dict[int, float]:
    """Hypervolume of the first n completed trials, against (accuracy 0, the full model)."""
    done = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    pts = np.array([[1 - t.values[0], t.values[1] / full_ms] for t in done])
    return {n: hypervolume(pts[:n], np.array([1.0, 1.0])) for n in CHECKPOINTS if len(pts) >= n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--random-trials", type=int, default=200)
    p.add_argument("--epochs", type=int, default=2, help="the proxy supernet's (default: 2)")
    p.add_argument("--val-batches", type=int, default=2, help="128-image batches (default: 2)")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    proxy(args.epochs)
    lat, big = table()
    full_ms = lat.predict(Candidate.full(big.spec))
    jobs = [
        (s, k, args.random_trials if s == "random" else args.trials, args.val_batches)
        for k in SEEDS
        for s in SAMPLERS
    ]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        list(pool.imap_unordered(_search, jobs))
    url = f"sqlite:///{WORK / 'searches.db'}"
    curves = {
        (s, k): curve(optuna.load_study(study_name=f"{s}-{k}", storage=url), full_ms)
        for s in SAMPLERS
        for k in SEEDS
    }
    med = {}
    lines = [
        "| sampler | " + " | ".join(f"{n} trials" for n in CHECKPOINTS) + " |",
        "|---|" + "---|" * len(CHECKPOINTS),
    ]
    for s in SAMPLERS:
        cells = []
        for n in CHECKPOINTS:
            vals = [curves[(s, k)][n] for k in SEEDS if n in curves[(s, k)]]
            med[(s, n)] = statistics.median(vals) if vals else float("nan")
            cells.append(f"{med[(s, n)]:.4f} ({min(vals):.4f}-{max(vals):.4f})" if vals else "-")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    target = med[("random", args.random_trials)]
    reach = {s: next((n for n in CHECKPOINTS if med[(s, n)] >= target), None) for s in SAMPLERS}
    md = (
        "## Samplers on deit_small shapes (bench_samplers.py)\n\n"
        f"{date.today()}, {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, optuna {optuna.__version__}. Latency: a table timed on "
        f"deit_small at 224 px, batch 1, one thread (full model {full_ms:.1f} ms); accuracy: "
        f"the same shapes at 32 px on digits ({args.epochs} epochs, {args.val_batches} "
        f"validation batches); five seeds, random search {args.random_trials} trials, the "
        f"others {args.trials}.\n\n" + "\n".join(lines) + "\n\nHypervolume (median over seeds, "
        "range in brackets) against accuracy 0 and the full model's latency. Random "
        f"search's {args.random_trials}-trial median is {target:.4f}; first checkpoint at "
        "which each sampler's median reaches it: "
        + ", ".join(f"{s} {reach[s] or 'not within ' + str(args.trials)}" for s in SAMPLERS)
        + ".\n"
    )
    write_section("bench_samplers:deit", md)
    print(md)


if __name__ == "__main__":
    main()
