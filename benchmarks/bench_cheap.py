"""The cheap alternatives at no training: what a user gets from their trained model
without fine-tuning anything, against what ``search --model`` gives with the same nothing.

On the Fashion-MNIST benchmark model trained normally (``--epochs``; validation carved
from the training split, accuracy on the untouched test split):

- ONNX Runtime's int8 quantization of the full model (dynamic, static): no training;
- token merging alone (ToMe, off the shelf), float32 and int8-dynamic: no training;
- ours: ``vitpareto search --model plain.pt`` as a user runs it (the checkpoint as
  ``--model``), under ONNX Runtime at batch 1 with ``--precision fp32,int8-dynamic,
  int8-static``: heads and channels ranked by taylor, exit branches distilled on one pass
  of training images with the backbone frozen (the only training on our side), no
  fine-tune. For each speed budget, the trial most accurate on validation among those the
  search timed at least that fast.

Every model is timed as its file ships under ONNX Runtime at batch 1, paired with the
full float32 model (an exit policy on real test images), and scored on the test split by
its artifact (int8 in ONNX Runtime). The equal-data head-to-head with fine-tuning is
bench_headtohead's.

    pip install -e '.[bench]'
    python benchmarks/bench_cheap.py [--epochs 12] [--trials 48] [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import optuna
import torch
import yaml
from optuna.trial import TrialState

from vitpareto.evaluators import (
    AccuracyEvaluator,
    analytic_macs,
    calibration_images,
    first_images,
    prepare,
    time_deployed,
)
from vitpareto.search.cli import main as vitpareto
from vitpareto.search.supernet import load_supernet
from vitpareto.spaces import Candidate

sys.path.insert(0, str(Path(__file__).parent))
import _h2h as h  # noqa: E402
from _results import stamp, write_section  # noqa: E402

MODEL = yaml.safe_load((Path(__file__).parent / "fmnist" / "model.yaml").read_text())
BUDGETS = (1.5, 2.0, 3.0, 4.0, 6.0)  # speedups over the full model at batch 1
BATCHES = (1, 16)
FIGURE = Path(__file__).with_name("cheap_front.png")


def baselines(elastic, spec) -> dict[str, Candidate]:
    """The alternatives that need no training, as candidates of the trained model."""
    full = Candidate.full(spec)
    out = {"full model, fp32": full}
    for p in ("int8-dynamic", "int8-static"):
        out[f"full model, {p}"] = full.replace(precision=p)
    for ratio in (1.5, 2.0):
        tome = h.token_cut(spec, ratio, "merge")
        out[f"ToMe {ratio:g}x MACs, fp32"] = tome
        out[f"ToMe {ratio:g}x MACs, int8-dynamic"] = tome.replace(precision="int8-dynamic")
    return out


def ours(work: Path, args) -> tuple[object, list]:
    """``search --model`` run as a user runs it; the ranked model and the completed trials."""
    url = f"sqlite:///{work / 'cheap.db'}"
    code = vitpareto(
        ["search", "--model", str(work / "plain.pt"), "--study", "cheap", "--storage", url,
         "--trials", str(args.trials), "--runtime", "onnxruntime", "--precision",
         "fp32,int8-dynamic,int8-static", "--importance", "taylor", "--front-rounds", "0",
         "--no-progress"]
    )  # fmt: skip
    if code:
        sys.exit(f"search --model failed (exit {code})")
    study = optuna.load_study(study_name="cheap", storage=url)
    ranked = load_supernet(work / "artifacts" / "cheap.model.pt")
    return ranked, study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def picks(trials) -> dict[float, object]:
    """Per budget, the trial most accurate on validation among those timed that fast."""
    out = {}
    for b in BUDGETS:
        fast = [t for t in trials if t.user_attrs.get("speedup", 0) >= b]
        if fast:
            out[b] = max(fast, key=lambda t: t.user_attrs["accuracy"])
    return out


def measure(net, cand: Candidate, data, images, references, repeats: int) -> dict:
    """Test accuracy of the candidate's artifact, and its latency at each batch size of
    ``references`` (the full model prepared at that batch), paired with the full model."""
    spec = net.elastic.spec
    calib = calibration_images(data.train) if cand.precision == "int8-static" else None
    model = net.elastic.extract(cand).eval()
    acc = AccuracyEvaluator(data.test, progress=False, calibration=calib).score(model, spec)
    out = {
        "test": acc["accuracy"], "macs": analytic_macs(spec) / analytic_macs(spec, cand),
        "exit_fraction": acc.get("exit_fraction"),
    }  # fmt: skip
    settings = dict(repeats=repeats, warmup=3, max_rel_iqr=0.10, max_attempts=3)
    for batch, reference in references.items():
        got = time_deployed(model, reference, images[:batch], "onnxruntime", settings, images)
        out[batch] = (got["latency_ms"], got["speedup"])
    return out


def run(args) -> str:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    work = Path(args.work)
    net = h.trained_plain(MODEL, work / "plain.pt", args.epochs)
    data = net.load_data(batch_size=256)
    ranked, trials = ours(work, args)
    spec = net.elastic.spec
    images = first_images(data.test, max(BATCHES))
    full = net.elastic.extract(Candidate.full(spec)).eval()
    references = {b: prepare(full, images[:b], "onnxruntime") for b in BATCHES}
    rows = {}
    for label, cand in baselines(net.elastic, spec).items():
        rows[label] = measure(net, cand, data, images, references, args.repeats)
        print(label, rows[label], flush=True)
    ranked_data = ranked.load_data(batch_size=256)
    for budget, t in picks(trials).items():
        cand = Candidate.from_dict(t.user_attrs["candidate"])
        label = f"ours, >= {budget:g}x: {cand.precision}, exits {list(cand.exits) or '-'}"
        rows[label] = measure(ranked, cand, ranked_data, images, references, args.repeats)
        rows[label]["val"] = t.user_attrs["accuracy"]
        print(label, rows[label], flush=True)
    _figure(trials, rows)
    exits = ranked.meta.get("exit_training") or {}
    return _report(args, rows, exits, len(data.train.dataset) * args.epochs, len(trials))


def _figure(trials, rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([t.user_attrs["speedup"] for t in trials], [t.user_attrs["accuracy"] for t in trials],
               s=10, c="#b8c2cf", label="our trials (validation, as searched)")  # fmt: skip
    for label, r in rows.items():
        mark = "o" if label.startswith("ours") else "s"
        ax.scatter(r[1][1], r["test"], marker=mark, s=40, label=label)
    ax.set_xlabel("speedup over the full fp32 model (ONNX Runtime, batch 1)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(FIGURE)
    plt.close(fig)


def _report(args, rows, exits, trained_images: int, n: int) -> str:
    head = "".join(f" b{b} ms | b{b} speedup |" for b in BATCHES)
    lines = [f"| model | MACs cut | test acc. |{head} exit shares (test) |",
             "|---|---:|---:|" + "---:|---:|" * len(BATCHES) + "---|"]  # fmt: skip
    for label, r in rows.items():
        shares = ", ".join(f"{s:.2f}" for s in r["exit_fraction"] or []) or "-"
        cells = "".join(f" {r[b][0]:.3f} | {r[b][1]:.2f}x |" for b in BATCHES)
        lines.append(f"| {label} | {r['macs']:.2f}x | {r['test']:.4f} |{cells} {shares} |")
    cost = (f"{exits.get('images', 0):,} images ({exits.get('images', 0) / trained_images:.1%} "
            f"of the {trained_images:,} the model was trained on), {exits.get('seconds', 0):.0f} s")  # fmt: skip
    return "\n".join([
        "## The cheap alternatives at no training (bench_cheap.py)",
        "",
        f"{stamp()}, onnxruntime {version('onnxruntime')}. The Fashion-MNIST benchmark model "
        f"trained normally ({args.epochs} epochs). Ours: `vitpareto search --model plain.pt` "
        f"under ONNX Runtime at batch 1, {n} trials, `--precision fp32,int8-dynamic,int8-static`, "
        f"ranked by taylor; exit branches distilled on {cost}; no fine-tune on either side. "
        "Test accuracy of each artifact; latency at batch 1 and 16, each model paired with "
        f"the full fp32 model, medians of {args.repeats} rounds (an exit policy on the first "
        f"16 test images). Front (batch 1): {FIGURE.name}.",
        "",
        *lines,
    ])  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="results/cheap", help="where the model and search are kept")
    p.add_argument("--epochs", type=int, default=12, help="normal training of the model")
    p.add_argument("--trials", type=int, default=48)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    text = run(args)
    print(text)
    write_section("bench_cheap", text)


if __name__ == "__main__":
    main()
