"""Does physically smaller mean proportionally faster? Speedup against MAC ratio per knob.

deit_small_patch16_224 shapes by default, any timm ViT with --model (random weights:
latency does not depend on their values), threads fixed, batch 1 and batch 16; every
candidate timed interleaved with the full model, medians of per-round ratios, under a
runtime (eager, onnxruntime, ...: each model in the form export writes for it).
Targets: speedup >= 0.85 x MAC ratio at the largest batch for token, head and MLP
pruning; >= 0.95 x MAC ratio at batch 1 for every knob. At batch 1 the table is followed
by the ceiling a timm block itself sets: one block timed on fewer tokens against its MAC
ratio, with no token selection at all. Writes into RESULTS.md, one section per model,
device and runtime.

    python benchmarks/bench_compress.py [--model NAME [--num-classes N]] [--device cuda]
        [--threads 2] [--runtime onnxruntime]
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

from vitpareto.evaluators import (  # noqa: E402
    RUNTIMES,
    device_fingerprint,
    resolve_device,
    time_interleaved,
)
from vitpareto.search.outputs import measure, showcase  # noqa: E402
from vitpareto.spaces import create_model  # noqa: E402

DEFAULT_MODEL = "deit_small_patch16_224"
TARGETED = ("tokens", "heads", "mlp")  # the knobs the 0.85 target applies to


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument(
        "--num-classes", type=int, default=1000, help="classifier width (backbones have none)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--runtime", default="eager", choices=RUNTIMES)
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument(
        "--results", type=Path, default=None, help="file to write (default: RESULTS.md)"
    )
    return ap


def main() -> None:
    args = _parser().parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    model = create_model(args.model, num_classes=args.num_classes).eval()
    cands = showcase(model)
    results = {}
    for b in args.batches:
        print(f"batch {b} ...", file=sys.stderr, flush=True)
        results[b] = {
            r.name: r
            for r in measure(model, b, args.repeats, str(device), cands, runtime=args.runtime)
        }

    fp = device_fingerprint(device)
    big = max(args.batches)
    lines = [
        f"## Compression speedup against MAC ratio: {args.model} on {device.type}, {args.runtime}",
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
    if 1 in args.batches:
        small = [
            f"{n}: {results[1][n].speedup / results[1][n].mac_ratio:.2f}"
            for n in results[1]
            if not n.startswith(("original", "full"))
        ]
        lines += ["", "Batch 1, speedup / MAC ratio (target >= 0.95): " + "; ".join(small) + "."]
        lines += ["", block_ceiling(model, args.repeats, device)]
    lines += [
        "",
        "The exit row times a sample that leaves at that exit (the blocks before it and the "
        "exit head); ± is half the interquartile range.",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        kw = {"path": args.results} if args.results else {}
        key = f"bench_compress:{device.type}"
        if args.model != DEFAULT_MODEL:  # each model's tables side by side, not over each other
            key = f"{key}:{args.model}"
        write_section(key if args.runtime == "eager" else f"{key}:{args.runtime}", table, **kw)


def block_mac(n: int, dim: int, hidden: int) -> int:
    """MACs of one ViT block on n tokens: q, k, v, the two attention products, the
    projection and the MLP."""
    return n * dim * 3 * dim + 2 * n * n * dim + n * dim * dim + 2 * n * dim * hidden


@torch.inference_mode()
def block_ceiling(model, repeats: int, device) -> str:
    """What fewer tokens can buy at batch 1, selection aside: the model's first block (eager)
    timed on the token counts that keep 0.7 and 0.5 leave, interleaved with all tokens."""
    blk = model.blocks[0].to(device)
    dim = model.embed_dim
    hidden = blk.mlp.fc1.out_features
    full = model.patch_embed.num_patches + model.num_prefix_tokens
    counts = [full, round(0.7 * (full - 1)) + 1, round(0.5 * (full - 1)) + 1]
    xs = {n: torch.randn(1, n, dim, device=device) for n in counts}
    times = time_interleaved(
        {n: (lambda _x, n=n: blk(xs[n])) for n in counts}, xs[full], repeats=2 * repeats
    )
    ref = statistics.median(times[full])
    cells = []
    for n in counts[1:]:
        ratio = statistics.median(a / b for a, b in zip(times[full], times[n], strict=True))
        eff = ratio / (block_mac(full, dim, hidden) / block_mac(n, dim, hidden))
        cells.append(
            f"{n} tokens {ratio:.2f}x for {block_mac(full, dim, hidden) / block_mac(n, dim, hidden):.2f}x fewer MACs ({eff:.2f})"
        )
    return (
        f"Ceiling at batch 1 (one timm block, eager, no selection; {full} tokens "
        f"{ref:.2f} ms): " + "; ".join(cells) + ". Below 1.00, the block's time does not "
        "fall with its tokens: its weights are read whole whatever the token count."
    )


if __name__ == "__main__":
    main()
