"""The pieces of bench_headtohead: the cuts, the two searched paths, and the choice of a
searched model for a latency target."""

from __future__ import annotations

import dataclasses
import itertools
import sys
from pathlib import Path

import torch
from optuna.trial import TrialState

from vitpareto.evaluators import analytic_macs
from vitpareto.search import SearchConfig, load_supernet, search
from vitpareto.search.supernet import SupernetTrainer, TrainConfig
from vitpareto.spaces import Candidate


def trained_plain(model: dict, path: Path, epochs: int):
    """The model trained normally (``train --plain``), cached in ``path``."""
    if not path.exists():
        config = TrainConfig(epochs=epochs, batch_size=256, lr=2e-3, sandwich=False)
        trainer = SupernetTrainer.create(
            model["name"], "fashion-mnist", config, model_kwargs=model["kwargs"]
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        trainer.fit(path)
    net = load_supernet(path)
    if net.meta.get("epoch") != epochs:  # another recipe's model, or a run cut short
        sys.exit(
            f"{path} holds the model after {net.meta.get('epoch')} epochs, not {epochs}, and "
            "what is cached beside it was made from that one: give another --work "
            "(--model-path for bench_importance) or remove that folder"
        )
    return net


def calibrated(model: dict, path: Path, epochs: int, batches: int):
    """The model trained normally (``trained_plain``), its data at batch 256, and the
    first ``batches`` training batches in a seeded order: what the rankings read."""
    net = trained_plain(model, path, epochs)
    data = net.load_data(batch_size=256)
    data.train.generator.manual_seed(0)
    return net, data, [b for _, b in zip(range(batches), data.train, strict=False)]


def uniform_cut(spec, ratio: float, heads: int) -> Candidate:
    """The uniform cut with ``heads`` heads per block and the MLP width (a multiple of 8)
    that brings the MACs nearest ``ratio`` times fewer (Torch-Pruning can cut the same)."""
    target = analytic_macs(spec) / ratio
    widths = range(8, spec.mlp_hidden[0] + 1, 8)
    cuts = [Candidate.make(spec, heads=heads, mlp=m) for m in widths]
    return min(cuts, key=lambda c: abs(analytic_macs(spec, c) - target))


def token_cut(spec, ratio: float, mode: str) -> Candidate:
    """Tokens alone: the same keep ratio after two blocks, the pair of blocks and the ratio
    (a multiple of 0.05) that bring the MACs nearest ``ratio`` times fewer; ``mode`` is how
    those blocks reduce (the same tokens remain in either mode)."""
    target = analytic_macs(spec) / ratio
    options = []
    for blocks in itertools.combinations(range(spec.depth - 1), 2):
        for r in (k / 20 for k in range(1, 20)):
            c = Candidate.make(spec, keep={b: r for b in blocks}, token_mode=mode)
            options.append(c)
    return min(options, key=lambda c: abs(analytic_macs(spec, c) - target))


def _space_without_exits(trainer: SupernetTrainer) -> None:
    space = dataclasses.replace(
        trainer.space, exits=None, exit_threshold=None, fuse=None, token_mode=["prune", "merge"]
    )
    trainer.space = space.bind(trainer.elastic)


def one_shot(model: dict, weights: Path, path: Path, calibration_batches: int):
    """``search --model``: the trained weights ranked by taylor, no supernet training."""
    if not path.exists():
        trainer = SupernetTrainer.create(
            model["name"],
            "fashion-mnist",
            TrainConfig(epochs=1),
            model_kwargs={**model["kwargs"], "num_classes": 10},
            checkpoint=weights,
            importance="taylor",
            calibration_batches=calibration_batches,
        )
        _space_without_exits(trainer)
        trainer.save(path)
    return load_supernet(path)


def supernet(model: dict, weights: Path, path: Path, config: TrainConfig, calibration_batches: int):
    """The supernet path: the same ranked weights trained as a supernet (sandwich rule:
    the full model, the smallest and ``config.random_candidates`` random candidates per
    step, distilled from the full model)."""
    if not path.exists():
        trainer = SupernetTrainer.create(
            model["name"],
            "fashion-mnist",
            config,
            model_kwargs={**model["kwargs"], "num_classes": 10},
            checkpoint=weights,
            importance="taylor",
            calibration_batches=calibration_batches,
        )
        _space_without_exits(trainer)
        trainer.fit(path, progress=False)
    return load_supernet(path)


def searched(net, storage: str, study: str, trials: int, batch: int, max_batches: int):
    """A search of ``net`` timed under ONNX Runtime at ``batch``, scored on the first
    ``max_batches`` validation batches (resumed when stored)."""
    config = SearchConfig(
        runtime="onnxruntime", latency_batch=batch, latency_repeats=10, max_batches=max_batches
    )
    return search(net, storage, study, trials, config, progress=False)


def pick(study, speedup: float, count: int) -> list[tuple[Candidate, dict]]:
    """The ``count`` searched trials with the best validation accuracy among those at
    least ``speedup`` times faster than the full model, as the search measured them
    (several, because a search's accuracy is on a few batches and before fine-tuning)."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("speedup", 0) >= speedup
    ]
    done.sort(key=lambda t: -t.user_attrs["accuracy"])
    return [(Candidate.from_dict(t.user_attrs["candidate"]), t.user_attrs) for t in done[:count]]


def accuracy(model, loader) -> float:
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x).argmax(-1) == y).sum()) for x, y in loader)
    return right / len(loader.dataset)
