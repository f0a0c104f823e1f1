"""Importance criteria on a normally trained ViT: accuracy of one-shot cuts, before and after
a short fine-tune.

A user who brings a trained model and cuts it (no supernet) keeps the heads and channels
the criterion ranks first. This trains the Fashion-MNIST benchmark model normally
(``train --plain``; cached), cuts it uniformly at 2x and 3x fewer MACs with every
criterion's ranking (the same shapes for all), scores each cut on the validation set
before fine-tuning and after the same fine-tune (distilled from the trained model), and
writes the table into RESULTS.md.

    python benchmarks/bench_importance.py [--epochs 4] [--steps 300]
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch
import yaml

from vitpareto.evaluators import analytic_macs, count_params
from vitpareto.search.supernet import (
    FinetuneConfig,
    train_compressed,
)
from vitpareto.spaces import compress, importance_scores

sys.path.insert(0, str(Path(__file__).parent))
from _h2h import accuracy as _accuracy  # noqa: E402
from _h2h import calibrated  # noqa: E402
from _h2h import uniform_cut as _cut  # noqa: E402
from _peer import available, torch_pruning_cut  # noqa: E402
from _results import stamp, write_section  # noqa: E402

MODEL = yaml.safe_load((Path(__file__).parent / "fmnist" / "model.yaml").read_text())
CRITERIA = ("identity", "magnitude", "taylor", "similarity", "attention")


def _tp_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch-pruning")
    except Exception:
        return "(not installed)"


def run(args) -> str:
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message="Unwrapped parameters")
    net, data, calib = calibrated(
        MODEL, Path(args.model_path), args.epochs, args.calibration_batches
    )
    vit = net.elastic.vit.eval()  # trained --plain: its own order (identity ranking)
    spec = net.elastic.spec
    full_acc = _accuracy(vit, data.val)
    tune_data = net.load_data(batch_size=args.batch_size)  # the fine-tuning batches
    config = FinetuneConfig(steps=args.steps, batch_size=args.batch_size, lr=5e-4, distill=0.7)
    rows = []
    for ratio, heads in ((2.0, spec.num_heads - 1), (3.0, max(1, spec.num_heads - 2))):
        cut = _cut(spec, ratio, heads)
        shape = (
            f"{cut.heads[0]} of {spec.num_heads} heads, MLP {cut.mlp[0]} of {spec.mlp_hidden[0]}"
        )
        real = analytic_macs(spec) / analytic_macs(spec, cut)
        peers = ("torch-pruning magnitude", "torch-pruning taylor") if available() else ()
        for name in (*CRITERIA, *peers):
            if name in peers:
                small = torch_pruning_cut(
                    vit, cut.heads[0], cut.mlp[0], name.split()[-1], calib, calib[0][0][:1]
                )
            else:
                small = compress(vit, cut, importance_scores(copy.deepcopy(vit), name, calib))
            before = _accuracy(small, data.val)
            train_compressed(small, tune_data, config, teacher=vit, progress=False)
            after = _accuracy(small, data.val)
            print(f"{real:.2f}x {name}: {before:.4f} -> {after:.4f}", flush=True)
            rows.append((f"{real:.2f}x ({shape})", name, before, after, count_params(small)))
    table = [
        "| MACs cut | criterion | accuracy, no fine-tune | after fine-tune | params |",
        "|---|---|---|---|---|",
    ]
    for cut, name, before, after, params in rows:
        table.append(f"| {cut} | {name} | {before:.4f} | {after:.4f} | {params:,} |")
    return "\n".join(
        [
            "### bench_importance: ranking a normally trained model",
            "",
            f"{stamp()}. The Fashion-MNIST benchmark model "
            f"(`benchmarks/fmnist/model.yaml`: embed {spec.embed_dim}, depth {spec.depth}, "
            f"{spec.num_heads} heads, MLP {spec.mlp_hidden[0]}, 28 px, patch {spec.patch_size}) "
            f"trained normally (`train --plain`, {net.meta['config']['epochs']} epochs, batch 256, "
            f"lr 0.002): accuracy {full_acc:.4f}. Each criterion ranks it on "
            f"{args.calibration_batches} training batches of 256 (identity keeps the trained "
            "order: a ranking that knows nothing); torch-pruning rows: Torch-Pruning "
            f"{_tp_version()} with its timm ViT example's settings (whole heads, MLP hidden "
            "channels, embedding kept; group L2 magnitude or group Taylor on the same batches) "
            "cut to the same shape. The same uniform cut for all; fine-tune, the same for all: "
            f"{config.steps} steps of batch {config.batch_size}, lr {config.lr}, distilled from the trained "
            f"model ({config.distill} KD + {1 - config.distill:.1f} labels). Accuracy on the "
            "official test set, which is also the validation set (the same for every row).",
            "",
            *table,
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4, help="normal training of the model")
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps per cut")
    p.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch")
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--model-path", default="results/fmnist_plain/plain.pt")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args()
    table = run(args)
    print(table)
    if not args.no_write:
        write_section("bench_importance", table)


if __name__ == "__main__":
    main()
