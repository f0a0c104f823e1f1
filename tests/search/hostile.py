"""Helpers of the bad-input tests: run a command in this process and check that it was
refused as a user mistake should be (exit 2, one line, nothing changed)."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

from vitpareto.search import SearchConfig, SupernetTrainer, TrainConfig, load_supernet, search
from vitpareto.search.cli import main


def refused(capsys, args: list[str], *words: str) -> str:
    """Run ``vitpareto args``; assert exit 2 and one stderr line holding every word."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], (w, err[0])
    return err[0]


def digest(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (to show nothing changed)."""
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def copy_db(src: Path, dst: Path) -> Path:
    """A copy of an SQLite database, what its write-ahead log holds included."""
    with (
        contextlib.closing(sqlite3.connect(src)) as a,
        contextlib.closing(sqlite3.connect(dst)) as b,
    ):
        a.backup(b)
    return dst


def _trainer(patch_size: int, **config) -> SupernetTrainer:
    return SupernetTrainer.create(
        "test_vit",
        "digits",
        TrainConfig(epochs=1, batch_size=128, **config),
        model_kwargs=dict(img_size=32, patch_size=patch_size),
    )


def small_supernet(path: Path, seed: int = 0) -> Path:
    """An untrained test_vit supernet on digits (the commands only need its shape)."""
    _trainer(8, seed=seed).save(path)
    return path


def trained_supernet(path: Path, random_candidates: int = 1) -> Path:
    """A test_vit supernet (patch 16) trained one epoch on digits: accuracy above chance."""
    _trainer(16, random_candidates=random_candidates).fit(path, progress=False)
    return path


def searched(net_path: Path, db: Path, name: str = "s") -> str:
    """A study of three trials in an SQLite file; its URL."""
    url = f"sqlite:///{db}"
    config = SearchConfig(max_batches=1, latency_repeats=3, threads=1)
    search(load_supernet(net_path), url, name, 3, config, progress=False)
    return url
