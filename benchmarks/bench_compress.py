"""Does physically smaller mean proportionally faster? Speedup against MAC ratio per knob.

deit_small_patch16_224 shapes (random weights: latency does not depend on their values),
threads fixed, batch 1 and batch 16; every candidate timed interleaved with the full
model, medians of per-round ratios. Target: speedup >= 0.85 x MAC ratio at batch 16 for
token, head and MLP pruning. Writes its table into benchmarks/RESULTS.md.

    python benchmarks/bench_compress.py [--device cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _results import write_section  # noqa: E402

from vitpareto.evaluators import device_fingerprint, resolve_device  # noqa: E402
from vitpareto.search.outputs import measure, showcase  # noqa: E402
from vitpareto.spaces import create_model  # noqa: E402

TARGETED = ("tokens", "heads", "mlp")  # the knobs the 0.85 target applies to


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument(
        "--results", type=Path, default=None, help="file to write (default: RESULTS.md)"
    )
    args = ap.parse_args()

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    model = create_model(args.model).eval()
    cands = showcase(model)
    results = {}
    for b in args.batches:
        print(f"batch {b} ...", file=sys.stderr, flush=True)
        results[b] = {r.name: r for r in measure(model, b, args.repeats, str(device), cands)}

    fp = device_fingerprint(device)
    big = max(args.batches)
    lines = [
        f"## Compression speedup against MAC ratio: {args.model} on {device.type}",
        "",
        f"`benchmarks/bench_compress.py`, {datetime.date.today()}; {fp.get('gpu', fp['cpu'])}, "
        f"{fp['cores']} cores, {args.threads} threads; torch {fp['torch']}, timm {fp['timm']}; "
        f"{args.repeats} interleaved rounds per batch size, medians of per-round ratios.",
        "",
        "| candidate | params (M) | GMACs | MAC ratio | "
        + " | ".join(f"b{b} ms | b{b} speedup" for b in args.batches)
        + f" | speedup / MAC ratio (b{big}) |",
        "|---|---:|---:|---:|" + "---:|---:|" * len(args.batches) + "---:|",
    ]
    verdicts = []
    for name in results[args.batches[0]]:
        r0 = results[args.batches[0]][name]
        cells = [name, f"{r0.params / 1e6:.2f}", f"{r0.macs / 1e9:.3f}", f"{r0.mac_ratio:.2f}x"]
        for b in args.batches:
            r = results[b][name]
            cells += [f"{r.median_ms:.2f} ± {r.iqr_ms / 2:.2f}", f"{r.speedup:.2f}x"]
        eff = results[big][name].speedup / results[big][name].mac_ratio
        cells.append(f"{eff:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
        if name.split(":")[0] in TARGETED:
            verdicts.append(f"{name}: {eff:.2f} {'meets' if eff >= 0.85 else 'MISSES'} 0.85")
    lines += [
        "",
        f"Target (b{big}, token/head/MLP pruning, speedup >= 0.85 x MAC ratio): "
        + "; ".join(verdicts)
        + ".",
    ]
    lines += [
        "",
        "The exit row times a sample that leaves at that exit (the blocks before it and the "
        "exit head); ± is half the interquartile range.",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        kw = {"path": args.results} if args.results else {}
        write_section(f"bench_compress:{device.type}", table, **kw)


if __name__ == "__main__":
    main()
