"""Artifacts built once per pytest run and shared by every test and every pytest-xdist
worker that asks for them: the first to ask builds it under a file lock, the others wait
for it and reuse it. They are shared read-only: a test that changes one copies it first."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def shared_dir(tmp_path_factory) -> Path:
    """The folder every worker of this pytest run sees (the workers' common base temp)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    d = root / "shared"
    d.mkdir(exist_ok=True)
    return d


def once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``shared_dir/name``, made by ``build(path)`` (a file or a folder) the first time any
    worker of this run asks; a build that fails leaves nothing, and the next asker retries."""
    d = shared_dir(tmp_path_factory)
    path = d / name
    with open(d / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not path.exists():
            partial = d / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            if partial.exists():
                partial.unlink()
            build(partial)
            os.replace(partial, path)
    return path
