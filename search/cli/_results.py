"""The ``query``, ``export`` and ``report`` commands: reading what a search left behind."""

from __future__ import annotations

import sys
from pathlib import Path

from vitpareto.bounds import use_threads
from vitpareto.errors import VitParetoError
from vitpareto.evaluators import resolve_device
from vitpareto.files import check_parent
from vitpareto.search.cli._common import storage_arg
from vitpareto.search.explore import (
    RUNTIMES,
    describe_reference,
    front_hypervolume_of,
    load_study,
)
from vitpareto.search.outputs import (
    MAIN_COLUMNS,
    bench_dirs,
    export_trials,
    format_bench,
    names,
    parse_sort,
    parse_where,
    pick_trials,
    select,
    trials_frame,
    write_report,
)
from vitpareto.search.supernet import load_supernet


def add_parsers(sub) -> None:
    q = sub.add_parser(
        "query",
        help="trials of a study as a table, CSV or JSON; the Pareto front; filters",
        description="Print the completed trials of a study: objective values, metrics, knobs "
        "and the candidate. --where takes a filter over the columns, e.g. "
        "'latency_ms < 5 and accuracy > 0.9' or 'patch_size in [4, 8] and not pareto': "
        "column names, numbers, 'strings', True/False, comparisons (chained too), and/or/not, "
        "in [list] and arithmetic (+ - * / // % **); nothing else, and it is never run as "
        "Python. Knob columns are parameter names with '.' as '_' (heads_b3). In Python: "
        "vitpareto.search.load_trials(storage, study).",
    )
    storage_arg(q)
    q.add_argument("--study", required=True, help="study name")
    q.add_argument("--pareto", action="store_true", help="only the non-dominated feasible trials")
    q.add_argument(
        "--where", help="filter over the columns, e.g. 'latency_ms < 5 and accuracy > 0.9'"
    )
    q.add_argument(
        "--sort", help="columns to sort by, comma-separated; -col for descending (--sort=-accuracy)"
    )
    q.add_argument("--limit", type=int, help="at most this many rows")
    q.add_argument("--format", default="table", choices=["table", "csv", "json"])
    q.add_argument("--columns", help="comma-separated columns to show (default: the main ones)")

    e = sub.add_parser(
        "export",
        help="export the Pareto front (or chosen trials) as standalone models",
        description="Write one directory per model under --out (trial_N): safetensors "
        "weights, config.json, candidate.json, metrics.json, a model card (README.md), and "
        "model.pt2 (torch.export) and model.onnx, which load without vitpareto. Reload with "
        "vitpareto.load(dir). Trials scored on the shared weights need the supernet "
        "(--supernet, default: the path the search recorded); fine-tuned ones (study "
        "NAME/front) carry their own weights.",
        epilog="example: vitpareto export --study digits --pareto --out results/digits-front",
    )
    q.set_defaults(handler=cmd_query)

    storage_arg(e)
    e.add_argument("--study", required=True, help="study name (NAME/front for fine-tuned models)")
    e.add_argument("--pareto", action="store_true", help="export every trial on the front")
    e.add_argument(
        "--trial", type=int, action="append", metavar="N", help="export trial N (repeatable)"
    )
    e.add_argument("--out", type=Path, required=True, help="directory to write the models into")
    e.add_argument("--supernet", type=Path, help="supernet checkpoint (default: the searched one)")
    e.add_argument("--force", action="store_true", help="replace model directories that exist")
    e.add_argument(
        "--artifacts", type=Path, help="artifact store of fine-tuned weights, if it was moved"
    )
    e.add_argument(
        "--no-portable", action="store_true", help="skip model.pt2 and model.onnx (faster)"
    )
    e.add_argument(
        "--no-measure",
        action="store_true",
        help="skip timing each model as it ships on this machine (deployed_latency_ms)",
    )

    e.set_defaults(handler=cmd_export)

    r = sub.add_parser(
        "report",
        help="an HTML report and PNG plots of a study",
        description="Write report.html (interactive Pareto plot: every trial and the front, "
        "details on hover; the hypervolume; the front as a table), front.png and knobs.png "
        "(each knob against each objective) into --out.",
    )
    storage_arg(r)
    r.add_argument("--study", required=True, help="study name")
    r.add_argument("--out", type=Path, required=True, help="directory for the report files")
    r.set_defaults(handler=cmd_report)

    bench_parser(sub)


def bench_parser(sub) -> None:
    """`vitpareto bench`: exported models timed again where they are."""
    b = sub.add_parser(
        "bench",
        help="time exported models as they ship, on this machine, beside the full model",
        description="Time each exported model directory as it ships for a runtime (its "
        "model.onnx under ONNX Runtime; the exit policy where it has exits), interleaved with "
        "the full model built from the same recipe, and print them beside the latency the "
        "search measured. Copy the directories to the target device and run it there.",
        epilog="example: vitpareto bench results/models/trial_* --runtime onnxruntime",
    )
    b.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="exported model directories")
    b.add_argument("--runtime", choices=RUNTIMES, help="(default: the one each was searched under)")
    b.add_argument("--batch", type=int, help="images per forward (default: the searched batch)")
    b.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    b.add_argument("--repeats", type=int, default=20, help="timed rounds (default: 20)")
    b.add_argument(
        "--dataset",
        help="dataset spec whose validation images time an exit policy as deployed (without "
        "one, its latency is derived from the exit shares the search measured)",
    )
    b.add_argument(
        "--trust",
        action="store_true",
        help="time directories without a manifest.json, or whose files changed since export, "
        "unchecked (by default every file is checked against the manifest first)",
    )
    b.set_defaults(handler=cmd_bench)


def cmd_query(args) -> int:
    # the filter's grammar is checked before the database is opened
    if args.where is not None:
        parse_where(args.where)
    if args.sort is not None:
        parse_sort(args.sort)
    if args.columns is not None and not args.columns.replace(",", "").strip():
        raise VitParetoError(
            "--columns names no column; give them comma-separated, e.g. --columns "
            "trial,accuracy,latency_ms"
        )
    study = load_study(args.storage, args.study)
    df = full = trials_frame(study)
    if df.empty:
        print(f"study {args.study!r} has no completed trials", file=sys.stderr)
        if args.format == "json":
            print("[]")
        return 0
    if args.pareto:
        df = df[df["pareto"]]
    df = select(df, args.where, args.sort, args.limit)
    if args.columns:
        cols = [c.strip() for c in args.columns.split(",") if c.strip()]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise VitParetoError(f"--columns: no column {names(missing)}")
    elif args.format == "table":
        cols = [c for c in MAIN_COLUMNS if c in df.columns]
    else:
        cols = list(df.columns)
    df = df[cols]
    if args.format == "csv":
        print(df.to_csv(index=False), end="")
    elif args.format == "json":
        print(df.to_json(orient="records", indent=1))
    else:
        if df.empty:  # not pandas' "Empty DataFrame": say so, then the front as always
            print(f"no trial of {len(full)} matches", file=sys.stderr)
        else:
            print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        hv, ref = front_hypervolume_of(study, full)
        print(
            f"front: {int(full['pareto'].sum())} of {len(full)} trials, hypervolume {hv:.4f} "
            f"({describe_reference(ref)})"
        )
    return 0


def cmd_export(args) -> int:
    study = load_study(args.storage, args.study)
    trials = pick_trials(study, args.trial, args.pareto)
    supernet = None
    if any("weights_artifact" not in t.user_attrs for t in trials):
        path = args.supernet or study.user_attrs.get("supernet_path")
        if not path:
            raise VitParetoError("pass --supernet CKPT (the study did not record its path)")
        supernet = load_supernet(path)
    paths = export_trials(
        study,
        trials,
        args.out,
        supernet,
        force=args.force,
        portable=not args.no_portable,
        artifacts=args.artifacts,
        measure=not args.no_measure,
    )
    for t, p in zip(trials, paths, strict=True):
        acc = t.user_attrs.get("accuracy")
        print(f"trial {t.number} (accuracy {acc:.4f}) -> {p}")
    return 0


def cmd_report(args) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise VitParetoError(f"--out {str(args.out)!r} is a file, not a directory")
    check_parent(args.out / "report.html", "--out")
    study = load_study(args.storage, args.study)
    paths = write_report(study, args.out)
    print(f"report: {paths['html']}\nplots:  {paths['front']}, {paths['knobs']}")
    return 0


def cmd_bench(args) -> int:
    resolve_device(args.device)  # a GPU that is not here: refused as `search` refuses it
    use_threads(args.threads)
    rows = bench_dirs(
        args.dirs, args.runtime, args.batch, args.device, args.dataset, args.repeats, args.trust
    )
    print(format_bench(rows))
    return 0
