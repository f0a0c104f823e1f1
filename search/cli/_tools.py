"""The ``demo``, ``showcase``, ``space``, ``cost`` and ``latency`` commands."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import yaml

from vitpareto.bounds import use_threads
from vitpareto.evaluators import (
    LatencyEvaluator,
    LatencyPredictor,
    count_macs,
    count_params,
    resolve_device,
)
from vitpareto.files import check_parent
from vitpareto.search._demo import run_demo
from vitpareto.search.cli._common import candidate_or_full, model_args, model_from_args
from vitpareto.search.outputs import format_table, measure
from vitpareto.spaces import ElasticViT, JointSpace, compress, describe

DEMO_MODEL = "deit_small_patch16_224"


def add_parsers(sub) -> None:
    e2e = sub.add_parser(
        "demo",
        help="the whole pipeline on digits in minutes: train, search, front, report, export",
        description="On scikit-learn's digits (bundled, no download): train a small supernet, "
        "search it (latency measured on this machine), re-score the front after fine-tuning, "
        "print the front, write the report and export the front's models, all under --out. "
        "Running it again reuses what is already there.",
    )
    e2e.add_argument(
        "--out", type=Path, default=Path("results/demo"), help="(default: results/demo)"
    )
    e2e.add_argument("--trials", type=int, default=48, help="search trials (default: 48)")
    e2e.add_argument("--epochs", type=int, default=10, help="supernet epochs (default: 10)")
    e2e.add_argument(
        "--finetune-front", type=int, default=60, metavar="STEPS", help="(default: 60)"
    )
    e2e.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    e2e.set_defaults(handler=cmd_demo)

    d = sub.add_parser(
        "showcase",
        help="compress a real ViT with one candidate per knob and measure the speedups",
        description="Cut a timm ViT (random weights: latency does not depend on weight values) "
        "with one candidate per compression knob, and print parameters, MACs and the speedup "
        "measured here, interleaved against the full model.",
    )
    model_args(d, default=DEMO_MODEL)
    d.add_argument("--batch", type=int, default=8, help="images per forward pass (default: 8)")
    d.add_argument("--repeats", type=int, default=15, help="timed rounds (default: 15)")
    d.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    d.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    d.set_defaults(handler=cmd_showcase)

    s = sub.add_parser(
        "space",
        help="write the default search space of a model as YAML or JSON",
        description="Print (or write with --out) the default JointSpace of a model: a starting "
        "point to edit and pass to the search.",
    )
    model_args(s)
    s.add_argument("--out", type=Path, help="file to write (.yaml, .yml or .json)")
    s.set_defaults(handler=cmd_space)

    c = sub.add_parser(
        "cost",
        help="parameters and MACs of a candidate",
        description="Compress a model with a candidate and print its parameters and MACs "
        "(fvcore, attention matmuls included) beside the full model's.",
    )
    model_args(c)
    c.add_argument(
        "--candidate",
        help="candidate as JSON text or a .json file (default: the full model)",
    )
    c.set_defaults(handler=cmd_cost)
    latency_parser(sub)


def latency_parser(sub) -> None:
    """`vitpareto latency`: one candidate timed, and the latency table."""
    lat = sub.add_parser(
        "latency",
        help="measure a candidate's latency on this machine (and predict it)",
        description="Measure a candidate's latency on the target device, interleaved with the "
        "full model, repeating a measurement whose spread is too wide; with --predict, also "
        "build (once per device, model, batch size and space; then reused) the latency table "
        "and show its prediction beside the measurement.",
    )
    model_args(lat)
    lat.add_argument("--candidate", help="candidate as JSON text or a .json file (default: full)")
    lat.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    lat.add_argument("--batch", type=int, default=1, help="images per forward pass (default: 1)")
    lat.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    lat.add_argument(
        "--runtime",
        default="eager",
        choices=["eager", "compile", "onnxruntime"],
        help="what runs the model: eager PyTorch, torch.compile or ONNX Runtime (default: eager)",
    )
    lat.add_argument("--repeats", type=int, default=30, help="timed rounds (default: 30)")
    lat.add_argument("--predict", action="store_true", help="also predict from the latency table")
    lat.add_argument(
        "--space", type=Path, help="space file the table covers (default: the model's)"
    )
    lat.add_argument(
        "--tables", type=Path, default=Path("results/latency"), help="where tables are kept"
    )
    lat.set_defaults(handler=cmd_latency)


def cmd_demo(args) -> int:
    run_demo(args.out, args.trials, args.epochs, args.finetune_front, args.threads)
    return 0


def cmd_showcase(args) -> int:
    device = resolve_device(args.device)
    use_threads(args.threads)
    model = model_from_args(args)
    print(
        f"vitpareto showcase: {args.model}, batch {args.batch}, {args.repeats} interleaved rounds on "
        f"{device} ({torch.get_num_threads()} threads)",
        flush=True,
    )
    rows = measure(model, batch=args.batch, repeats=args.repeats, device=str(device))
    print(format_table(rows))
    print(
        "\nMAC ratio = original MACs / candidate MACs; speedup = median of per-round "
        "original / candidate\ntimes, measured interleaved on this machine. Physically "
        "removed parts mean speedups that track the MAC ratio."
    )
    return 0


def cmd_space(args) -> int:
    if args.out:
        check_parent(args.out, "--out")  # before the model is built
    space = JointSpace.default(model_from_args(args))
    if args.out:
        space.save(args.out)
        print(f"wrote {args.out} ({space.size():,} parameter combinations)")
    else:
        print(yaml.safe_dump(space.to_dict(), sort_keys=False), end="")
    return 0


def cmd_cost(args) -> int:
    model = model_from_args(args)
    cand = candidate_or_full(args, model)
    size = describe(model).img_size
    small = compress(model, cand)
    full_macs, macs = count_macs(model, size), count_macs(small, size)
    report = {
        "candidate": cand.to_dict(),
        "params": count_params(small),
        "macs": macs,
        "full_params": count_params(model),
        "full_macs": full_macs,
        "mac_ratio": round(full_macs / macs, 4),
    }
    print(json.dumps(report, indent=2))
    return 0


def cmd_latency(args) -> int:
    use_threads(args.threads)  # the measurement and the latency table's key both use them
    evaluator = LatencyEvaluator(
        device=args.device,
        batch_size=args.batch,
        threads=args.threads,
        runtime=args.runtime,
        repeats=args.repeats,
    )
    model = model_from_args(args)
    cand = candidate_or_full(args, model)
    elastic = ElasticViT(copy.deepcopy(model), exit_types=cand.exit_types).eval()
    r = evaluator(elastic, cand)
    fp = r["device_fingerprint"]
    print(f"device      {fp.get('gpu', fp['cpu'])} ({fp['device']}, {fp['threads']} threads)")
    print(f"runtime     {r['runtime']}, batch {r['batch_size']}")
    print(
        f"candidate   {r['latency_ms']:.2f} ms (IQR {r['latency_iqr_ms']:.2f}, "
        f"n={r['latency_count']}){'  FLAGGED: spread stayed wide' if r['latency_flagged'] else ''}"
    )
    print(f"full model  {r['reference_ms']:.2f} ms, measured interleaved")
    print(f"speedup     {r['speedup']:.2f}x")
    if args.predict:
        space = JointSpace.load(args.space) if args.space else JointSpace.default(elastic)
        pred = LatencyPredictor.cached(
            elastic, space.bind(elastic), str(args.device), args.batch, cache_dir=args.tables
        )
        print(
            f"predicted   {pred.predict(cand):.2f} ms (table states +-{pred.error:.1%} for 90% "
            f"of candidates; stored under {args.tables})"
        )
    return 0
