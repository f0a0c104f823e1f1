"""The backends on this machine: one process, or N worker processes on one study."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time

import optuna
import torch

from vitpareto.bounds import check_count
from vitpareto.errors import VitParetoError
from vitpareto.search.explore._backend import Backend
from vitpareto.search.explore._loop import TrialLoop
from vitpareto.search.explore._scoring import (
    local_latency,
    make_scorer,
    table_of,
    validation_images,
)
from vitpareto.search.explore._study import open_study
from vitpareto.search.supernet import load_supernet


class LocalBackend(Backend):
    """Every trial in this process, one after another."""

    name = "local"

    def run(self, study, storage, supernet, trials, config, bar) -> None:
        data = supernet.load_data(batch_size=128)
        latency = local_latency(supernet, config, images=validation_images(data, config))
        scorer = make_scorer(supernet, config, latency, data=data)
        elastic = supernet.elastic.eval()
        loop = TrialLoop(study, storage, supernet.space, trials, config, table_of(latency))
        loop.run(lambda candidate: scorer(elastic, candidate), on_trial=bar.refresh)


class ProcessBackend(Backend):
    """``jobs`` worker processes on this machine, each running the trial loop on the study;
    the CPU threads are split between them, and latency is measured one candidate at a
    time (a file lock), with the study's threads. The workers stop with this process."""

    name = "local"

    def __init__(self, jobs: int):
        self.jobs = check_count("jobs", jobs)

    def prepare(self, supernet, config):
        if getattr(supernet, "path", None) is None:
            raise VitParetoError("--jobs needs the supernet as a checkpoint file")
        return super().prepare(supernet, config)

    def run(self, study, storage, supernet, trials, config, bar) -> None:
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        lock = os.path.join(
            tempfile.gettempdir(), f"vitpareto-{os.getuid()}-latency-{config.device}.lock"
        )
        url = storage.url
        ctx = mp.get_context("spawn")
        args = (str(supernet.path), url, study.study_name, trials, config, threads, lock)
        procs = [
            ctx.Process(target=_worker, args=(*args, i, os.getpid()), daemon=True)
            for i in range(self.jobs)
        ]
        for p in procs:
            p.start()
        try:
            while any(p.is_alive() for p in procs):
                for p in procs:
                    p.join(timeout=1.0 / len(procs))
                bar.refresh()
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                p.join()
        failed = [p.exitcode for p in procs if p.exitcode]
        if failed:
            raise VitParetoError(
                f"{len(failed)} of {self.jobs} search workers failed (exit {failed})"
            )


def _worker(path, url, name, trials, config, threads, lock, index, parent) -> None:
    """One ``ProcessBackend`` worker: the trial loop on the study, until it is complete."""
    _exit_with(parent)
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    supernet = load_supernet(path)
    study, storage = open_study(url, name, supernet, config, worker=index + 1)
    data = supernet.load_data(batch_size=128)
    latency = local_latency(supernet, config, lock, validation_images(data, config))
    scorer = make_scorer(supernet, config, latency, data=data)
    elastic = supernet.elastic.eval()
    try:
        TrialLoop(study, storage, supernet.space, trials, config, table_of(latency)).run(
            lambda candidate: scorer(elastic, candidate)
        )
    except KeyboardInterrupt:
        sys.exit(130)


def _exit_with(parent: int) -> None:
    """Stop this worker when its parent dies, even by SIGKILL (which no handler sees)."""

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
