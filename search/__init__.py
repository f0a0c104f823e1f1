"""How the space is explored, and what the search leaves behind.

The sub-packages, each a layer over the one before: ``supernet`` (training, checkpoints,
fine-tuning), ``explore`` (the study, the trial loop, scoring, the backends, the front's
second stage), ``outputs`` (queries, report, export) and ``cli`` (the command line). What
a notebook needs is re-exported here.
"""

from vitpareto.search._demo import run_demo
from vitpareto.search.explore import (
    DEFAULT_STORAGE,
    Backend,
    LocalBackend,
    ProcessBackend,
    RayBackend,
    SearchConfig,
    load_study,
    make_backend,
    rescore_front,
    search,
)
from vitpareto.search.outputs import (
    export_trials,
    load_model,
    load_trials,
    pick_trials,
    save_finetuned,
    select,
    write_report,
)
from vitpareto.search.supernet import (
    FinetuneConfig,
    Supernet,
    SupernetTrainer,
    TrainConfig,
    finetune,
    load_supernet,
    load_teacher,
    train_supernet,
)

__all__ = [
    "DEFAULT_STORAGE",
    "Backend",
    "FinetuneConfig",
    "LocalBackend",
    "ProcessBackend",
    "RayBackend",
    "SearchConfig",
    "Supernet",
    "SupernetTrainer",
    "TrainConfig",
    "export_trials",
    "finetune",
    "load_model",
    "load_study",
    "load_supernet",
    "load_teacher",
    "load_trials",
    "make_backend",
    "pick_trials",
    "rescore_front",
    "run_demo",
    "save_finetuned",
    "search",
    "select",
    "train_supernet",
    "write_report",
]
