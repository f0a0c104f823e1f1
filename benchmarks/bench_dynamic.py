"""Does spending computation per input pay? Static against dynamic search spaces.

On the Fashion-MNIST supernet (benchmarks/fmnist/model.yaml, trained with
benchmarks/fmnist/dynamic.yaml: patch sizes 4 and 7 at 28 px, exit designs, a cascade
stage at patch 7), three searches of the same trial budget on the same supernet:
static knobs only; static knobs plus exits with their designs; static plus exit designs
plus the patch-size cascade. Each trial's latency is measured at batch 1 under ONNX
Runtime on this CPU, the dynamic ones as deployed (the exported exit and cascade graph on
real validation images). Reports the hypervolume (accuracy against relative latency,
1 / speedup) against trials, the best accuracy at 2x and 4x measured speedup (on the
search's own scores, then with every trial past 1.6x scored again on the whole
validation set and timed again at length, on which the target is judged: _rescore.py),
the per-image evidence behind a cascade
(the share of validation images the full model classifies correctly at patch 7 that it
gets wrong at patch 4), an offline threshold sweep and what the exported gating costs at
batch 1. Target: the dynamic space's front above the static one's at 2x and 4x by at
least 0.5 point.

    python benchmarks/bench_dynamic.py [--epochs 8] [--batches 16] [--trials 100] [--seeds 0 1]
    python benchmarks/bench_dynamic.py --supernet PATH --seeds 0 1 2
    python benchmarks/bench_dynamic.py --sweep-only | --routes-only | --resume
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from _rescore import CONFIRM, FLOOR, ROUNDS, judged, label, log, verdicts  # noqa: E402
from _results import stamp, write_section  # noqa: E402

from vitpareto.evaluators import (  # noqa: E402
    IMAGES_PER_ROUND,
    ExitPath,
    deployed,
    exit_macs,
    prepare,
    time_interleaved,
)
from vitpareto.search import (  # noqa: E402
    SearchConfig,
    SupernetTrainer,
    TrainConfig,
    load_supernet,
    search,
)
from vitpareto.search.explore import front_hypervolume  # noqa: E402
from vitpareto.search.outputs import trials_frame  # noqa: E402
from vitpareto.spaces import Candidate, JointSpace, compress, exit_assignment  # noqa: E402

HERE = Path(__file__).parent / "fmnist"
SPACES = ("static", "exits", "exits + cascade")
TARGETS = (2.0, 4.0)
SWEEP = (0.3, 0.5, 0.7, 0.9)


def space_of(kind: str, declared: dict) -> dict:
    """The declared dynamic space cut down to ``kind``."""
    out = copy.deepcopy(declared)
    if kind != "exits + cascade":
        out.pop("cascade", None)
    if kind == "static":
        out.pop("exits", None)
    return out


def train(path: Path, epochs: int) -> None:
    recipe = yaml.safe_load((HERE / "model.yaml").read_text())
    config = TrainConfig(epochs=epochs, batch_size=256, lr=0.002, warmup_epochs=0.5)
    trainer = SupernetTrainer.create(
        recipe["name"], "fashion-mnist", config,
        space=JointSpace.load(HERE / "dynamic.yaml"), model_kwargs=recipe["kwargs"],
    )  # fmt: skip
    start = time.perf_counter()
    metrics = trainer.fit(path, progress=True)
    log(f"trained in {(time.perf_counter() - start) / 60:.1f} min: {metrics}")


def curve(study, checkpoints) -> dict[int, float]:
    """Hypervolume of the first n trials' front in accuracy and relative latency."""
    df = trials_frame(study).sort_values("trial")
    df["latency_ms"] = 1.0 / df["speedup"]  # relative to the full model timed beside it
    out = {}
    for n in checkpoints:
        head = df.iloc[:n]
        if len(head) == n:
            head = head[head["feasible"]].drop(columns="pareto")
            ref = {"accuracy": 0.0, "latency_ms": 1.0}
            out[n] = front_hypervolume(head, ["accuracy", "latency_ms"], ref)[0]
    return out


def best_at(study, speedup: float) -> tuple[float, int | None]:
    """The best accuracy among trials at least ``speedup`` times faster, and its trial."""
    df = trials_frame(study)
    fast = df[df["speedup"] >= speedup]
    if fast.empty:
        return float("nan"), None
    row = fast.loc[fast["accuracy"].idxmax()]
    return float(row["accuracy"]), int(row["trial"])


@torch.inference_mode()
def route_logits(net, candidate: Candidate) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every route's logits (stages, exits, final head) of ``candidate`` on every
    validation image, and the labels."""
    model = compress(net.elastic.eval(), candidate).eval()
    outs, labels = [], []
    for x, y in net.load_data(batch_size=256).val:
        outs.append(model.forward_exits(x))
        labels.append(y)
    return [torch.cat(col) for col in zip(*outs, strict=True)], torch.cat(labels)


def coarse_only(net, coarse: int, fine: int) -> tuple[float, float, float, int]:
    """Shares of validation images right at patch ``coarse`` and wrong at ``fine``, the
    two accuracies, on the full model (a cascade's two routes); and the image count."""
    full = Candidate.full(net.elastic.spec).replace(patch_size=fine)
    (first, last), y = route_logits(net, full.replace(cascade=(coarse,), cascade_thresholds=(1.0,)))
    a, b = first.argmax(-1) == y, last.argmax(-1) == y
    n = len(y)
    return int((a & ~b).sum()) / n, int(a.sum()) / n, int(b.sum()) / n, n


def sweep(net, declared: dict, thresholds) -> list[str]:
    """Table rows: the full candidate with one exit or one cascade stage, each route's
    logits computed once on every validation image, the policy applied offline at each
    threshold: accuracy and MACs per image (from the route shares) against the full model.
    Shows what a threshold buys before any search or timing noise."""
    elastic = net.elastic.eval()
    base = exit_macs(elastic, Candidate.full(elastic.spec))[-1]
    rows = [
        "| route before the final head | route accuracy | "
        + " | ".join(f"threshold {t:g}" for t in thresholds)
        + " |",
        "|---|---:|" + "---:|" * len(thresholds),
    ]
    for name, cand in declared_routes(net, declared):
        logits, y = route_logits(net, cand)
        macs = torch.tensor(exit_macs(elastic, cand), dtype=torch.float64)
        cells = []
        for t in thresholds:
            where = exit_assignment(logits, t)
            chosen = torch.stack(logits)[where, torch.arange(len(y))]
            acc = float((chosen.argmax(-1) == y).double().mean())
            share = torch.bincount(where, minlength=len(logits)).double() / len(y)
            cells.append(f"{acc:.4f} at {base / float(share @ macs):.2f}x ({share[0]:.0%} leave)")
        first = float((logits[0].argmax(-1) == y).double().mean())
        rows.append(f"| {name} | {first:.4f} | " + " | ".join(cells) + " |")
    return rows


def declared_routes(net, declared: dict) -> list[tuple[str, Candidate]]:
    """The full candidate with each declared exit design alone at each exit block, and
    with each declared cascade stage alone."""
    full = Candidate.full(net.elastic.spec)
    exits, cascade = declared["exits"], declared["cascade"]
    out = [
        (f"exit after block {b} ({t})",
         full.replace(exits=(b,), exit_types=(t,), exit_threshold=1.0))
        for b in exits["blocks"] for t in exits["types"]
    ]  # fmt: skip
    out += [(f"cascade stage at patch {p}", full.replace(cascade=(p,), cascade_thresholds=(1.0,)))
            for p in cascade["patch_sizes"]]  # fmt: skip
    return out


def route_costs(net, rounds: int = 300) -> list[str]:
    """Table rows: at batch 1 under ONNX Runtime, the deployed graph of the full candidate
    with one exit or one cascade stage, on an image that leaves there and on one that goes
    on, against that image's route run alone (``ExitPath``: the same stages, blocks and
    heads, confidences included, no test and no gathers): what the exported gating costs.
    Interleaved rounds in random order, medians."""
    elastic = net.elastic.eval()
    full = Candidate.full(elastic.spec)
    images = next(iter(net.load_data(batch_size=64).val))[0]
    exit2 = full.replace(exits=(2,), exit_types=("linear",))
    stage7 = full.replace(cascade=(7,), cascade_thresholds=(0.5,))
    cases = [  # name, deployed candidate (its threshold: leave or stay), the route taken
        ("exit after block 2, the image leaves", exit2.replace(exit_threshold=0.1), 0),
        ("exit after block 2, the image goes on", exit2.replace(exit_threshold=1.0), 1),
        ("cascade stage at patch 7, the image stops", stage7.replace(cascade_thresholds=(0.1,)), 0),
        ("cascade stage at patch 7, the image goes on", stage7.replace(cascade_thresholds=(1.0,)), 1),
    ]  # fmt: skip
    routes = []
    for name, cand, route in cases:
        model = compress(elastic, cand).eval()
        # an image that takes this route (threshold 1.0: a softmax can round to 1)
        taking = (im[None] for im in images if int(model.forward_dynamic(im[None])[1]) == route)
        x = next(taking, None)
        if x is None:
            raise SystemExit(f"no validation image of 64 takes route {route} for {name!r}")
        routes.append((name, deployed(model), ExitPath(model, route), x))
    rows = ["| route at batch 1 | deployed graph (ms) | the route alone (ms) | "
            "gating (ms) |", "|---|---:|---:|---:|"]  # fmt: skip
    for name, gated, alone, x in routes:
        pair = {
            "gated": prepare(gated, x, "onnxruntime"),
            "alone": prepare(alone, x, "onnxruntime"),
        }
        ms = {k: statistics.median(t) for k, t in time_interleaved(pair, x, rounds, 50).items()}
        gap = ms["gated"] - ms["alone"]
        rows.append(f"| {name} | {ms['gated']:.3f} | {ms['alone']:.3f} | {gap:+.3f} |")
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", type=Path, default=Path("results/fmnist_dyn/supernet.pt"))
    p.add_argument("--epochs", type=int, default=8, help="supernet epochs, if it is trained here")
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="sampler seeds: each space searched once per seed, the target judged "
                   "on the median of each seed's lead")  # fmt: skip
    p.add_argument("--batches", type=int, default=16,
                   help="validation batches of 128 each trial is scored on")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--sweep-only", action="store_true", help="print the threshold sweep only")
    p.add_argument("--routes-only", action="store_true", help="print the route costs only")
    p.add_argument("--resume", action="store_true",
                   help="reuse the last run's studies, each searched on to --trials where it "
                   "was cut off (all there: the section again from its studies)")  # fmt: skip
    return p


def _search_all(net, declared, args) -> tuple[dict, dict]:
    """Each space searched once per seed (a cut-off run resumed with --resume): the
    studies and each space's cheapest candidate, by label."""
    work = args.supernet.parent
    url = f"sqlite:///{work / 'dynamic.db'}"
    config = SearchConfig(runtime="onnxruntime", threads=args.threads, max_batches=args.batches,
                          latency_repeats=10)  # fmt: skip
    if not args.resume:
        (work / "dynamic.db").unlink(missing_ok=True)  # this run's studies, never a past run's
    done = set(optuna.get_all_study_names(url)) if args.resume else set()
    studies, cheapest, seeds = {}, {}, args.seeds
    for seed in seeds:
        for kind in SPACES:
            name = kind.replace(" + ", "_") + (f"_seed{seed}" if seed else "")
            key = label(kind, seed, seeds)
            space = JointSpace.from_dict(space_of(kind, declared), net.elastic)
            cheapest[key] = space.smallest()
            verb = "completing" if name in done else "searching"  # a cut-off run resumes
            log(f"{verb} {args.trials} trials, {key} ...")
            start = time.perf_counter()
            studies[key] = search(dataclasses.replace(net, space=space), url, name,
                                  args.trials, dataclasses.replace(config, seed=seed),
                                  progress=False)  # fmt: skip
            log(f"  {time.perf_counter() - start:.0f} s")
    return studies, cheapest


def _section(args, net, trials, checkpoints, rows, scored, whole, noise, sure, whole_verdicts,
             coarse, table, seeds) -> str:  # fmt: skip
    """The RESULTS.md section, from the figures ``main`` measured."""
    only, acc7, acc4, n = coarse
    return "\n".join([
        "## Dynamic inference: static against dynamic search spaces (bench_dynamic.py)",
        "",
        f"{stamp()}. Supernet {args.supernet.name}: benchmarks/fmnist/model.yaml + "
        f"dynamic.yaml on Fashion-MNIST ({net.meta.get('epoch')} epochs). Searches of "
        f"{trials} trials each (the default sampler, seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(map(str, seeds))}), accuracy on {args.batches} validation "
        "batches of 128, "
        "latency at batch 1 under ONNX Runtime, 10 interleaved rounds with the full model; "
        "a dynamic candidate timed as deployed on real validation images. Hypervolume in "
        "accuracy against relative latency (1 / measured speedup), reference (0, 1).",
        "",
        *rows,
        "",
        f"On the {args.batches}-batch scores the search ranked by (dynamic space's best above the static "
        "one's by >= 0.5 point): " + "; ".join(scored) + ".",
        "",
        "The best of many short measurements is biased upward. So each trial whose search "
        f"speedup reached {FLOOR * min(TARGETS):g}x is scored again on the "
        "whole validation set (the exit policy applied) and timed again as the search "
        f"timed it, {ROUNDS} single-image rounds against the full model (an exit policy: "
        f"{ROUNDS // IMAGES_PER_ROUND} rounds of {IMAGES_PER_ROUND} images), the trials of "
        "all spaces in one shuffled order. Best whole-set accuracy (trial, speedup) among "
        "the trials past each speedup by the search's figure, then by the one timed again:",
        "",
        *whole,
        "",
        "How far the search's speedups were off, over the same trials:",
        "",
        *noise,
        "",
        f"Even {ROUNDS} rounds leave a few percent between two timings, and a best that "
        f"clears a target by less is decided by them. So each space's best at each target "
        f"is timed {CONFIRM} times more (the trials of all spaces in one shuffled order "
        "each time) and judged on the median, the next best taking its place where the "
        "median falls short; where a space has no trial at a target, its cheapest "
        "candidate (every knob at its minimum; the searches' first trial) is timed so, "
        "to tell a space that stops short from a search that does:",
        "",
        *sure,
        "",
        "Target, on the whole validation set and those medians: "
        + "; ".join(whole_verdicts) + ".",
        "",
        f"Per image, on the full model over {n} validation images: {only:.1%} are right at "
        f"patch 7 and wrong at patch 4 (accuracy {acc7:.4f} at patch 7, {acc4:.4f} at 4).",
        "",
        "What a threshold buys, before search and timing: the full candidate with one route "
        f"before its final head, over the same {n} images; each cell is the accuracy and the "
        "MAC speedup from the route shares (and the share leaving early).",
        "",
        *table,
        "",
        "What the exported gating costs: at batch 1 under ONNX Runtime, the deployed graph "
        "of the full candidate with one route, on an image that leaves there and on one "
        "that goes on, against that image's route run alone (the same stages, blocks and "
        "heads without the test and the gathers; 300 interleaved rounds, medians).",
        "",
        *route_costs(net),
    ])  # fmt: skip


def main() -> None:
    args = _parser().parse_args()
    torch.set_num_threads(args.threads)
    if not args.supernet.exists():
        args.supernet.parent.mkdir(parents=True, exist_ok=True)
        log(f"training the supernet ({args.epochs} epochs) into {args.supernet} ...")
        train(args.supernet, args.epochs)
    net = load_supernet(args.supernet)
    declared = yaml.safe_load((HERE / "dynamic.yaml").read_text())
    if args.sweep_only:
        print("\n".join(sweep(net, declared, SWEEP)))
        return
    if args.routes_only:
        print("\n".join(route_costs(net)))
        return
    studies, cheapest = _search_all(net, declared, args)
    seeds = args.seeds
    trials = min(len(trials_frame(study)) for study in studies.values())  # completed ones
    checkpoints = sorted({n for n in (10, 20, trials // 2, trials) if n >= 5})
    curves = {kind: curve(study, checkpoints) for kind, study in studies.items()}
    best = {kind: {s: best_at(study, s) for s in TARGETS} for kind, study in studies.items()}
    head = "| space | " + " | ".join(f"HV at {n} trials" for n in checkpoints)
    head += " | " + " | ".join(f"best accuracy at >= {s:g}x (trial)" for s in TARGETS) + " |"
    rows = [head, "|---|" + "---:|" * (len(checkpoints) + len(TARGETS))]
    for kind in studies:
        cells = [f"{curves[kind].get(n, float('nan')):.4f}" for n in checkpoints]
        cells += [f"{a:.4f} ({t})" for a, t in (best[kind][s] for s in TARGETS)]
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    scored = verdicts(best, TARGETS, seeds)
    whole, noise, sure, whole_verdicts = judged(net, studies, TARGETS, args.threads, seeds,
                                                cheapest)  # fmt: skip
    only, acc7, acc4, n = coarse_only(net, 7, 4)
    table = sweep(net, declared, SWEEP)
    md = _section(args, net, trials, checkpoints, rows, scored, whole, noise, sure,
                  whole_verdicts, (only, acc7, acc4, n), table, seeds)  # fmt: skip
    print(md)
    if not args.no_write:
        write_section("bench_dynamic", md)


if __name__ == "__main__":
    main()
