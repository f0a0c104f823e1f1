"""Two versions of vitpareto side by side: did a change make the search slower?

    git worktree add /tmp/before <commit>        # the version to compare against
    python benchmarks/bench_versions.py --before /tmp/before \\
        --supernet results/fmnist_bench/supernet.pt [--trials 30] [--repeats 2] \\
        [--search-args "--backend ray" --latencies measured --section bench_versions:ray]

Each version runs `vitpareto search` through its own command line (the one interface every
version shares), on the same supernet, interleaved (before, after, after, before, ...), with
latency predicted and measured. The figures come from what each search stored: trials per
minute from the first to the last completion, and each trial's seconds by stage (cost,
accuracy, latency, and the rest: sampler, database, bookkeeping), and the CPU seconds the
whole search spent by process role (the driver, Ray's trial workers and services; Linux).
Medians over repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).parent))
from _proc import run_sampled  # noqa: E402
from _results import write_section  # noqa: E402

HERE = Path(__file__).resolve().parents[1]
ROOT_FILES = ("__init__", "errors", "files")  # the root package's modules, where they exist


def package(checkout: Path, into: Path) -> Path:
    """A directory that imports ``checkout`` as ``vitpareto`` (its package-dir mapping)."""
    pkg = into / "vitpareto"
    pkg.mkdir(parents=True)
    for name in ROOT_FILES:
        src = checkout / "search" / "_root" / f"{name}.py"
        if src.exists():
            (pkg / f"{name}.py").symlink_to(src)
    for sub in ("spaces", "evaluators", "search"):
        (pkg / sub).symlink_to(checkout / sub)
    return into


def run(path: Path, supernet: Path, url: str, trials: int, latency: str, cwd: Path, extra=()):
    env = {**os.environ, "PYTHONPATH": str(path)}
    cmd = [sys.executable, "-m", "vitpareto.search.cli", "search", "--supernet", str(supernet),
           "--storage", url, "--study", "t", "--trials", str(trials), "--latency", latency,
           "--no-progress", *extra]  # fmt: skip
    out, cpu = run_sampled(cmd, env, cwd)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return {f"{role} CPU s": seconds for role, seconds in sorted(cpu.items())}


def figures(url: str) -> dict[str, float]:
    trials = optuna.load_study(study_name="t", storage=url).get_trials(
        states=(TrialState.COMPLETE,)
    )
    ends = sorted(t.datetime_complete.timestamp() for t in trials)
    out = {"trials/min": 60 * (len(ends) - 1) / (ends[-1] - ends[0])}
    stages: dict[str, list[float]] = {}
    for t in trials:
        sec = t.user_attrs.get("stage_seconds") or {}
        whole = (t.datetime_complete - t.datetime_start).total_seconds()
        for k, v in sec.items():
            stages.setdefault("latency" if k.startswith("latency") else k, []).append(v)
        stages.setdefault("the rest", []).append(whole - sum(sec.values()))
        stages.setdefault("whole trial", []).append(whole)
    out.update({f"{k} s": statistics.median(v) for k, v in stages.items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="checkout of the older version")
    p.add_argument("--after", type=Path, default=HERE, help="(default: this checkout)")
    p.add_argument("--supernet", type=Path, required=True)
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--label", default="", help="what the two versions are, for the table")
    p.add_argument("--search-args", default="", help="more options for both searches")
    p.add_argument("--latencies", default="predicted,measured", help="(default: both)")
    p.add_argument("--section", default="bench_versions", help="where in RESULTS.md")
    args = p.parse_args()
    latencies = args.latencies.split(",")
    extra = args.search_args.split()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-versions-"))
    paths = {v: package(getattr(args, v).resolve(), work / v) for v in ("before", "after")}
    got: dict[tuple, list[dict]] = {}
    for r in range(args.repeats):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for latency in latencies:
            for v in order:
                url = f"sqlite:///{work / f'{v}-{latency}-{r}.db'}"
                cpu = run(
                    paths[v], args.supernet.resolve(), url, args.trials, latency, work / v, extra
                )
                got.setdefault((latency, v), []).append({**figures(url), **cpu})
                print(latency, v, got[(latency, v)][-1], flush=True)
    rows = ["| latency | figure | before | after | after / before |", "|---|---|---|---|---|"]
    for latency in latencies:
        keys = [k for k in got[(latency, "after")][0] if k in got[(latency, "before")][0]]
        for k in keys:
            med = {
                v: statistics.median(x[k] for x in got[(latency, v)] if k in x)
                for v in ("before", "after")
            }
            ratio = med["after"] / med["before"] if med["before"] else float("nan")
            rows.append(
                f"| {latency} | {k} | {med['before']:.3f} | {med['after']:.3f} | {ratio:.2f} |"
            )
    md = (
        f"## Before and after (bench_versions.py){': ' + args.label if args.label else ''}\n\n"
        f"{date.today()}, {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, optuna {optuna.__version__}. Supernet {args.supernet.name}, "
        f"{args.trials} trials per search, {args.repeats} interleaved repeats (medians), "
        f"accuracy on the whole validation set, latency at batch 1"
        f"{'; options ' + args.search_args if args.search_args else ''}.\n\n" + "\n".join(rows)
    )
    write_section(args.section, md)
    print(md)


if __name__ == "__main__":
    main()
