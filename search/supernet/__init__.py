"""The supernet: its training (the sandwich rule), its checkpoints, and fine-tuning one
candidate cut out of it."""

from vitpareto.search.supernet._checkpoint import (
    Supernet,
    is_checkpoint,
    load_supernet,
    read_checkpoint,
    save_checkpoint,
    weights_sha256,
)
from vitpareto.search.supernet._exits import train_exits
from vitpareto.search.supernet._finetune import (
    FinetuneConfig,
    Finetuned,
    finetune,
    train_compressed,
)
from vitpareto.search.supernet._recipe import Recipe, distill_loss, mixed_loss
from vitpareto.search.supernet._teacher import load_teacher
from vitpareto.search.supernet._trainer import SupernetTrainer, TrainConfig, train_supernet

__all__ = [
    "FinetuneConfig",
    "Finetuned",
    "Recipe",
    "Supernet",
    "SupernetTrainer",
    "TrainConfig",
    "distill_loss",
    "finetune",
    "is_checkpoint",
    "load_supernet",
    "load_teacher",
    "mixed_loss",
    "read_checkpoint",
    "save_checkpoint",
    "train_compressed",
    "train_exits",
    "train_supernet",
    "weights_sha256",
]
