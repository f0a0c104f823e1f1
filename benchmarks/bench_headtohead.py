"""Head-to-head against Torch-Pruning at matched measured latency, on a model trained
normally.

A user brings a trained ViT and judges vitpareto against what they would otherwise do.
On the Fashion-MNIST benchmark model trained normally (validation carved from the
training split, accuracy reported on the untouched test split), at 2x and 3x fewer MACs:

- Torch-Pruning (the ``bench`` extra), magnitude and Taylor, its timm ViT example's cut;
- vitpareto one-shot: the same uniform cut ranked by taylor, and tokens alone, pruned
  (EViT) against merged (ToMe);
- vitpareto ``search --model`` (ranked by taylor, no supernet) and the supernet path
  (the same weights trained as a supernet): each searched under ONNX Runtime at batch 16,
  and the most accurate trial at least as fast as the peer's Taylor cut picked;

every model fine-tuned with the same budget, distilled from the trained model; then every
model timed in one interleaved loop under ONNX Runtime and eager, batch 1 and 16.

    pip install -e '.[bench]'
    python benchmarks/bench_headtohead.py [--steps 100] [--trials 24] [--repeats 20]
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
import yaml

from vitpareto.evaluators import (
    analytic_macs,
    count_macs,
    count_params,
    prepare,
    time_interleaved,
)
from vitpareto.search.supernet import FinetuneConfig, TrainConfig, train_compressed
from vitpareto.spaces import Candidate, compress, importance_scores

sys.path.insert(0, str(Path(__file__).parent))
import _h2h as h  # noqa: E402
from _peer import available, torch_pruning_cut  # noqa: E402
from _results import stamp, write_section  # noqa: E402

MODEL = yaml.safe_load((Path(__file__).parent / "fmnist" / "model.yaml").read_text())
SETTINGS = (("onnxruntime", 1), ("onnxruntime", 16), ("eager", 1), ("eager", 16))
LONG = ("torch-pruning taylor, uniform", "ours taylor, uniform", "ours one-shot search #1")
TOLERANCE = 0.02  # "as fast": within 2% of the peer's median, what a rerun moves


def _latency(models: dict, spec, repeats: int) -> dict[tuple[str, int], dict[str, float]]:
    """Median milliseconds of every model in every setting, all timed in one loop."""
    out = {}
    for runtime, batch in SETTINGS:
        x = torch.randn(batch, 3, *spec.img_size)
        fns = {name: prepare(copy.deepcopy(m).eval(), x, runtime) for name, m in models.items()}
        times = time_interleaved(fns, x, repeats=repeats, warmup=3)
        out[(runtime, batch)] = {k: statistics.median(v) for k, v in times.items()}
        print(f"timed {runtime} batch {batch}", flush=True)
    return out


def _fixed_cuts(vit, spec, calib) -> dict:
    """The cuts made without search at 2x and 3x MACs: Torch-Pruning's (magnitude and
    Taylor) and ours at the same uniform shapes, and token pruning and merging alone."""
    H = spec.num_heads
    fixed: dict[tuple[float, str], torch.nn.Module] = {}
    for ratio, heads in ((2.0, H - 1), (3.0, max(1, H - 2))):
        cut = h.uniform_cut(spec, ratio, heads)
        for crit in ("magnitude", "taylor"):
            tp = torch_pruning_cut(vit, cut.heads[0], cut.mlp[0], crit, calib, calib[0][0][:1])
            fixed[(ratio, f"torch-pruning {crit}, uniform")] = tp
        ranked = importance_scores(copy.deepcopy(vit), "taylor", calib)
        fixed[(ratio, "ours taylor, uniform")] = compress(vit, cut, ranked)
        for mode in ("prune", "merge"):
            fixed[(ratio, f"ours tokens, {mode}")] = compress(vit, h.token_cut(spec, ratio, mode))
    return fixed


def _finetuned(work, args, models, teachers, vit, tune, ft, data, long_steps) -> dict:
    """Each model fine-tuned (distilled from its teacher) and its test accuracy before and
    after, and validation accuracy; cached, so a rerun fine-tunes only what changed."""
    cache_path = work / "finetuned.pt"  # a rerun fine-tunes only what changed
    cache = torch.load(cache_path) if cache_path.exists() else {}
    acc = {}
    for key, m in models.items():
        steps = long_steps if "long" in key[1] else args.steps
        cand = getattr(m, "candidate", None)
        ident = (key, steps, args.batch_size, _supernet_name(args), cand and cand.to_json())
        if ident not in cache:
            before = h.accuracy(m, data.test)
            train_compressed(
                m,
                tune,
                dataclasses.replace(ft, steps=steps),
                teacher=teachers.get(key, vit),
                progress=False,
            )
            # test accuracy before and after, and the validation accuracy models are chosen by
            cache[ident] = (before, h.accuracy(m, data.test), h.accuracy(m, data.val))
            torch.save(cache, cache_path)
        acc[key] = cache[ident]
        print(f"{key}: test {acc[key][0]:.4f} -> {acc[key][1]:.4f} (val {acc[key][2]:.4f})")
    return acc


def run(args) -> str:
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    work = Path(args.work)
    net, data, calib = h.calibrated(MODEL, work / "plain.pt", args.epochs, args.calibration_batches)
    vit, spec = net.elastic.vit.eval(), net.elastic.spec
    weights = work / "plain.pth"
    torch.save(vit.state_dict(), weights)
    if data.test is None:
        sys.exit(f"{work / 'plain.pt'} validates on the test split (made before honest splits)")
    fixed = _fixed_cuts(vit, spec, calib)
    # the peer's speed in each setting the searches time: the targets they are picked by
    full = compress(vit, Candidate.full(spec))
    probe = {"full": full} | {
        f"{r}": fixed[(r, "torch-pruning taylor, uniform")] for r in (2.0, 3.0)
    }
    probe_ms = _latency(probe, spec, 10)
    storage = f"sqlite:///{work / 'searches.db'}"
    paths = {  # label: the searched supernet and its study
        "one-shot search": (
            h.one_shot(MODEL, weights, work / "oneshot.pt", args.calibration_batches),
            "one-shot search",
        ),
        "supernet search": (
            h.supernet(
                MODEL,
                weights,
                work / f"{_supernet_name(args)}.pt",
                _supernet_config(args),
                args.calibration_batches,
            ),
            _supernet_name(args),
        ),
    }
    chosen, teachers = {}, {}
    ms = probe_ms[("onnxruntime", args.search_batch)]
    for label, (snet, name) in paths.items():
        study = h.searched(snet, storage, name, args.trials, args.search_batch, args.search_batches)
        # searched models are fine-tuned as `vitpareto finetune` does: from their supernet's
        # full model (for the one-shot path, the trained model itself)
        teacher = snet.elastic.extract(Candidate.full(spec)).eval()
        for ratio in (2.0, 3.0):
            speedup = ms["full"] / ms[f"{ratio}"] * (1 - TOLERANCE)
            for i, (cand, attrs) in enumerate(h.pick(study, speedup, args.picks)):
                chosen[(ratio, f"ours {label} #{i + 1}")] = snet.elastic.extract(cand).eval()
                teachers[(ratio, f"ours {label} #{i + 1}")] = teacher
                print(f"{ratio}x {label} #{i + 1}: {cand.to_json()} val {attrs['accuracy']:.4f}")
    models = fixed | chosen
    tune = net.load_data(batch_size=args.batch_size)
    ft = FinetuneConfig(steps=args.steps, batch_size=args.batch_size, lr=5e-4, distill=0.7)
    # fine-tuned on as many images as the supernet trained on and more (equal data): the
    # peer's cut, and ours that had no supernet (the same cut, and the one-shot search's)
    long_steps = _long_steps(data, args)
    for ratio in (2.0, 3.0):
        for name in LONG:
            if (ratio, name) in models:
                models[(ratio, f"{name}, long fine-tune")] = copy.deepcopy(models[(ratio, name)])
                teachers[(ratio, f"{name}, long fine-tune")] = teachers.get((ratio, name), vit)
    acc = _finetuned(work, args, models, teachers, vit, tune, ft, data, long_steps)
    torch.save({"acc": acc}, work / "accuracy.pt")  # kept should the timing fail
    ms = _latency(
        {"full": full} | {f"{k[0]}|{k[1]}": m for k, m in models.items()}, spec, args.repeats
    )
    torch.save({"acc": acc, "ms": ms}, work / "accuracy.pt")
    return _report(args, spec, vit, data, models, acc, ms)


def _report(args, spec, vit, data, models, acc, ms) -> str:
    full_test = h.accuracy(vit, data.test)
    head = "| MACs cut | model | params | test acc. before FT | after FT | val. after FT |"
    head += "".join(f" {r} b{b} ms |" for r, b in SETTINGS)
    lines = [head, "|---|---|---|---|---|---|" + "---|" * len(SETTINGS)]
    full_ms = "".join(f" {ms[s]['full']:.3f} |" for s in SETTINGS)
    full_val = h.accuracy(vit, data.val)
    lines.append(
        f"| 1x | full model | {count_params(vit):,} | {full_test:.4f} | - | {full_val:.4f} |"
        f"{full_ms}"
    )
    for (ratio, name), m in models.items():
        macs = analytic_macs(spec) / _macs(m, spec)
        t = "".join(f" {ms[s][f'{ratio}|{name}']:.3f} |" for s in SETTINGS)
        before, after, val = acc[(ratio, name)]
        lines.append(
            f"| {macs:.2f}x ({ratio:g}x target) | {name} | {count_params(m):,} | {before:.4f} "
            f"| {after:.4f} | {val:.4f} |{t}"
        )
    verdict = ["", "| target | setting | peer's best (test, ms) | ours at most as slow | margin |"]
    # each side's best is the most accurate on validation images; its test accuracy is shown
    verdict.append("|---|---|---|---|---|")
    for ratio in (2.0, 3.0):
        for s in SETTINGS[:2]:
            peer = max(
                (k for k in models if k[0] == ratio and k[1].startswith("torch-pruning")),
                key=lambda k: acc[k][2],
            )
            limit = ms[s][f"{ratio}|{peer[1]}"] * (1 + TOLERANCE)
            ours = [
                k
                for k in models
                if k[0] == ratio and k[1].startswith("ours") and ms[s][f"{ratio}|{k[1]}"] <= limit
            ]
            best = max(ours, key=lambda k: acc[k][2]) if ours else None
            peer_txt = f"{peer[1]}: {acc[peer][1]:.4f}, {ms[s][f'{ratio}|{peer[1]}']:.3f}"
            if best is None:
                verdict.append(f"| {ratio:g}x | {s[0]} b{s[1]} | {peer_txt} | none | - |")
                continue
            ours_txt = f"{best[1]}: {acc[best][1]:.4f}, {ms[s][f'{ratio}|{best[1]}']:.3f}"
            margin = 100 * (acc[best][1] - acc[peer][1])
            verdict.append(
                f"| {ratio:g}x | {s[0]} b{s[1]} | {peer_txt} | {ours_txt} | {margin:+.2f} pt |"
            )
    return "\n".join(
        [
            "### bench_headtohead: against Torch-Pruning at matched measured latency",
            "",
            f"{stamp()}, onnxruntime {version('onnxruntime')}, torch-pruning {version('torch-pruning')}. "
            f"The Fashion-MNIST benchmark model (`benchmarks/fmnist/model.yaml`) trained "
            f"normally ({args.epochs} epochs, batch 256, lr 0.002; validation carved from the "
            f"training split): test accuracy {full_test:.4f}. Rankings (taylor, and "
            f"Torch-Pruning's Taylor) on 8 training batches of 256. Searches: {args.trials} "
            f"trials each, timed under ONNX Runtime at batch {args.search_batch}, scored on "
            f"{args.search_batches} validation batches; the pick is the most accurate trial "
            "at least as fast as "
            f"Torch-Pruning's Taylor cut (within {TOLERANCE:.0%}), the {args.picks} most "
            f"accurate of them fine-tuned. The supernet: {args.supernet_epochs} epochs from "
            f"the trained weights ({_supernet_steps(data, args)} steps of batch 256, lr "
            f"{args.supernet_lr:g}; per step the full model, the smallest candidate and "
            f"{args.random_candidates} random candidates, distilled from the full model). "
            f"Fine-tune, the same for every model: {args.steps} steps of batch "
            f"{args.batch_size}, lr 0.0005, distilled (0.7 KD + 0.3 labels) from the trained "
            "model, or for a searched model from its supernet's full model, as `vitpareto "
            "finetune` does; `long fine-tune`: the same on as many images as the supernet saw "
            f"besides ({_long_steps(data, args)} steps), for the peer's Taylor cut and for ours "
            "that had no supernet (equal data). Each side's best is the most accurate on the validation images after "
            "fine-tuning. Latency: medians of "
            f"{args.repeats} interleaved rounds, every model in one loop per setting.",
            "",
            *lines,
            *verdict,
        ]
    )


def _supernet_config(args) -> TrainConfig:
    return TrainConfig(
        epochs=args.supernet_epochs,
        batch_size=256,
        lr=args.supernet_lr,
        warmup_epochs=0.1,
        random_candidates=args.random_candidates,
    )


def _supernet_steps(data, args) -> int:
    return len(data.train) * args.supernet_epochs


def _long_steps(data, args) -> int:
    return args.steps + _supernet_steps(data, args) * 256 // args.batch_size


def _supernet_name(args) -> str:
    """Each supernet recipe is kept (and searched) under its own name."""
    return f"supernet-{args.supernet_epochs}e-{args.random_candidates}r-lr{args.supernet_lr:g}"


def _macs(model, spec) -> int:
    cand = getattr(model, "candidate", None)
    if cand is not None:
        return analytic_macs(spec, cand)
    return count_macs(model, spec.img_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="results/h2h", help="where models and searches are kept")
    p.add_argument("--epochs", type=int, default=4, help="normal training of the model")
    p.add_argument("--supernet-epochs", type=int, default=3)
    p.add_argument("--supernet-lr", type=float, default=1e-3)
    p.add_argument(
        "--random-candidates", type=int, default=2, help="random candidates per supernet step"
    )
    p.add_argument("--trials", type=int, default=24, help="trials of each search")
    p.add_argument("--search-batch", type=int, default=16, help="the batch searches time")
    p.add_argument(
        "--search-batches", type=int, default=8, help="validation batches a trial is scored on"
    )
    p.add_argument("--picks", type=int, default=3, help="searched models fine-tuned per target")
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps, every model")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    if not available():
        sys.exit("Torch-Pruning is not installed: pip install -e '.[bench]'")
    text = run(args)
    print(text)
    write_section("bench_headtohead", text)


if __name__ == "__main__":
    main()
