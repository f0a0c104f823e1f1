"""Search throughput: trials per minute with 1 and 2 workers on this machine, latency
measured and predicted, on the Ray backend and the local one (``--jobs``); and the cost per
trial of each shared part (the database, the target device), from which a model of
throughput on N nodes follows (written with the table).

    python benchmarks/bench_cluster.py --supernet results/fmnist_bench/supernet.pt \\
        [--postgres postgresql://...]

Throughput is steady state: trials completed in a run, over the time from its first to its
last completion (start-up, Ray's included, is reported apart). Runs are interleaved
(ray/local, 1/2 workers, measured/predicted) and repeated; medians are quoted.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import optuna
import ray
import torch
from optuna.trial import TrialState

from vitpareto.search import RayBackend, SearchConfig, load_supernet, search
from vitpareto.search.explore import TrialLoop, open_study

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402


def steady(study, since: float) -> tuple[int, float]:
    """Trials completed after ``since`` and their rate per minute (first to last)."""
    ts = sorted(
        t.datetime_complete.timestamp()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.datetime_complete.timestamp() >= since
    )
    return len(ts), 60 * (len(ts) - 1) / (ts[-1] - ts[0])


def run(backend: str, workers: int, latency: str, args, url: str, name: str) -> dict:
    net = load_supernet(args.supernet)
    config = SearchConfig(
        latency=latency, max_batches=args.val_batches, threads=1, sampler=args.sampler
    )
    start = time.time()
    if backend == "ray":
        ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
        ready = time.time()
        study = search(net, url, name, args.trials, config, RayBackend(), progress=False)
        ray.shutdown()
    else:
        ready = time.time()
        study = search(net, url, name, args.trials, config, progress=False, jobs=workers)
    n, rate = steady(study, start)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    lat = [t.user_attrs["stage_seconds"].get("latency", 0.0) for t in trials]
    return {
        "rate": rate,
        "n": n,
        "startup": ready - start,
        "wall": time.time() - start,
        "latency_s": statistics.median(lat),
    }


def db_cost(url: str, supernet, source, trials: int = 40) -> float:
    """Seconds per trial the database costs the driver: the trial loop's start (the count,
    ask, suggest, the duplicate check, the parameters written) and finish (the duplicate
    check, the metrics of a real trial stored, tell), as the Ray driver runs it for every
    trial; the median of ``trials``."""
    config = SearchConfig(latency="predicted", threads=1, sampler="nsga2")
    study, storage = open_study(url, f"db-{time.time_ns()}", supernet, config)
    metrics = {
        k: v
        for k, v in source.user_attrs.items()
        if k not in ("candidate", "fidelity", "worker", "trial_node")
    }
    loop = TrialLoop(study, storage, supernet.space, trials, config)
    times = []
    with loop.beat:
        for _ in range(trials):
            t0 = time.perf_counter()
            started = loop.start()
            if started is None:
                break
            loop.finish(started, metrics)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--supernet", type=Path, required=True)
    p.add_argument("--trials", type=int, default=40, help="trials per run (default: 40)")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting (default: 2)")
    p.add_argument("--val-batches", type=int, default=8, help="accuracy batches (default: 8)")
    p.add_argument("--postgres", help="a PostgreSQL URL, for its per-trial cost too")
    p.add_argument("--sampler", default="nsga2", help="the searches' sampler (default: nsga2)")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    settings = [
        (b, w, lat) for lat in ("measured", "predicted") for w in (1, 2) for b in ("local", "ray")
    ]
    got: dict[tuple, list[dict]] = {s: [] for s in settings}
    for r in range(args.repeats):
        for s in settings:  # interleaved, so drift on this shared machine hits all alike
            url = f"sqlite:///{work / f'{r}-{s[0]}-{s[1]}-{s[2]}.db'}"
            got[s].append(run(*s, args, url, "t"))
            res = got[s][-1]
            print(s, f"{res['rate']:.1f}/min startup {res['startup']:.1f}s", flush=True)
    net = load_supernet(args.supernet)
    some = optuna.load_study(study_name="t", storage=f"sqlite:///{work / '0-local-1-measured.db'}")
    source = some.get_trials(states=(TrialState.COMPLETE,))[0]
    db = {"SQLite": db_cost(f"sqlite:///{work / 'db.db'}", net, source)}
    if args.postgres:
        db["PostgreSQL"] = db_cost(args.postgres, net, source)

    med = {s: {k: statistics.median(x[k] for x in got[s]) for k in got[s][0]} for s in settings}
    rows = [
        "| backend | workers | latency | trials/min (median) | runs | start-up s | latency s/trial |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in settings:
        m = med[s]
        rows.append(
            f"| {s[0]} | {s[1]} | {s[2]} | {m['rate']:.1f} | "
            + ", ".join(f"{x['rate']:.1f}" for x in got[s])
            + f" | {m['startup']:.1f} | {m['latency_s']:.3f} |"
        )
    t_one = 60 / med[("ray", 1, "predicted")]["rate"]  # seconds of one worker per trial
    t_lat = med[("ray", 1, "measured")]["latency_s"]
    db_rows = [f"| {k} | {1000 * v:.1f} | {60 / v:.0f} |" for k, v in db.items()]
    model = f"""
Model of throughput on N worker nodes of w CPUs (one trial per CPU), from these figures:

    trials/min = min(N * w * 60 / t_trial, 60 / t_latency * targets, 60 / t_db)

- t_trial = {t_one:.2f} s: one worker's time per trial with predicted latency (Ray, 1 CPU),
  Ray's per-trial overhead included.
- t_latency = {t_lat:.3f} s: one latency measurement (median); with `--target` each target
  node measures one model at a time, so measured latency caps a search at
  {60 / t_lat:.0f} trials/min per target node whatever the number of workers.
- t_db: the driver's database work per trial (the trial loop: count, ask, suggest,
  duplicate checks, parameters and metrics stored, tell), serial in the Ray driver:

| database | ms per trial | cap, trials/min |
|---|---|---|
""" + "\n".join(db_rows)
    md = (
        f"## Cluster throughput (bench_cluster.py)\n\n"
        f"{date.today()}, this machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, torch "
        f"{torch.__version__}, optuna {optuna.__version__}, ray {ray.__version__}. Supernet "
        f"{args.supernet.name} (Fashion-MNIST, benchmarks/fmnist), {args.trials} trials per run "
        f"({args.sampler}), "
        f"accuracy on {args.val_batches} batches, latency at batch 1 on 1 thread.\n\n"
        + "\n".join(rows)
        + "\n"
        + model
    )
    write_section("bench_cluster", md)
    print(md)


if __name__ == "__main__":
    main()
