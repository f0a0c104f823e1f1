"""Supernet benchmark: are candidates as good on the shared weights as trained alone?

On Fashion-MNIST (Debian's ``dataset-fashion-mnist``), a ViT supernet (embed 192, depth 9,
6 heads of 32 channels, 28 px images, patch sizes 2/4/7) is trained with the sandwich rule.
Ten candidates spread over the space (the full model, the smallest, and eight at MAC
quantiles of 2,000 random samples) are scored three ways on the official test set:
on the shared weights, after ``--finetune-steps`` steps of distillation from the full
model, and trained alone from scratch with the same epochs, steps and recipe on the
labels. The table goes into benchmarks/RESULTS.md.

Parts can run separately (on a GPU machine, say) and are merged from their JSON files:

    python benchmarks/bench_supernet.py --part supernet   --json-dir DIR
    python benchmarks/bench_supernet.py --part standalone --json-dir DIR --only 0-4
    python benchmarks/bench_supernet.py --part table      --json-dir DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import sys
import time
from datetime import date
from pathlib import Path

import timm
import torch

from vitpareto.evaluators import AccuracyEvaluator, analytic_macs, count_params, load_data
from vitpareto.search.supernet import (
    FinetuneConfig,
    Supernet,
    SupernetTrainer,
    TrainConfig,
    finetune,
    train_compressed,
)
from vitpareto.spaces import Candidate, ElasticViT, JointSpace, describe

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section  # noqa: E402

MODEL = "vit_tiny_patch16_224"
KWARGS = dict(img_size=28, patch_size=4, embed_dim=192, depth=9, num_heads=6, mlp_ratio=4.0)
SPACE = {
    "patch_size": [2, 4, 7],
    "heads": [3, 4, 5, 6],
    "qk_dim": [0.5, 0.75, 1.0],
    "mlp": [0.25, 0.5, 0.75, 1.0],
    "keep": {"blocks": [2, 4, 6], "choices": [0.5, 0.7, 1.0]},
    "exits": {"blocks": [3, 5], "threshold": [0.9]},
}
N_CANDIDATES = 10


def _model():
    return timm.create_model(MODEL, num_classes=10, **KWARGS)


def candidates(spec) -> list:
    """The full model, the smallest, and eight at MAC quantiles (final head only)."""
    space = JointSpace.from_dict(SPACE, spec)
    rng = random.Random(0)
    pool = sorted({space.sample(rng).replace(exits=()) for _ in range(2000)}, key=str)
    pool.sort(key=lambda c: analytic_macs(spec, c))
    picks = [pool[round(q * (len(pool) - 1) / 9)] for q in range(1, 9)]
    return [Candidate.full(spec), *picks, space.smallest().replace(exits=())]


def _data(args, batch):
    return load_data(args.data, 28, batch_size=batch, seed=0, num_workers=args.workers)


def _probe_epochs(trainer: SupernetTrainer, seconds: float) -> int:
    """Epochs that fit in ``seconds``, from the time of 20 steps after 5 warm-up steps."""
    first = list(itertools.islice(trainer.data.train, 25))
    batches = itertools.islice(itertools.cycle(first), 25)
    dev = trainer.device
    for i, (x, y) in enumerate(batches):
        if i == 5:
            t0 = time.perf_counter()
        trainer.train_step(x.to(dev), y.to(dev))
    step_s = (time.perf_counter() - t0) / 20
    epochs = int(seconds / (1.1 * step_s * trainer.steps_per_epoch))
    print(f"probe: {step_s * 1e3:.1f} ms per sandwich step -> {epochs} epochs", flush=True)
    return max(2, min(30, epochs))


def part_supernet(args) -> dict:
    def make(epochs):
        config = TrainConfig(epochs=epochs, batch_size=args.batch, lr=args.lr)
        return SupernetTrainer.create(
            MODEL,
            args.data,
            config,
            space=JointSpace.from_dict(SPACE),
            model_kwargs=KWARGS,
            device=args.device,
            workers=args.workers,
        )

    if args.train_budget_s:
        args.epochs = _probe_epochs(make(1), args.train_budget_s)
    trainer = make(args.epochs)
    ckpt = Path(args.json_dir) / "supernet.pt"
    t0 = time.perf_counter()
    for e in range(1, args.epochs + 1):
        h = trainer.fit(ckpt, progress=False, epochs=e)
        print(
            f"epoch {e}: full {h['full_accuracy']:.4f} smallest {h['smallest_accuracy']:.4f} "
            f"{time.perf_counter() - t0:.0f}s",
            flush=True,
        )
    train_s = trainer.seconds
    ckpt.unlink()  # large; the table needs only the metrics
    net = Supernet(
        trainer.elastic,
        trainer.space,
        MODEL,
        trainer.model_kwargs,
        {"spec": args.data, "classes": trainer.data.classes},
        trainer.sha256 or "",
    )
    ft = FinetuneConfig(steps=args.finetune_steps, batch_size=args.batch, lr=args.finetune_lr)
    rows = []
    for i, c in enumerate(candidates(trainer.elastic.spec)):
        r = finetune(net, c, ft, device=args.device, progress=False, data=trainer.data)
        rows.append(
            {
                "index": i,
                "candidate": c.to_dict(),
                "macs": analytic_macs(trainer.elastic.spec, c),
                "params": r.metrics["params"],
                "shared": r.metrics["shared_accuracy"],
                "finetuned": r.metrics["accuracy"],
                "finetune_s": r.metrics["finetune"]["seconds"],
            }
        )
        print(json.dumps(rows[-1]["index"]), rows[-1]["shared"], rows[-1]["finetuned"], flush=True)
    return {
        "train_seconds": train_s,
        "history": trainer.history,
        "rows": rows,
        "steps_per_epoch": trainer.steps_per_epoch,
        "config": vars(args),
    }


def part_standalone(args) -> dict:
    data = _data(args, args.batch)
    spec = describe(_model())
    lo, _, hi = args.only.partition("-")
    wanted = range(int(lo), int(hi or lo) + 1)
    rows = []
    for i, c in enumerate(candidates(spec)):
        if i not in wanted:
            continue
        torch.manual_seed(i)
        model = ElasticViT(_model(), importance="identity", exit_blocks=()).extract(c)
        cfg = FinetuneConfig(
            steps=args.epochs * len(data.train),
            batch_size=args.batch,
            lr=args.lr,
            min_lr=1e-5,
            warmup_fraction=1 / max(2, args.epochs),
            distill=0.0,
            seed=i,
        )
        seconds = train_compressed(model, data, cfg, device=args.device, progress=not args.quiet)
        acc = AccuracyEvaluator(data.val, device=args.device, progress=False).score(model, spec)
        rows.append(
            {
                "index": i,
                "alone": acc["accuracy"],
                "alone_s": seconds,
                "params": count_params(model),
            }
        )
        print(i, acc["accuracy"], f"{seconds:.0f}s", flush=True)
    return {"rows": rows}


def _machine(args) -> str:
    dev = args.device_name or (
        torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    )
    versions = args.versions or f"torch {torch.__version__}, timm {timm.__version__}"
    return f"{dev}; {versions}; {date.today().isoformat()}"


def part_table(args) -> str:
    d = Path(args.json_dir)
    sup = json.loads((d / "supernet.json").read_text())
    alone = {}
    for f in sorted(d.glob("standalone*.json")):
        for r in json.loads(f.read_text())["rows"]:
            alone[r["index"]] = r
    c = sup["config"]
    full_macs = sup["rows"][0]["macs"]
    lines = [
        f"Fashion-MNIST (60,000 train / 10,000 test), `{MODEL}` as embed 192, depth 9, 6 heads "
        f"x 32, MLP 768, 28 px, base patch 4; space: patch 2/4/7, heads 3-6, q/k 0.5-1, MLP "
        f"0.25-1, keep 0.5/0.7/1 at blocks 2/4/6. Supernet: sandwich rule (full + smallest + 2 "
        f"random), {c['epochs']} epochs x {sup['steps_per_epoch']} steps of batch {c['batch']}, "
        f"lr {c['lr']}, trained in {sup['train_seconds'] / 60:.1f} min. Fine-tune: "
        f"{c['finetune_steps']} steps distilled from the full model. Alone: the same "
        f"architecture from scratch, same epochs, steps and recipe, labels only. "
        f"Accuracy of the final head on the test set. {args.note or c['note']}",
        "",
        f"Machine: {_machine(args)}.",
        "",
        "| # | candidate | MACs (M) | MAC ratio | params (M) | shared | fine-tuned | alone "
        "| shared - alone |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    gaps = []
    for r in sup["rows"]:
        cand = r["candidate"]
        desc = (
            f"p{cand['patch_size']} h{min(cand['heads'])}-{max(cand['heads'])} "
            f"mlp{min(cand['mlp'])}-{max(cand['mlp'])} "
            f"keep{'/'.join(f'{k:g}' for k in cand['keep'] if k < 1) or ' 1'}"
        )
        a = alone.get(r["index"])
        gap = (r["shared"] - a["alone"]) * 100 if a else None
        if a and 3 <= r["index"] <= 6:
            gaps.append(gap)
        lines.append(
            f"| {r['index']} | {desc} | {r['macs'] / 1e6:.1f} | {full_macs / r['macs']:.2f}x "
            f"| {r['params'] / 1e6:.2f} | {r['shared']:.4f} | {r['finetuned']:.4f} | "
            + (f"{a['alone']:.4f} | {gap:+.2f} |" if a else "not run | |")
        )
    curve = ", ".join(
        f"{h['epoch']}: {h['full_accuracy']:.4f} / {h['smallest_accuracy']:.4f}"
        for h in sup["history"]
    )
    lines += ["", f"Supernet by epoch (full / smallest, shared weights): {curve}."]
    if gaps:
        lines += [
            "",
            f"Middle of the space (candidates 3-6): shared minus alone, median "
            f"{sorted(gaps)[len(gaps) // 2]:+.2f} points, worst {min(gaps):+.2f} "
            "(target: within 1.5 points).",
        ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["supernet", "standalone", "both", "table"], required=True)
    p.add_argument("--train-budget-s", type=float, help="choose --epochs to fit this training time")
    p.add_argument("--json-dir", default="results/bench_supernet")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--device-name", help="table: the machine the parts ran on")
    p.add_argument("--versions", help="table: the versions the parts ran with")
    p.add_argument("--key", default="bench_supernet", help="table: section of RESULTS.md")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--finetune-steps", type=int, default=500)
    p.add_argument("--finetune-lr", type=float, default=5e-4)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--only", default=f"0-{N_CANDIDATES - 1}", help="standalone: indices A-B")
    p.add_argument("--note", default="", help="a sentence added to the table's caption")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--standalone",
        default="3,4,5,6,0,9,1,2,7,8",
        help="both: the candidates trained alone, in this order (default: the middle first)",
    )
    args = p.parse_args()
    out = Path(args.json_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.part in ("supernet", "both"):
        r = part_supernet(args)
        (out / "supernet.json").write_text(json.dumps(r, indent=1))
    if args.part == "both":
        for i in map(int, args.standalone.split(",")):
            args.only = str(i)
            r = part_standalone(args)
            (out / f"standalone_{i}.json").write_text(json.dumps(r, indent=1))
    elif args.part == "standalone":
        r = part_standalone(args)
        (out / f"standalone_{args.only}.json").write_text(json.dumps(r, indent=1))
    elif args.part == "table":
        table = part_table(args)
        write_section(args.key, table)
        print(table)


if __name__ == "__main__":
    main()
