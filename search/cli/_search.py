"""The ``search`` and ``studies`` commands."""

from __future__ import annotations

import sys
from pathlib import Path

from vitpareto.errors import VitParetoError
from vitpareto.files import check_parent
from vitpareto.search.cli._common import storage_arg
from vitpareto.search.cli._trained import check_trained_args, ranked_supernet, trained_args
from vitpareto.search.explore import (
    DIRECTIONS,
    FRONT_ROUNDS,
    NEAR,
    RUNTIMES,
    SAMPLERS,
    SearchConfig,
    check_study_name,
    make_backend,
    needed,
    rescore_front,
    search,
    study_names,
)
from vitpareto.search.outputs import format_front
from vitpareto.search.supernet import load_supernet


def add_parsers(sub) -> None:
    search_parser(sub)
    st = sub.add_parser("studies", help="list the studies of a results database")
    storage_arg(st)
    st.set_defaults(handler=cmd_studies)


def search_parser(sub) -> None:
    """`vitpareto search`: its own options, then each group's."""
    s = sub.add_parser(
        "search",
        help="search a supernet's space for the Pareto front of accuracy and latency",
        description="Multi-objective search (Optuna) over the space of a supernet from "
        "`vitpareto train`: each trial cuts a candidate out of the shared weights, scores its "
        "accuracy on the validation set, measures its latency on --device and counts its MACs "
        "and parameters. Every trial is stored in the results database; running the same "
        "command again resumes the study until --trials trials are complete.",
        epilog="examples: vitpareto search --supernet results/digits.pt --study digits --trials "
        "40; a model you trained: vitpareto search --model test_vit --img-size 32 --dataset "
        "digits --checkpoint mine.pth --num-classes 10 --importance taylor --study mine "
        "--trials 40 --finetune-front 200",
    )
    s.add_argument(
        "--supernet", type=Path, help="checkpoint from `vitpareto train` (or --model, below)"
    )
    storage_arg(s)
    s.add_argument("--study", required=True, help="study name (one per search)")
    s.add_argument("--trials", type=int, default=40, help="completed trials to reach (default: 40)")
    goal_args(s)
    measure_args(s)
    front_args(s)
    ray_args(s)
    trained_args(s)
    s.set_defaults(handler=cmd_search)


def goal_args(s) -> None:
    """What the search optimises: objectives, sampler, constraints and seed."""
    s.add_argument(
        "--objectives",
        default="accuracy,latency_ms",
        help=f"comma-separated, from {', '.join(DIRECTIONS)} (default: accuracy,latency_ms)",
    )
    s.add_argument(
        "--sampler",
        default="gp",
        choices=SAMPLERS,
        help="gp: Gaussian processes (Optuna's, expected hypervolume improvement); predictor: "
        "regressors fitted on the trials so far propose each batch; tpe; nsga2; random; grid. "
        "gp, tpe, predictor and nsga2 start a new study (without --jobs) from a design of ten "
        "(the cheapest and the largest candidate, eight between, spread over MACs), which "
        "passed random search's 200-trial hypervolume within 10 trials on the Fashion-MNIST space of "
        "benchmarks/RESULTS.md. Default gp: the best front on deit_small shapes; about 0.7 s "
        "per proposal (tpe 0.01 s): for thousands of cheap trials, tpe",
    )
    s.add_argument("--max-latency-ms", type=float, help="constraint: latency at most this")
    s.add_argument("--min-accuracy", type=float, help="constraint: accuracy at least this")
    s.add_argument("--max-macs", type=float, help="constraint: MACs per image at most this")
    s.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")
    s.add_argument(
        "--population", type=int, default=10, help="NSGA-II generation size (default: 10)"
    )


def measure_args(s) -> None:
    """Where and how each trial is measured."""
    s.add_argument(
        "--device",
        default="cpu",
        help="the latency target: the device latency is measured and fingerprinted on (cpu, "
        "cuda, cuda:N); with --target, that device on the target nodes (default: cpu)",
    )
    s.add_argument(
        "--accuracy-device",
        default="cpu",
        help="where each trial scores accuracy (default: cpu; on Ray, the trial's GPU when "
        "--gpus-per-trial > 0)",
    )
    s.add_argument("--batch", type=int, default=1, help="images per timed forward (default: 1)")
    s.add_argument(
        "--runtime",
        default="eager",
        choices=RUNTIMES,
        help="what runs the deployed model, and so what latency is timed under: eager "
        "PyTorch (vitpareto.load), torch.compile, ONNX Runtime (the model.onnx export "
        "writes), and on CUDA, CUDA graphs or TensorRT (default: eager)",
    )
    s.add_argument(
        "--precision",
        default="fp32",
        metavar="LIST",
        help="the deployed artifact's arithmetic, searched as a knob: comma-separated among "
        "fp32, int8-dynamic (ONNX Runtime's int8 weights, activations quantized on the fly), "
        "int8-static (int8 activations too, calibrated on training images), bf16 and fp16 (the "
        "model's weights and activations); int8 runs under --runtime onnxruntime, bf16 and "
        "fp16 under the PyTorch runtimes where the device computes them natively (bf16: "
        "CUDA, or a CPU with AVX512-BF16 or AMX; fp16: CUDA); a candidate's accuracy is its "
        "artifact's (default: fp32)",
    )
    s.add_argument(
        "--latency",
        default="measured",
        choices=["measured", "predicted"],
        help="measure every trial's latency, or predict it from the latency table (built once "
        "per device, model, batch and space) and measure only the front's (default: measured)",
    )


def front_args(s) -> None:
    """The front's second stage, the worker processes and where fine-tuned weights go."""
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
        "--front-rounds",
        type=int,
        default=FRONT_ROUNDS,
        metavar="N",
        help=f"after the search, time each model on the front, and each within {NEAR * 100:.0f}%% "
        "of it, again for N rounds interleaved with the full model, into the study "
        "NAME/front, whose front is chosen on those figures: the search times each trial "
        "briefly, and the best of many brief timings is partly luck (default: "
        "%(default)s; 0: keep the search's timing)",
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


def ray_args(s) -> None:
    """The Ray cluster options."""
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
        default=None,
        metavar="N",
        help="CPUs each trial holds (default: 1)",
    )
    r.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
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
        default=None,
        metavar="SECONDS",
        help="wait this long for a node holding the target to join (default: 0, stop at once)",
    )


def _config(args) -> SearchConfig:
    """The search's settings from the command line, every number and name checked."""
    return SearchConfig(
        objectives=tuple(o.strip() for o in args.objectives.split(",") if o.strip()),
        sampler=args.sampler,
        population=args.population,
        seed=args.seed,
        device=args.device,
        accuracy_device=args.accuracy_device,
        latency_batch=args.batch,
        max_latency_ms=args.max_latency_ms,
        min_accuracy=args.min_accuracy,
        max_macs=args.max_macs,
        latency=args.latency,
        runtime=args.runtime,
        precision=args.precision,
    )


def _backend(args):
    """The backend the options name; Ray options given without --backend ray are refused."""
    ray = {
        "address": args.address,
        "target": args.target,
        "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": args.gpus_per_trial,
        "wait_for_target": args.wait_for_target,
    }
    given = {k: v for k, v in ray.items() if v is not None}
    if args.backend == "ray":
        return make_backend("ray", jobs=args.jobs, **given)
    return make_backend("local", jobs=args.jobs, **given)


def cmd_search(args) -> int:
    check_study_name(args.study)
    config = _config(args)
    if args.artifacts is not None:
        if args.artifacts.exists() and not args.artifacts.is_dir():
            raise VitParetoError(f"--artifacts {str(args.artifacts)!r} is not a directory")
        check_parent(args.artifacts / "x", "--artifacts")
    trained = check_trained_args(args)
    backend = _backend(args)
    net = ranked_supernet(args) if trained else load_supernet(args.supernet)
    progress = not args.no_progress
    study = search(net, args.storage, args.study, args.trials, config, backend, progress)
    print(format_front(study))
    if needed(config, args.finetune_front, args.front_rounds):
        front = rescore_front(
            net,
            args.storage,
            args.study,
            config,
            steps=args.finetune_front,
            artifacts=args.artifacts,
            progress=progress,
            lr=args.finetune_lr,
            backend=backend,
            rounds=args.front_rounds,
        )
        print()
        print(format_front(front))
    return 0


def cmd_studies(args) -> int:
    summaries = study_names(args.storage)
    if not summaries:
        print(f"no studies in {args.storage}", file=sys.stderr)
        return 0
    for s in summaries:
        attrs = s.user_attrs
        model = attrs.get("model")
        name = model.get("name", "?") if isinstance(model, dict) else "?"
        objectives = attrs.get("objectives")
        objectives = ",".join(map(str, objectives)) if isinstance(objectives, list) else "?"
        print(
            f"{s.study_name}\t{s.n_trials} trials\t{name}\t{attrs.get('dataset', '?')}\t{objectives}"
        )
    return 0
