"""Is the front's latency the deployed model's? Searched speedup against the exported files'.

Part (front), on a trained supernet (Fashion-MNIST by default): a search of --trials
trials under each runtime, its Pareto front exported (`export_trials`, which times every
exported model again on this machine, as it ships, interleaved with the full model), and
the searched speedup of each front model set against its deployed speedup. Target: within
5% in the median, 10% at worst.

Part (rank), on the same supernet and on deit_small shapes (random weights: latency does not
depend on them): the same --rank-candidates candidates timed under eager and under ONNX
Runtime; Spearman's rho between the two rankings says how much a search under the wrong
runtime misranks. On deit_small shapes each candidate's searched-style figure is also set
against a second, independent deployed-style measurement.

    python benchmarks/bench_deployed.py [--supernet PATH] [--trials 100] [--skip-deit]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path

import optuna
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _results import write_section  # noqa: E402

from vitpareto.evaluators import LatencyEvaluator, device_fingerprint, sample_candidates  # noqa: E402
from vitpareto.search import SearchConfig, export_trials, load_supernet, search  # noqa: E402
from vitpareto.search.outputs import measure_deployed  # noqa: E402
from vitpareto.spaces import Candidate, ElasticViT, JointSpace, create_model  # noqa: E402

RUNTIMES = ("eager", "onnxruntime")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def front_part(net, trials: int, work: Path, threads: int) -> list[str]:
    """One search per runtime, its front exported and timed again."""
    rows = []
    for runtime in RUNTIMES:
        url = f"sqlite:///{work / f'{runtime}.db'}"
        config = SearchConfig(runtime=runtime, threads=threads, max_batches=8, latency_repeats=20)
        log(f"front: searching {trials} trials under {runtime} ...")
        study = search(net, url, runtime, trials, config, progress=False)
        front = study.best_trials
        log(f"front: exporting and timing {len(front)} models under {runtime} ...")
        dirs = export_trials(study, front, work / runtime, supernet=net, progress=False)
        errors = []
        for t, d in zip(front, dirs, strict=True):
            m = json.loads((d / "metrics.json").read_text())
            err = m["deployed_speedup"] / t.user_attrs["speedup"] - 1
            errors.append(abs(err))
            rows.append(
                f"| {runtime} | {t.number} | {t.user_attrs['latency_method']} | "
                f"{t.user_attrs['speedup']:.3f}x | {m['deployed_speedup']:.3f}x | {err:+.1%} |"
            )
        med, worst = statistics.median(errors), max(errors)
        verdict = "meets" if med <= 0.05 and worst <= 0.10 else "MISSES"
        rows.append(
            f"| {runtime} | **{len(front)} models** | | | | median {med:.1%}, "
            f"worst {worst:.1%} ({verdict} 5% / 10%) |"
        )
    return [
        "| runtime | trial | latency | searched speedup | deployed speedup | difference |",
        "|---|---:|---|---:|---:|---:|",
        *rows,
    ]


def rank_part(elastic, space, n: int, threads: int, repeats: int, second: bool) -> list[str]:
    """The same candidates timed under each runtime: Spearman's rho of the two rankings;
    with ``second``, each figure set against an independent deployed-style measurement."""
    cands = sample_candidates(space, n, seed=7)
    lat: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    again: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    reference = elastic.extract(Candidate.full(elastic.spec)).eval()
    for runtime in RUNTIMES:
        ev = LatencyEvaluator(threads=threads, runtime=runtime, repeats=repeats)
        for i, c in enumerate(cands):
            log(f"rank: {runtime} candidate {i + 1}/{n}")
            got = ev(elastic, c)
            lat[runtime].append(got["speedup"])
            if second:
                torch.set_num_threads(threads)
                model = elastic.extract(c).eval()
                m = measure_deployed(model, reference, runtime, 1, repeats=repeats)
                again[runtime].append(m["deployed_speedup"] / got["speedup"] - 1)
    frame = pd.DataFrame(lat)
    rho = frame["eager"].corr(frame["onnxruntime"], method="spearman")
    lines = [f"Spearman's rho, eager against onnxruntime speedups of {n} candidates: {rho:.3f}."]
    if second:
        for runtime in RUNTIMES:
            errs = [abs(e) for e in again[runtime]]
            lines.append(
                f"{runtime}: a second, deployed-style measurement differs from the searched one "
                f"by {statistics.median(errs):.1%} in the median, {max(errs):.1%} at worst."
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supernet", default="results/fmnist_bench/supernet.pt")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--rank-candidates", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--deit-repeats", type=int, default=10)
    ap.add_argument("--skip-deit", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    net = load_supernet(args.supernet)
    fp = device_fingerprint(torch.device("cpu"))
    lines = [
        "## Deployed latency: the searched speedup against the exported files'",
        "",
        f"`benchmarks/bench_deployed.py`, {datetime.date.today()}; {fp['cpu']}, {fp['cores']} "
        f"cores, {args.threads} threads; torch {fp['torch']}, timm {fp['timm']}; supernet "
        f"`{args.supernet}` ({net.model_name}); batch 1; searches of {args.trials} trials "
        "(NSGA-II, measured latency, 20 interleaved rounds), fronts exported and timed again "
        "by `export_trials`.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        lines += front_part(net, args.trials, Path(tmp), args.threads)
    space = JointSpace.default(net.elastic)
    lines += ["", "Ranking on the supernet: "]
    lines[-1] += " ".join(
        rank_part(net.elastic.eval(), space, args.rank_candidates, args.threads, 20, False)
    )
    if not args.skip_deit:
        elastic = ElasticViT(create_model("deit_small_patch16_224")).eval()
        space = JointSpace.default(elastic)
        got = rank_part(elastic, space, args.rank_candidates, args.threads, args.deit_repeats, True)
        lines += ["", "On deit_small shapes: " + " ".join(got)]
    lines += [
        "",
        "Run on the CPU: the GPU runtimes are measured by `bench_compress.py --device cuda "
        "--runtime cudagraphs` (its section above).",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("bench_deployed", table)


if __name__ == "__main__":
    main()
