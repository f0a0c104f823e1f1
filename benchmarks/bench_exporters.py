"""Which ONNX exporter ships the faster graph? PyTorch's maintained exporter
(``dynamo=True``, what ``vitpareto export`` writes, at ``--opset``, default 20) against the
legacy TorchScript tracer (opset 17), side by side under ONNX Runtime.

For each showcase candidate of a model (random weights: latency does not depend on their
values), both graphs are written from the same compressed module (an exit candidate as its
exit policy), checked to agree, counted (nodes) and timed interleaved at batch 1 and 16:
the ratio is the tracer's milliseconds over the dynamo graph's, median of per-round
ratios (above 1: the dynamo graph is faster). Writes into RESULTS.md, one section per
model and opset.

    python benchmarks/bench_exporters.py [--model deit_small_patch16_224] [--opset 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _results import stamp, write_section  # noqa: E402

from vitpareto.evaluators import (  # noqa: E402
    OPSET,
    deployed,
    export_onnx,
    ort_session,
    time_interleaved,
)
from vitpareto.search.outputs import showcase  # noqa: E402
from vitpareto.spaces import compress, create_model, describe  # noqa: E402

EXPORTERS = ("dynamo", "torchscript")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--opset", type=int, default=OPSET, help="the dynamo graph's opset")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = create_model(args.model, num_classes=args.num_classes).eval()
    s = describe(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, c in showcase(model).items():
            print(name, "...", file=sys.stderr, flush=True)
            shipped = deployed(compress(model, c)).eval()
            example = torch.randn(2, *s.image_shape)
            sessions, nodes = {}, {}
            for e in EXPORTERS:
                path = Path(tmp) / f"{e}.onnx"
                opset = {"opset": args.opset} if e == "dynamo" else {}
                export_onnx(shipped, example, path, exporter=e, **opset)
                sessions[e] = ort_session(path)
                nodes[e] = len(onnx.load(str(path)).graph.node)
            row = {"name": name, "nodes": nodes}
            for b in args.batches:
                xt = torch.randn(b, *s.image_shape)
                x = xt.numpy()
                outs = [sessions[e].run(None, {"images": x})[0] for e in EXPORTERS]
                row[f"diff{b}"] = float(np.abs(outs[0] - outs[1]).max())
                calls = {
                    e: (lambda _t, run=sessions[e].run, x=x: run(None, {"images": x}))
                    for e in EXPORTERS
                }
                t = time_interleaved(calls, xt, repeats=args.repeats)
                ratios = [u / v for u, v in zip(t["torchscript"], t["dynamo"], strict=True)]
                row[f"b{b}"] = (statistics.median(t["dynamo"]), statistics.median(ratios))
            rows.append(row)

    lines = [
        f"## ONNX exporters: dynamo (opset {args.opset}) against the TorchScript tracer "
        f"(opset 17): {args.model}, onnxruntime on cpu",
        "",
        f"`benchmarks/bench_exporters.py`, {stamp()}, {args.threads} threads; "
        f"{args.repeats} interleaved rounds per batch size, medians of per-round ratios "
        "(tracer ms / dynamo ms: above 1, the dynamo graph is faster).",
        "",
        "| candidate | nodes (dynamo / tracer) | "
        + " | ".join(f"b{b} dynamo ms | b{b} ratio" for b in args.batches)
        + " | max abs diff |",
        "|---|---:|" + "---:|---:|" * len(args.batches) + "---:|",
    ]
    for r in rows:
        cells = [r["name"], f"{r['nodes']['dynamo']} / {r['nodes']['torchscript']}"]
        for b in args.batches:
            ms, ratio = r[f"b{b}"]
            cells += [f"{ms:.2f}", f"{ratio:.3f}"]
        cells.append(f"{max(r[f'diff{b}'] for b in args.batches):.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    for b in args.batches:
        med = statistics.median(r[f"b{b}"][1] for r in rows)
        lines.append(f"\nMedian ratio over the candidates at batch {b}: {med:.3f}.")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section(f"bench_exporters:{args.model}:opset{args.opset}", table)


if __name__ == "__main__":
    main()
