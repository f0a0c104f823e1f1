"""Supernet training: one set of weights that serves every candidate of a space.

Each step follows the sandwich rule (BigNAS, Once-for-All, AutoFormer): the full model
learns from the labels, and the space's smallest candidate plus ``random_candidates``
random ones learn from the full model's outputs (in-place distillation), each with its
own patch size, token keep ratios, heads and channels drawn from the space. Every
early-exit head is distilled from the full model's output too (AttentionLite distils
while it prunes). Students and exits mix distillation with the labels (``distill``): pure
in-place distillation from a randomly initialised teacher collapses to its near-uniform
output, a fixed point that training from scratch never leaves. With an external teacher
(a larger trained model, ``load_teacher``), everything distils from its outputs instead,
computed once per batch.

Prefix slicing needs the most important heads and channels first. Weights that were
trained elsewhere (``--pretrained``, ``--checkpoint``) are ranked once, before training,
by weight magnitude or by a data-driven criterion on training batches (``--importance``); a randomly initialised model needs no ranking, because the sandwich rule
itself teaches the prefixes to carry the most (re-ranking during training would undo
what the small candidates learned).
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vitpareto.errors import VitParetoError
from vitpareto.evaluators import AccuracyEvaluator, Data, load_data, resolve_device
from vitpareto.search.supernet._checkpoint import base_model, load_supernet, save_checkpoint
from vitpareto.search.supernet._recipe import Recipe, adamw, lr_factor, mixed_loss
from vitpareto.search.supernet._teacher import check_teacher, reload_teacher
from vitpareto.spaces import (
    CALIBRATION_BATCHES,
    CRITERIA,
    Candidate,
    ElasticViT,
    JointSpace,
    check_recipe,
    describe,
    needs_data,
)


@dataclass
class TrainConfig(Recipe):
    """How a supernet is trained (stored in its checkpoint)."""

    epochs: int = 10
    warmup_epochs: float = 1.0
    random_candidates: int = 2
    sandwich: bool = True  # False trains the full model alone (the normal-training baseline)

    def _checks(self) -> dict[str, bool]:
        return {
            "epochs": self.epochs >= 1,
            **super()._checks(),
            "warmup_epochs": 0 <= self.warmup_epochs <= self.epochs,
            "random_candidates": self.random_candidates >= 0,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def passes(self) -> int:
        """Forward/backward passes per step: the compute of one step in full-model units
        (students are smaller, so this overstates the sandwich rule's cost)."""
        return 2 + self.random_candidates if self.sandwich else 1


class SupernetTrainer:
    """Trains an ``ElasticViT`` over a ``JointSpace`` on a dataset; see the module docstring.

    Build one with ``SupernetTrainer.create`` (a timm model name and a dataset spec) or
    ``SupernetTrainer.resume`` (a checkpoint of an unfinished run), then call ``fit``.
    """

    def __init__(
        self,
        elastic: ElasticViT,
        space: JointSpace,
        data: Data,
        config: TrainConfig,
        model_name: str,
        model_kwargs: dict[str, Any],
        device: str = "cpu",
        init: str = "random",
    ):
        self.device = resolve_device(device)
        self.elastic = elastic.to(self.device)
        self.space = space.bind(elastic)
        self.data, self.config, self.init = data, config, init
        self.model_name, self.model_kwargs = model_name, dict(model_kwargs)
        self.amp = self.device.type == "cuda"
        c = config
        self.optimizer = adamw(self.elastic, c.lr, c.weight_decay)
        self.steps_per_epoch = len(data.train)
        total = c.epochs * self.steps_per_epoch
        warmup = max(1, int(c.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, total, warmup, c.lr, c.min_lr)
        )
        self.step, self.epoch, self.history = 0, 0, []
        self.exit_training: dict[str, Any] | None = None  # exits added to a trained model
        self.source: dict[str, Any] | None = None  # what a ranked trained model came from
        self.importance = {"criterion": "identity" if init == "random" else "magnitude"}
        self.holdout = True  # validation carved from the training split (see load_data)
        self.external: torch.nn.Module | None = None  # an external teacher, else the full model
        self.teacher_record: dict[str, Any] | None = None
        self.seconds = 0.0
        self.sha256: str | None = None
        # the plain baseline trains the full model alone: exit heads distilled from it would
        # send their gradients into the backbone, which normal training does not
        exits = elastic.exit_blocks if config.sandwich else []
        self.teacher = Candidate.full(elastic.spec).replace(exits=tuple(exits))
        self.smallest = self.space.smallest()

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        model: str,
        dataset: str,
        config: TrainConfig | None = None,
        space: JointSpace | str | Path | None = None,
        model_kwargs: dict[str, Any] | None = None,
        pretrained: bool = False,
        checkpoint: str | Path | None = None,
        device: str = "cpu",
        workers: int = 0,
        importance: str | None = None,
        calibration_batches: int = CALIBRATION_BATCHES,
        teacher: tuple[torch.nn.Module, dict[str, Any]] | None = None,
    ) -> SupernetTrainer:
        """A trainer for the timm model ``model`` on ``dataset`` (see ``load_data``).

        The classifier is replaced when the dataset has another number of classes than the
        model (so pretrained or ``checkpoint`` weights for another label set can be used).
        Trained weights are ranked by ``importance`` (default magnitude; the data-driven
        criteria read ``calibration_batches`` training batches); random ones keep their order.
        ``teacher``: an external teacher from ``load_teacher`` that every candidate, the full
        model and the exits distil from, instead of the full model.
        """
        config = config or TrainConfig()
        trained = pretrained or checkpoint is not None
        if importance is not None and not trained:
            raise VitParetoError(
                f"importance {importance!r} ranks trained weights; random ones need no "
                "ranking: add --pretrained or --checkpoint, or drop --importance"
            )
        importance = importance or ("magnitude" if trained else "identity")
        if importance not in CRITERIA:
            raise VitParetoError(
                f"unknown importance criterion {importance!r}; choose one of {', '.join(CRITERIA)}"
            )
        kwargs = check_recipe({"name": model, "kwargs": dict(model_kwargs or {})}, "the model")[1]
        torch.manual_seed(config.seed)
        vit = base_model(model, pretrained, checkpoint, kwargs)
        data = load_data(
            dataset,
            describe(vit).img_size,
            batch_size=config.batch_size,
            seed=config.seed,
            num_workers=workers,
            holdout=True,
            channels=describe(vit).in_chans,
        )
        if teacher is not None:
            check_teacher(*teacher[:1], data.num_classes, describe(vit).image_shape, teacher[1])
        if vit.num_classes != data.num_classes:
            vit.reset_classifier(data.num_classes)
        kwargs["num_classes"] = data.num_classes
        vit.to(resolve_device(device))
        calibration = None
        if needs_data(importance):  # a seeded order of the training set, never validation
            data.train.generator.manual_seed(config.seed)
            calibration = data.train
        elastic = ElasticViT(
            vit, importance, data=calibration, calibration_batches=calibration_batches
        )
        if space is None:
            space = JointSpace.default(elastic)
        elif not isinstance(space, JointSpace):
            space = JointSpace.load(space)
        elastic.hold(space.exit_types or (), space.exits or ())  # each searched design
        init = "pretrained" if pretrained else "random"
        if checkpoint:
            init = f"checkpoint {Path(checkpoint).name}"
        trainer = cls(elastic, space, data, config, model, kwargs, device, init)
        trainer.importance = {"criterion": importance}
        if needs_data(importance):
            trainer.importance["calibration_batches"] = calibration_batches
        if teacher is not None:
            trainer.set_teacher(*teacher)
        return trainer

    def set_teacher(self, model: torch.nn.Module, record: dict[str, Any]) -> None:
        """Distil from ``model`` (recorded as ``record``) instead of the full model."""
        self.external = model.to(self.device).eval()
        self.teacher_record = dict(record)

    @classmethod
    def resume(cls, path: str | Path, device: str = "cpu", workers: int = 0) -> SupernetTrainer:
        """The trainer of an interrupted run, at the end of its last finished epoch, with its
        model, space, data, optimizer, schedule and history (the run continues exactly)."""
        net = load_supernet(path)
        config = TrainConfig.from_dict(net.meta["config"])
        data = net.load_data(config.batch_size, config.seed, workers)
        trainer = cls(
            net.elastic,
            net.space,
            data,
            config,
            net.model_name,
            net.model_kwargs,
            device,
            net.meta.get("init", "random"),
        )
        trainer.optimizer.load_state_dict(net.train_state["optimizer"])
        trainer.scheduler.load_state_dict(net.train_state["scheduler"])
        trainer.step, trainer.epoch = net.meta["step"], net.meta["epoch"]
        trainer.importance = net.importance
        trainer.holdout = bool(net.data.get("holdout", False))
        if net.meta.get("teacher"):
            trainer.set_teacher(reload_teacher(net.meta["teacher"]), net.meta["teacher"])
        trainer.history = list(net.meta["metrics"]["history"])
        trainer.seconds = float(net.meta["metrics"].get("seconds", 0.0))
        return trainer

    # -- one step -------------------------------------------------------------------------
    def _students(self, rng: random.Random) -> list[Candidate]:
        if not self.config.sandwich:
            return []
        return [self.smallest] + [
            self.space.sample(rng) for _ in range(self.config.random_candidates)
        ]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One sandwich step on a batch; returns the summed loss."""
        c = self.config
        loss_args = (c.distill, c.temperature, c.label_smoothing)
        rng = random.Random(c.seed * 1_000_003 + self.step)
        torch.manual_seed(c.seed * 1_000_003 + self.step)
        self.elastic.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            outs = self.elastic.forward_exits(x, self.teacher, every_design=True)
            if self.external is not None:  # once per batch, shared by every candidate
                with torch.no_grad():
                    teacher = self.external(x).float()
                loss = mixed_loss(outs, y, teacher, *loss_args)
            else:
                teacher = outs[-1].detach()
                loss = mixed_loss(outs[-1:], y, None, *loss_args)
                if len(outs) > 1:
                    loss = loss + mixed_loss(outs[:-1], y, teacher, *loss_args)
        loss.backward()
        total = loss.detach()
        for student in self._students(rng):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = mixed_loss(self.elastic.forward_exits(x, student), y, teacher, *loss_args)
            loss.backward()
            total = total + loss.detach()
        if c.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.elastic.parameters(), c.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return total.item()  # one device sync per step

    # -- epochs, checkpoints --------------------------------------------------------------
    def fit(
        self, out: str | Path, progress: bool = True, epochs: int | None = None
    ) -> dict[str, Any]:
        """Train until epoch ``epochs`` (default: the config's), checkpointing to ``out``
        after each epoch; return the last epoch's metrics."""

        c = self.config
        stop = c.epochs if epochs is None else min(epochs, c.epochs)
        while self.epoch < stop:
            gen = getattr(self.data.train, "generator", None)
            if gen is not None:  # the data order of an epoch depends only on seed and epoch
                gen.manual_seed(c.seed * 7919 + self.epoch)
            bar = tqdm(
                self.data.train,
                desc=f"epoch {self.epoch + 1}/{c.epochs}",
                disable=None if progress else True,  # bars on a terminal only
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
            seen, t0 = 0, time.perf_counter()
            for x, y in bar:
                loss = self.train_step(
                    x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                )
                seen += len(x)
                bar.set_postfix(
                    loss=f"{loss:.3f}",
                    img_s=f"{seen / (time.perf_counter() - t0):.0f}",
                    lr=f"{self.scheduler.get_last_lr()[0]:.1e}",
                )
            self.seconds += time.perf_counter() - t0
            self.epoch += 1
            metrics = self.evaluate()
            self._check_collapse(metrics, out)
            self.history.append(
                {"epoch": self.epoch, "step": self.step, "train_loss": loss, **metrics}
            )
            if progress:
                print(
                    f"epoch {self.epoch}/{c.epochs}: val accuracy full "
                    f"{metrics['full_accuracy']:.3f}, smallest {metrics['smallest_accuracy']:.3f} "
                    f"({seen / (time.perf_counter() - t0):.0f} img/s)",
                    file=sys.stderr,
                    flush=True,
                )
            self.save(out)
        return self.history[-1] if self.history else {}

    def _check_collapse(self, metrics: dict[str, float], out) -> None:
        """Refuse to replace a checkpoint better than chance with one at chance or below
        (a run that diverged): the good one stays."""
        chance = 1.0 / max(1, len(self.data.classes))
        before = self.history[-1]["full_accuracy"] if self.history else None
        if before is not None and before > 2 * chance and metrics["full_accuracy"] <= chance:
            raise VitParetoError(
                f"epoch {self.epoch} fell to chance accuracy ({metrics['full_accuracy']:.3f}, "
                f"from {before:.3f}): training diverged; {str(out)!r} keeps epoch "
                f"{self.epoch - 1}; train again with a lower --lr"
            )

    def evaluate(self) -> dict[str, float]:
        """Validation accuracy of the full and the smallest candidate on the shared weights."""
        ev = AccuracyEvaluator(self.data.val, device=self.device, progress=False)
        full = ev(self.elastic, Candidate.full(self.elastic.spec))["accuracy"]
        small = ev(self.elastic, self.smallest.replace(exits=()))["accuracy"]
        return {"full_accuracy": full, "smallest_accuracy": small}

    def payload(self) -> dict[str, Any]:
        """What a checkpoint holds (see ``vitpareto.search._checkpoint``)."""
        return {
            "model": {"name": self.model_name, "kwargs": self.model_kwargs},
            "init": self.init,
            "importance": self.importance,
            "teacher": self.teacher_record,
            "space": self.space.to_dict(),
            "exit_blocks": self.elastic.exit_blocks,
            "exit_designs": self.elastic.designs(),
            "orders": self.elastic.orders,
            "state_dict": {k: v.detach().cpu() for k, v in self.elastic.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "config": asdict(self.config),
            "data": {
                "spec": self.data.spec,
                "classes": list(self.data.classes),
                "holdout": self.holdout,
            },
            "metrics": {"history": self.history, "seconds": self.seconds},
            "exit_training": self.exit_training,
            "source": self.source,
        }

    def save(self, path: str | Path) -> str:
        """Write the checkpoint atomically; return (and keep) the weights' SHA-256."""
        self.sha256 = save_checkpoint(path, self.payload())
        return self.sha256


def train_supernet(
    model: str,
    dataset: str,
    out: str | Path,
    config: TrainConfig | None = None,
    progress: bool = True,
    **options: Any,
) -> SupernetTrainer:
    """Train (or, when ``out`` holds an unfinished run, resume) a supernet of the timm model
    ``model`` on ``dataset`` into the checkpoint ``out``; ``options`` go to
    ``SupernetTrainer.create`` (space, model_kwargs, pretrained, checkpoint, device,
    workers). Returns the trainer, its ``sha256`` that of the written checkpoint."""
    if Path(out).exists():
        trainer = SupernetTrainer.resume(out, device=options.get("device", "cpu"))
    else:
        trainer = SupernetTrainer.create(model, dataset, config, **options)
    trainer.fit(out, progress=progress)
    if trainer.sha256 is None:  # nothing left to train: the checkpoint as it is
        trainer.sha256 = load_supernet(out).sha256
    return trainer
