"""The ``search`` and ``studies`` commands."""

from __future__ import annotations

import sys
from pathlib import Path

from vitpareto.search._expr import parse_sort, parse_where
from vitpareto.search._study import DEFAULT_STORAGE, DIRECTIONS, SAMPLERS
from vitpareto.spaces import VitParetoError


def storage_arg(p, help: str = f"Optuna storage URL ({DEFAULT_STORAGE})") -> None:
    """The results database option of every command that reads or writes one."""
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=help)


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
    storage_arg(s)
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
    s.add_argument(
        "--population", type=int, default=10, help="NSGA-II generation size (default: 10)"
    )
    s.add_argument(
        "--latency",
        default="measured",
        choices=["measured", "predicted"],
        help="measure every trial's latency, or predict it from the latency table (built once "
        "per device, model, batch and space) and measure only the front's (default: measured)",
    )
    s.add_argument(
        "--finetune-front",
        type=int,
        default=0,
        metavar="STEPS",
        help="after the search, fine-tune each front model this many steps and re-score it "
        "into the study NAME/front (default: 0, off)",
    )
    s.add_argument(
        "--finetune-lr",
        type=float,
        help="peak learning rate of --finetune-front (default: 5e-4; 1e-4 keeps the shared "
        "weights of a well-trained supernet closer)",
    )
    s.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes on this machine; latency is still measured one model at a "
        "time (default: 1)",
    )
    s.add_argument(
        "--artifacts", type=Path, help="where fine-tuned weights go (default: beside the database)"
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = s.add_argument_group(
        "Ray cluster",
        "--backend ray runs the trials on a Ray cluster through Ray Tune's OptunaSearch, "
        "into the same study and database (use PostgreSQL when several machines write it)",
    )
    r.add_argument("--backend", default="local", choices=["local", "ray"], help="(default: local)")
    r.add_argument(
        "--address",
        help="Ray cluster to join: auto (the one started on this machine) or HOST:PORT "
        "(default: start Ray on this machine)",
    )
    r.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1,
        metavar="N",
        help="CPUs each trial holds (default: 1)",
    )
    r.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0,
        metavar="N",
        help="GPUs each trial holds (default: 0)",
    )
    r.add_argument(
        "--target",
        metavar="NAME",
        help="measure latency only on nodes started with --resources '{\"target:NAME\": 1}', "
        "one model at a time each (default: where each trial runs)",
    )
    r.add_argument(
        "--wait-for-target",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait this long for a node holding the target to join (default: 0, stop at once)",
    )

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

    st = sub.add_parser("studies", help="list the studies of a results database")
    storage_arg(st)


def cmd_search(args) -> int:
    from vitpareto.search._checkpoint import load_supernet
    from vitpareto.search._front import needed, rescore_front
    from vitpareto.search._study import SearchConfig, search

    config = SearchConfig(
        objectives=tuple(o.strip() for o in args.objectives.split(",") if o.strip()),
        sampler=args.sampler,
        population=args.population,
        seed=args.seed,
        device=args.device,
        latency_batch=args.batch,
        max_latency_ms=args.max_latency_ms,
        min_accuracy=args.min_accuracy,
        max_macs=args.max_macs,
        latency=args.latency,
    )
    from vitpareto.evaluators import resolve_device

    if args.finetune_front < 0:
        raise VitParetoError(f"--finetune-front must be 0 or more steps, got {args.finetune_front}")
    if args.batch < 1:
        raise VitParetoError(f"--batch must be at least 1, got {args.batch}")
    resolve_device(args.device)  # an unknown or absent device is refused before any work
    if args.backend == "local" and (args.target or args.address):
        raise VitParetoError("--target and --address need --backend ray")
    if args.backend == "ray" and args.jobs != 1:
        raise VitParetoError("--jobs is for the local backend; Ray runs trials as its CPUs allow")
    net = load_supernet(args.supernet)
    progress = not args.no_progress
    if args.backend == "ray":
        from vitpareto.search._ray import ray_search

        study = ray_search(
            net,
            args.storage,
            args.study,
            args.trials,
            config,
            address=args.address,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            target=args.target,
            wait_target=args.wait_for_target,
            progress=progress,
        )
    else:
        study = search(
            net, args.storage, args.study, args.trials, config, progress=progress, jobs=args.jobs
        )
    print_front(study)
    if needed(config, args.finetune_front):
        scorer = None
        if args.backend == "ray":
            from functools import partial

            from vitpareto.search._ray import RayScorer

            scorer = partial(
                RayScorer,
                target=args.target,
                cpus=args.cpus_per_trial,
                gpus=args.gpus_per_trial,
                address=args.address,
            )
        front = rescore_front(
            net,
            args.storage,
            args.study,
            config,
            steps=args.finetune_front,
            artifacts=args.artifacts,
            progress=progress,
            lr=args.finetune_lr,
            scorer=scorer,
        )
        print()
        print_front(front)
    return 0


def print_front(study, file=None) -> None:
    """The front of a study as a table, with its hypervolume and reference point."""
    from vitpareto.search._pareto import describe_reference
    from vitpareto.search._query import front_hypervolume_of, trials_frame

    df = trials_frame(study)
    n = 0 if df.empty else len(df)
    print(f"study {study.study_name!r}: {n} completed trials", file=file)
    if df.empty:
        return
    front = df[df["pareto"]].sort_values("accuracy" if "accuracy" in df else "trial")
    hv, ref = front_hypervolume_of(study, df)
    cols = [c for c in MAIN_COLUMNS if c in front.columns and c != "pareto"]
    print(
        f"front: {len(front)} trials, hypervolume {hv:.4f} ({describe_reference(ref)})", file=file
    )
    print(front[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"), file=file)


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
    "source_trial",
    "accuracy",
    "latency_ms",
    "speedup",
    "macs",
    "params",
    "fidelity",
    "pareto",
]


def cmd_query(args) -> int:
    from vitpareto.search._pareto import describe_reference
    from vitpareto.search._query import front_hypervolume_of, load_study, select, trials_frame

    # the filter's grammar is checked before the database is opened
    if args.where is not None:
        parse_where(args.where)
    if args.sort is not None:
        parse_sort(args.sort)
    if args.limit is not None and args.limit < 1:
        raise VitParetoError(f"--limit must be at least 1, got {args.limit}")
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
        hv, ref = front_hypervolume_of(study, full)
        print(
            f"front: {int(full['pareto'].sum())} of {len(full)} trials, hypervolume {hv:.4f} "
            f"({describe_reference(ref)})"
        )
    return 0


def cmd_export(args) -> int:
    from vitpareto.search._checkpoint import load_supernet
    from vitpareto.search._export_trials import export_trials, pick_trials
    from vitpareto.search._query import load_study

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
    )
    for t, p in zip(trials, paths, strict=True):
        acc = t.user_attrs.get("accuracy")
        print(f"trial {t.number} (accuracy {acc:.4f}) -> {p}")
    return 0


def cmd_report(args) -> int:
    from vitpareto.search._query import load_study
    from vitpareto.search._report import write_report

    if args.out.exists() and not args.out.is_dir():
        raise VitParetoError(f"--out {str(args.out)!r} is a file, not a directory")
    study = load_study(args.storage, args.study)
    paths = write_report(study, args.out)
    print(f"report: {paths['html']}\nplots:  {paths['front']}, {paths['knobs']}")
    return 0
