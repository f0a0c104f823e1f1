"""``vitpareto demo``: the whole pipeline on digits, on a laptop, in minutes.

Trains a small supernet (timm ``test_vit`` at 32 px) on scikit-learn's bundled digits,
searches it with latency measured on this machine, fine-tunes and re-scores the front,
prints it, writes the report and exports the front's models, all under one directory.
Each step reuses what a previous run left there, so running it again is quick.
"""

from __future__ import annotations

import time
from pathlib import Path

from vitpareto.bounds import use_threads
from vitpareto.errors import VitParetoError
from vitpareto.files import check_parent
from vitpareto.search.explore import FRONT_ROUNDS, SearchConfig, needed, rescore_front, search
from vitpareto.search.outputs import export_trials, format_front, pick_trials, write_report
from vitpareto.search.supernet import SupernetTrainer, TrainConfig, load_supernet

MODEL = dict(model="test_vit", model_kwargs={"img_size": 32, "patch_size": 8})


def run_demo(
    out: str | Path = "results/demo",
    trials: int = 48,
    epochs: int = 10,
    finetune_steps: int = 60,
    threads: int | None = None,
) -> dict[str, Path]:
    """Run the pipeline into ``out``; return where each result is."""
    use_threads(threads)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VitParetoError(f"--out {str(out)!r} is a file, not a directory")
    check_parent(out / "x", "--out")
    ckpt, db = out / "supernet.pt", out / "results.db"
    storage = f"sqlite:///{db}"
    start = time.perf_counter()

    def step(text: str) -> None:
        print(f"\n[{time.perf_counter() - start:5.0f} s] {text}", flush=True)

    step(f"1/5 supernet: {MODEL['model']} on digits, {epochs} epochs -> {ckpt}")
    if ckpt.exists():
        trainer = SupernetTrainer.resume(ckpt)
    else:
        config = TrainConfig(epochs=epochs, batch_size=16)
        trainer = SupernetTrainer.create(dataset="digits", config=config, **MODEL)
    if trainer.epoch < trainer.config.epochs:
        last = trainer.fit(ckpt)
    else:
        last = trainer.history[-1] if trainer.history else {}
    print(
        f"full model accuracy {last.get('full_accuracy', float('nan')):.3f}, smallest candidate "
        f"{last.get('smallest_accuracy', float('nan')):.3f} (validation set, shared weights)"
    )

    supernet = load_supernet(ckpt)
    config = SearchConfig(latency_batch=64)
    step(f"2/5 search: {trials} trials, {config.sampler} sampler, latency measured here -> {db}")
    study = search(supernet, storage, "demo", trials, config)
    print(format_front(study))

    step(
        f"3/5 front: each model fine-tuned {finetune_steps} steps and timed again "
        f"({FRONT_ROUNDS} rounds) -> study demo/front"
    )
    front = study  # with nothing to re-score, the search's own front
    if needed(config, finetune_steps, FRONT_ROUNDS):
        # a low rate: these weights are already good (5e-4 cost 0.3-1.4 points here)
        front = rescore_front(
            supernet, storage, "demo", config, steps=finetune_steps, lr=1e-4, rounds=FRONT_ROUNDS
        )
        print(format_front(front))

    step(f"4/5 report -> {out / 'report'}")
    paths = write_report(study, out / "report", rescored=front if front is not study else None)

    step(f"5/5 export of the fine-tuned front -> {out / 'models'}")
    exported = export_trials(
        front, pick_trials(front, None, True), out / "models", supernet=supernet, force=True
    )

    step("done. Where everything is:")
    where = {
        "supernet": ckpt,
        "results database": db,
        "report": paths["html"],
        "plots": paths["front"].parent,
        "models": out / "models",
    }
    for k, v in where.items():
        print(f"  {k:17} {v}")
    print(
        f"  {len(exported)} models, each with model.safetensors, model.pt2, model.onnx and a "
        "model card (README.md)\n\nnext: vitpareto query --storage "
        f'{storage} --study demo/front --pareto\n      python -c "import vitpareto; '
        f"print(vitpareto.load('{exported[0]}'))\""
    )
    return where
