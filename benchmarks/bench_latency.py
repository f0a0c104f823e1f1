"""Can the latency figures be trusted? Repeatability, predictor error and runtimes.

On deit_small_patch16_224 shapes (random weights) and the model's default search space:
(a) repeatability: Spearman rank correlation of 30 candidates' latencies measured twice
    (target >= 0.95) and their median relative difference;
(b) predictor: mean absolute percentage error against measured latency on 30 held-out
    candidates at batch 1 and 16 (target <= 5%);
(c) ONNX Runtime and torch.compile against eager for a few compressed models.
Writes its tables into benchmarks/RESULTS.md.

    python benchmarks/bench_latency.py [--device cuda] [--threads 2] [--parts a b c]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _results import write_section  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from vitpareto.evaluators import (  # noqa: E402
    LatencyPredictor,
    device_fingerprint,
    measure_candidates,
    prepare,
    resolve_device,
    sample_candidates,
    time_interleaved,
)
from vitpareto.search.outputs import showcase  # noqa: E402
from vitpareto.spaces import ElasticViT, JointSpace, create_model  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def repeatability(elastic, space, dev, batch: int, n: int, repeats: int) -> list[str]:
    cands = sample_candidates(space, n, seed=11)
    first = measure_candidates(elastic, cands, batch, str(dev), repeats)
    second = measure_candidates(elastic, cands, batch, str(dev), repeats)
    rho = spearmanr(first, second).statistic
    rel = statistics.median(abs(a - b) / ((a + b) / 2) for a, b in zip(first, second, strict=True))
    return [
        f"### (a) Repeatability, batch {batch}",
        "",
        f"{len(cands)} candidates of the default space, each measured twice ({repeats} "
        "interleaved rounds with the full model each time), minutes apart.",
        "",
        "| Spearman rho | median relative difference | latency range (ms) | target |",
        "|---:|---:|---:|---|",
        f"| {rho:.3f} | {rel:.1%} | {min(first):.1f} to {max(first):.1f} | "
        f"rho >= 0.95: {'met' if rho >= 0.95 else 'MISSED'} |",
    ]


def predictor(elastic, space, dev, batches, n: int, repeats: int) -> list[str]:
    rows = [
        "### (b) Latency predictor",
        "",
        f"Table built from block parts on a token grid, corrected by one factor fitted on 10 "
        f"whole candidates, error stated on 10 more measured in two sessions of their own; then "
        f"checked on {n} held-out candidates measured afterwards (all later measurements "
        "drift-corrected by the full model measured beside them).",
        "",
        "| batch | build s | stated p90 error | stated MAPE | held-out MAPE | held-out p90 | "
        "held-out within stated | target MAPE <= 5% |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    import time

    for b in batches:
        log(f"(b) predictor at batch {b}")
        t0 = time.perf_counter()
        pred = LatencyPredictor.build(
            elastic, space, str(dev), b, repeats=repeats, calibrate=10, validate=10, seed=0
        )
        build_s = time.perf_counter() - t0
        used = set(sample_candidates(space, 400, 0))
        held = [c for c in sample_candidates(space, 400, seed=99) if c not in used][:n]
        measured = measure_candidates(
            elastic, held, b, str(dev), repeats, reference_ms=pred.table["reference_ms"]
        )
        errs = sorted(abs(pred.predict(c) - t) / t for c, t in zip(held, measured, strict=True))
        mape = statistics.mean(errs)
        p90 = errs[int(0.9 * (len(errs) - 1))]
        within = sum(e <= pred.error for e in errs) / len(errs)
        rows.append(
            f"| {b} | {build_s:.0f} | {pred.error:.1%} | {pred.mape:.1%} | {mape:.1%} | {p90:.1%} "
            f"| {within:.0%} | {'met' if mape <= 0.05 else 'MISSED'} |"
        )
    return rows


def runtimes(elastic, dev, batches, repeats: int) -> list[str]:
    names = ["full", "tokens: EViT keep 0.7 x3", "mlp: half", "joint: heads 3/4, mlp 3/4, keep 0.7"]
    cands = showcase(elastic.spec)
    rows = [
        "### (c) Runtimes against eager",
        "",
        "Each compressed model under each runtime, interleaved; speedup = eager / runtime "
        "(median of per-round ratios).",
        "",
        "| candidate | batch | eager ms | compile ms | compile speedup | onnxruntime ms | "
        "onnxruntime speedup |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for b in batches:
        x = torch.randn(b, 3, *elastic.spec.img_size, device=dev)
        for name in names:
            log(f"(c) {name} at batch {b}")
            model = elastic.extract(cands[name]).eval().to(dev)
            fns = {"eager": model, "compile": prepare(model, x, "compile")}
            try:
                fns["onnxruntime"] = prepare(model, x, "onnxruntime")
            except Exception as e:  # report a runtime that cannot take the model, go on
                log(f"onnxruntime unavailable: {e}")
            t = time_interleaved(fns, x, repeats=repeats, warmup=3)
            med = {k: statistics.median(v) for k, v in t.items()}
            sp = {
                k: statistics.median(e / r for e, r in zip(t["eager"], t[k], strict=True))
                for k in t
            }
            ort = (
                f"{med['onnxruntime']:.2f} | {sp['onnxruntime']:.2f}x"
                if "onnxruntime" in med
                else "n/a | n/a"
            )
            rows.append(
                f"| {name} | {b} | {med['eager']:.2f} | {med['compile']:.2f} | "
                f"{sp['compile']:.2f}x | {ort} |"
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    ap.add_argument("--n", type=int, default=30, help="candidates in (a) and held out in (b)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeat-batches", type=int, nargs="+", default=[1], help="batches for (a)")
    ap.add_argument("--results", type=Path, default=None)
    args = ap.parse_args()

    dev = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    model = create_model(args.model).eval().to(dev)
    elastic = ElasticViT(model).eval()
    space = JointSpace.default(elastic)
    fp = device_fingerprint(dev)
    lines = [
        f"## Latency: repeatability, predictor and runtimes: {args.model} on {dev.type}",
        "",
        f"`benchmarks/bench_latency.py`, {datetime.date.today()}; {fp.get('gpu', fp['cpu'])}, "
        f"{fp['cores']} cores, {args.threads} threads; torch {fp['torch']}, timm {fp['timm']}; "
        f"default space of the model ({space.size():,} parameter combinations).",
        "",
    ]
    if "a" in args.parts:
        for b in args.repeat_batches:
            log(f"(a) repeatability at batch {b}")
            lines += repeatability(elastic, space, dev, b, args.n, args.repeats) + [""]
    if "b" in args.parts:
        lines += predictor(elastic, space, dev, args.batches, args.n, args.repeats) + [""]
    if "c" in args.parts:
        lines += runtimes(elastic, dev, args.batches, args.repeats) + [""]
    table = "\n".join(lines)
    print(table)
    kw = {"path": args.results} if args.results else {}
    write_section(f"bench_latency:{dev.type}", table, **kw)


if __name__ == "__main__":
    main()
