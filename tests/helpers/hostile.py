"""Helpers of the bad-input tests: run a command in this process and check that it was
refused as a user mistake should be (exit 2, one line, nothing changed)."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

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


def trials_table() -> pd.DataFrame:
    """A small table of trials as `query` reads them: numbers, a NaN, booleans and strings
    (what the --where and --sort grammar is tried on)."""
    return pd.DataFrame(
        {
            "trial": [0, 1, 2, 3, 4],
            "accuracy": [0.91, 0.95, 0.88, np.nan, 0.97],
            "latency_ms": [3.0, 5.5, 2.0, 4.0, 9.0],
            "macs": [100, 200, 50, 150, 400],
            "heads_b3": [3, 2, 1, 3, 3],
            "patch_size": [8, 4, 8, 16, 4],
            "pareto": [True, False, True, False, True],
            "fidelity": ["shared", "shared", "finetuned", "shared", "finetuned"],
        }
    )


READERS = ("query", "studies", "report", "export")


def export_args(url: str, out: Path, net: Path, *extra) -> list:
    """`vitpareto export` of trial 1, quickly (no portable files, no timing)."""
    return ["export", "--storage", url, "--study", "s", "--trial", "1", "--out", out,
            "--supernet", net, "--no-portable", "--no-measure", *extra]  # fmt: skip


def reader_args(command: str, url: str, tmp_path: Path, net: Path) -> list:
    """The command line of a command that reads a results database."""
    if command == "studies":
        return ["studies", "--storage", url]
    if command == "report":
        return ["report", "--storage", url, "--study", "s", "--out", tmp_path / "rep"]
    if command == "export":
        return export_args(url, tmp_path / "exp", net)
    return [command, "--storage", url, "--study", "s"]


def sql(path, statement: str, *args) -> None:
    """One statement on an SQLite file, committed and closed (its log written back)."""
    with contextlib.closing(sqlite3.connect(path)) as c:
        c.execute(statement, args)
        c.commit()
