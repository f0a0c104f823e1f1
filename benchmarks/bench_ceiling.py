"""What equal data allows: the head-to-head's uncut model fine-tuned as its cuts are.

bench_headtohead asks vitpareto's best to lead Torch-Pruning's best by a point at 2x and
3x fewer MACs, on a model trained normally for a few epochs, once both sides have seen
as many images. This benchmark measures the ceiling of that comparison: the same trained
model, uncut, given the same long fine-tune (the same steps, batch, learning rate and
distillation from the trained model) as the peer's Taylor cuts, each run with several
seeds of the fine-tune. A compressed model trained on the same images and teacher is not
expected to beat its own uncut model; where the uncut model ends below the peer's best
plus the target's margin, a cut would have to beat its own uncut model to meet it.

    pip install -e '.[bench]'
    python benchmarks/bench_ceiling.py [--seeds 0 1] [--work results/h2h]
    python benchmarks/bench_ceiling.py --epochs 12 --work results/h2h-12e

Each training recipe (``--epochs``) has a section of its own in RESULTS.md: whether more
training of the model moves the ceiling is the question the sections answer together.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import torch

from vitpareto.evaluators import analytic_macs, count_macs
from vitpareto.search.supernet import FinetuneConfig, train_compressed
from vitpareto.spaces import Candidate, compress

sys.path.insert(0, str(Path(__file__).parent))
import _h2h as h  # noqa: E402
from _peer import torch_pruning_cut  # noqa: E402
from _results import stamp, write_section  # noqa: E402
from bench_headtohead import MODEL, _long_steps  # noqa: E402

MARGIN = 0.01  # the head-to-head's target: a point above the peer's best


def run(args) -> str:
    warnings.filterwarnings("ignore")  # Torch-Pruning's notes on timm's modules
    work = Path(args.work)
    net, data, calib = h.calibrated(MODEL, work / "plain.pt", args.epochs, args.calibration_batches)
    vit, spec = net.elastic.vit.eval(), net.elastic.spec
    models = {"1x": ("the uncut model", compress(vit, Candidate.full(spec)))}
    for ratio, heads in ((2.0, spec.num_heads - 1), (3.0, max(1, spec.num_heads - 2))):
        cut = h.uniform_cut(spec, ratio, heads)
        tp = torch_pruning_cut(vit, cut.heads[0], cut.mlp[0], "taylor", calib, calib[0][0][:1])
        models[f"{ratio:g}x"] = ("torch-pruning taylor, uniform", tp)
    tune = net.load_data(batch_size=args.batch_size)
    steps = _long_steps(data, args)  # the short fine-tune plus the supernet's images
    ft = FinetuneConfig(steps=steps, batch_size=args.batch_size, lr=5e-4, distill=0.7)
    before = {key: h.accuracy(model, data.test) for key, (_, model) in models.items()}
    acc: dict[str, list[float]] = {}
    for key, (name, model) in models.items():
        for seed in args.seeds:
            m = copy.deepcopy(model)
            train_compressed(m, tune, dataclasses.replace(ft, seed=seed), teacher=vit,
                             progress=False)  # fmt: skip
            acc.setdefault(key, []).append(h.accuracy(m, data.test))
            print(f"{key} {name} seed {seed}: test {acc[key][-1]:.4f}", flush=True)
    rows = ["| MACs cut | model | test acc. before | after the long fine-tune, per seed | median |",
            "|---|---|---:|---|---:|"]  # fmt: skip
    for key, (name, model) in models.items():
        cand = getattr(model, "candidate", None)
        macs = analytic_macs(spec, cand) if cand is not None else count_macs(model, spec.img_size)
        seeds = ", ".join(f"{a:.4f}" for a in acc[key])
        rows.append(f"| {analytic_macs(spec) / macs:.2f}x | {name} | {before[key]:.4f} "
                    f"| {seeds} | {statistics.median(acc[key]):.4f} |")  # fmt: skip
    ceiling = statistics.median(acc["1x"])
    verdict = ["", "| target | peer's median | + 1 point | the uncut model's median | room |",
               "|---|---:|---:|---:|---:|"]  # fmt: skip
    for key in ("2x", "3x"):
        peer = statistics.median(acc[key])
        verdict.append(f"| {key} | {peer:.4f} | {peer + MARGIN:.4f} | {ceiling:.4f} "
                       f"| {100 * (ceiling - peer - MARGIN):+.2f} pt |")  # fmt: skip
    return "\n".join([
        f"### bench_ceiling: the ceiling of the head-to-head at equal data, the model "
        f"trained {args.epochs} epochs",
        "",
        f"{stamp()}, torch-pruning {version('torch-pruning')}. The Fashion-MNIST benchmark "
        f"model (`benchmarks/fmnist/model.yaml`) trained normally ({args.epochs} epochs, batch "
        f"256, lr 0.002; validation carved from the training split): test accuracy "
        f"{before['1x']:.4f}. Every model fine-tuned as bench_headtohead's `long fine-tune`: "
        f"{steps} steps of batch {args.batch_size}, lr 0.0005, distilled (0.7 KD + 0.3 "
        f"labels) from the trained model, once per seed ({len(args.seeds)} seeds). Test "
        "accuracy; `room` is how far the uncut model ends above the peer's cut plus the "
        "head-to-head's one-point target (negative: a cut would have to end above its own "
        "uncut model).",
        "",
        *rows,
        *verdict,
    ])  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="results/h2h", help="where the trained model is kept")
    p.add_argument("--epochs", type=int, default=4, help="normal training of the model")
    p.add_argument("--steps", type=int, default=100, help="the head-to-head's short fine-tune")
    p.add_argument("--supernet-epochs", type=int, default=3,
                   help="the head-to-head's supernet epochs the long fine-tune matches")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = run(args)
    print(out)
    if not args.no_write:
        write_section(f"bench_ceiling:{args.epochs}-epochs", out)  # one per recipe


if __name__ == "__main__":
    main()
