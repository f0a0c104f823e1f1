"""The ``search`` and ``studies`` commands."""

from __future__ import annotations

import sys
from pathlib import Path

from vitpareto.search._study import DEFAULT_STORAGE, DIRECTIONS, SAMPLERS
from vitpareto.spaces import VitParetoError


def add_parsers(sub) -> None:
    s = sub.add_parser(
        "search",
        help="search a supernet's space for the Pareto front of accuracy and latency",
        description="Multi-objective search (Optuna) over the space of a supernet from "
        "`vitpareto train`: each trial cuts a candidate out of the shared weights, scores its "
        "accuracy on the validation set, measures its latency on --device and counts its MACs "
        "and parameters. Every trial is stored in the results database; running the same "
        "command again resumes the study until --trials trials are complete.",
        epilog="example: vitpareto search --supernet results/digits.pt --study digits --trials 40",
    )
    s.add_argument("--supernet", type=Path, required=True, help="checkpoint from `vitpareto train`")
    s.add_argument(
        "--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL ({DEFAULT_STORAGE})"
    )
    s.add_argument("--study", required=True, help="study name (one per search)")
    s.add_argument("--trials", type=int, default=40, help="completed trials to reach (default: 40)")
    s.add_argument(
        "--objectives",
        default="accuracy,latency_ms",
        help=f"comma-separated, from {', '.join(DIRECTIONS)} (default: accuracy,latency_ms)",
    )
    s.add_argument("--sampler", default="nsga2", choices=SAMPLERS, help="(default: nsga2)")
    s.add_argument("--device", default="cpu", help="target device for latency: cpu, cuda, cuda:N")
    s.add_argument("--batch", type=int, default=1, help="images per timed forward (default: 1)")
    s.add_argument("--max-latency-ms", type=float, help="constraint: latency at most this")
    s.add_argument("--min-accuracy", type=float, help="constraint: accuracy at least this")
    s.add_argument("--max-macs", type=float, help="constraint: MACs per image at most this")
    s.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")

    q = sub.add_parser(
        "query",
        help="trials of a study as a table, CSV or JSON; the Pareto front; filters",
        description="Print the completed trials of a study: objective values, metrics, knobs "
        "and the candidate. --where takes a pandas expression over the columns "
        "(e.g. 'latency_ms < 5 and accuracy > 0.9'); knob columns are parameter names with "
        "'.' as '_' (heads_b3). In Python: vitpareto.search.load_trials(storage, study).",
    )
    q.add_argument(
        "--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL ({DEFAULT_STORAGE})"
    )
    q.add_argument("--study", required=True, help="study name")
    q.add_argument("--pareto", action="store_true", help="only the non-dominated feasible trials")
    q.add_argument("--where", help="filter, a pandas expression over the columns")
    q.add_argument(
        "--sort", help="columns to sort by, comma-separated; -col for descending (--sort=-accuracy)"
    )
    q.add_argument("--limit", type=int, help="at most this many rows")
    q.add_argument("--format", default="table", choices=["table", "csv", "json"])
    q.add_argument("--columns", help="comma-separated columns to show (default: the main ones)")

    st = sub.add_parser("studies", help="list the studies of a results database")
    st.add_argument(
        "--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL ({DEFAULT_STORAGE})"
    )


def cmd_search(args) -> int:
    from vitpareto.search._checkpoint import load_supernet
    from vitpareto.search._study import SearchConfig, search

    config = SearchConfig(
        objectives=tuple(o.strip() for o in args.objectives.split(",") if o.strip()),
        sampler=args.sampler,
        seed=args.seed,
        device=args.device,
        latency_batch=args.batch,
        max_latency_ms=args.max_latency_ms,
        min_accuracy=args.min_accuracy,
        max_macs=args.max_macs,
    )
    net = load_supernet(args.supernet)
    study = search(net, args.storage, args.study, args.trials, config)
    front = study.best_trials
    print(
        f"study {args.study!r} in {args.storage}: {len(study.trials)} trials, {len(front)} on the front"
    )
    for t in sorted(front, key=lambda t: t.values[0]):
        vals = ", ".join(f"{o} {v:.4g}" for o, v in zip(config.objectives, t.values, strict=True))
        print(f"  trial {t.number}: {vals}")
    return 0


def cmd_studies(args) -> int:
    import optuna

    from vitpareto.search._study import open_storage

    storage = open_storage(args.storage, create=False)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    if not summaries:
        print(f"no studies in {args.storage}", file=sys.stderr)
        return 0
    for s in summaries:
        attrs = s.user_attrs
        print(
            f"{s.study_name}\t{s.n_trials} trials\t{attrs.get('model', {}).get('name', '?')}"
            f"\t{attrs.get('dataset', '?')}\t{','.join(attrs.get('objectives', []))}"
        )
    return 0


MAIN_COLUMNS = [
    "trial",
    "accuracy",
    "latency_ms",
    "speedup",
    "macs",
    "params",
    "fidelity",
    "pareto",
]


def cmd_query(args) -> int:
    from vitpareto.search._query import load_trials, select

    df = load_trials(args.storage, args.study)
    if df.empty:
        print(f"study {args.study!r} has no completed trials", file=sys.stderr)
        return 0
    if args.pareto:
        df = df[df["pareto"]]
    df = select(df, args.where, args.sort, args.limit)
    if args.columns:
        cols = [c.strip() for c in args.columns.split(",") if c.strip()]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise VitParetoError(f"--columns: no column {', '.join(missing)}")
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
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0
