"""Precision against the cheap alternative, on deit_small shapes under a runtime.

A user's first try is ONNX Runtime's int8 quantization of the full model, with no
training. This times, in one interleaved loop per batch size, what each lever buys at
batch 1 and 16 on deit_small_patch16_224 (random weights: latency does not depend on
weight values): the full model in float32, int8-dynamic and int8-static; a 2x uniform cut
(half the MLP, four of six heads) and a depth cut (the last four blocks removed), each in
float32 and int8-dynamic; and the paths of a model with exits after blocks 5 and 8 (what
a sample leaving there runs), in float32 and int8-dynamic. Every model is the file export
writes (the same ONNX graph, quantized by ``onnxruntime.quantization``), in the same
session options. Latency only: accuracy needs a trained model (bench_headtohead).

``--runtime eager`` (or ``compile``) times the half precisions instead: every model in
float32 and in bf16 (and fp16 on CUDA), where the device computes them natively.

    python benchmarks/bench_precision.py [--runtime onnxruntime] [--repeats 30] [--batches 1,16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import torch

from vitpareto.evaluators import ExitPath, analytic_macs, native_half, prepare, time_interleaved
from vitpareto.spaces import HALF, Candidate, ElasticViT, create_model, describe

sys.path.insert(0, str(Path(__file__).parent))
from _results import stamp, write_section  # noqa: E402

MODEL = "deit_small_patch16_224"
HOW = {  # how each runtime's models are made, for the table's header
    "onnxruntime": "Every model exported as `vitpareto export` writes it (dynamo exporter, "
    "opset 20), int8 by `onnxruntime.quantization` (dynamic: QInt8 weights; static: QDQ, "
    "per-channel QInt8 weights, QUInt8 activations). ",
    "eager": "Every model as `vitpareto.load` runs it in PyTorch; bf16: its weights and "
    "activations in bfloat16, which this CPU computes natively (AVX512-BF16). ",
}
NAMES = {"onnxruntime": "ONNX Runtime"}  # section titles (the README links them)
HOW["compile"] = HOW["eager"].replace("runs it in PyTorch", "runs it, under torch.compile")


def precisions(runtime: str, device: str) -> tuple[str, ...]:
    """The precisions timed under ``runtime``: float32 first, then what it runs natively."""
    if runtime == "onnxruntime":
        return ("fp32", "int8-dynamic", "int8-static")
    return ("fp32", *(p for p in HALF if native_half(p, device) is None))


def models(elastic, kinds: tuple[str, ...]) -> dict[str, tuple]:
    """Label -> (module to time, candidate): every lever, in each precision of ``kinds``."""
    spec = elastic.spec
    full = Candidate.full(spec)
    cut = Candidate.make(spec, heads=4, mlp=spec.mlp_hidden[0] // 2)
    shallow = Candidate.make(
        spec, heads={b: 0 for b in range(8, 12)}, mlp={b: 0 for b in range(8, 12)}
    )
    exits = full.replace(exits=(5, 8), exit_threshold=0.9)
    out = {}
    for label, cand in (
        ("full", full),
        ("2x uniform cut", cut),
        ("depth cut (8 of 12 blocks)", shallow),
    ):
        for precision in kinds:
            if label != "full" and precision == "int8-static":
                continue
            c = cand.replace(precision=precision)
            out[f"{label}, {precision}"] = (elastic.extract(c).eval(), c)
    for precision in (p for p in kinds if p != "int8-static"):
        m = elastic.extract(exits.replace(precision=precision)).eval()
        for j, where in enumerate(("after block 5", "after block 8")):
            out[f"exit path {where}, {precision}"] = (ExitPath(m, j), None)
    return out


def run(args) -> str:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    vit = create_model(MODEL)
    elastic = ElasticViT(vit, importance="identity", exit_blocks=(5, 8)).eval()
    spec = describe(vit)
    built = models(elastic, precisions(args.runtime, "cpu"))
    rows: dict[str, dict[int, float]] = {k: {} for k in built}
    seconds = {}
    for batch in args.batches:
        x = torch.randn(batch, 3, *spec.img_size)
        fns = {}
        for label, (module, _) in built.items():
            start = time.perf_counter()
            fns[label] = prepare(module, x, args.runtime)
            seconds.setdefault(label, time.perf_counter() - start)
            print(f"built {label} (batch {batch})", flush=True)
        times = time_interleaved(fns, x, repeats=args.repeats, warmup=3)
        for label, t in times.items():
            rows[label][batch] = statistics.median(t)
        print(f"timed batch {batch}", flush=True)
    full = rows["full, fp32"]
    head = "| model | MACs cut |" + "".join(f" b{b} ms | b{b} speedup |" for b in args.batches)
    lines = [head, "|---|---:|" + "---:|---:|" * len(args.batches)]
    for label, (_, cand) in built.items():
        ratio = f"{analytic_macs(spec) / analytic_macs(spec, cand):.2f}x" if cand else "-"
        cells = "".join(
            f" {rows[label][b]:.2f} | {full[b] / rows[label][b]:.2f}x |" for b in args.batches
        )
        lines.append(f"| {label} | {ratio} |{cells}")
    return "\n".join(
        [
            f"## Precision against the cheap alternative: deit_small_patch16_224, {NAMES.get(args.runtime, args.runtime)} on cpu (bench_precision.py)",
            "",
            f"{stamp()}, onnxruntime {version('onnxruntime')}. Random weights (latency only). "
            + HOW[args.runtime]
            + f"Medians of {args.repeats} interleaved rounds, every model in one loop per "
            "batch size; "
            "speedup against the full model in float32. Exit paths: what a sample leaving "
            "there runs (the blocks before the exit and the exit heads up to it).",
            "",
            *lines,
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    p.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "eager", "compile"))
    args = p.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    text = run(args)
    print(text)
    suffix = "" if args.runtime == "onnxruntime" else f"_{args.runtime}"
    write_section(f"bench_precision{suffix}", text)


if __name__ == "__main__":
    main()
