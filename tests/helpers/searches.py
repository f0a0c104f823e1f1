"""The cluster tests' searches: a `vitpareto search` command line as a user runs it, the
trials it completed, and the kill-and-resume contract every backend and sampler meets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

# the tests count trials, they do not compare speeds: the front timed again briefly, not 100
FRONT_ROUNDS = 5


def search_cmd(net, url, study, trials, *extra):
    """A `vitpareto search` command line, its front timed again for ``FRONT_ROUNDS``."""
    return [
        sys.executable,
        "-m",
        "vitpareto.search.cli",
        "search",
        "--supernet",
        str(net),
        "--storage",
        url,
        "--study",
        study,
        "--trials",
        str(trials),
        "--no-progress",
        "--front-rounds",
        str(FRONT_ROUNDS),
        *extra,
    ]


def complete(url, study):
    try:
        s = optuna.load_study(study_name=study, storage=url)
    except KeyError:
        return []
    return s.get_trials(states=(TrialState.COMPLETE,))


def stored(db: Path) -> list[str]:
    """Every row of a SQLite database, read through its write-ahead log: a database in
    WAL mode may change bytes on disk (a checkpoint) without any row changing."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def candidates(trials) -> list[str]:
    return [json.dumps(t.user_attrs["candidate"], sort_keys=True) for t in trials]


def kill_and_resume(cmd: list[str], kill_at: int, front: bool = False) -> None:
    """Run a search (``cmd``), SIGKILL it once ``kill_at`` trials are complete, run it
    again: every trial completed before the kill is kept as it was, the study ends with
    exactly the trials asked for, and no candidate is counted twice. The resumed run
    skips the front's second stage unless ``front`` (the killed one never reaches it)."""
    url, name = cmd[cmd.index("--storage") + 1], cmd[cmd.index("--study") + 1]
    trials = int(cmd[cmd.index("--trials") + 1])
    if not front:  # the search's trials are the point, not its front
        cmd = [*cmd, "--front-rounds", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while len(complete(url, name)) < kill_at:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.3)
        workers = descendants(proc.pid) | (busy_ray_workers() if "ray" in cmd else set())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    # the processes that ran its trials (worker processes, Ray workers) stop with it; once
    # none is left, nothing can complete a trial any more
    wait_gone(workers)
    kept = {t.number: t.values for t in complete(url, name)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    done = complete(url, name)
    assert len(done) == trials
    assert all(kept[t.number] == t.values for t in done if t.number in kept)
    assert set(kept) <= {t.number for t in done}
    assert len(set(candidates(done))) == trials


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (children, their children, ...)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _title(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    return ""


IDLE_RAY = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")


def busy_ray_workers() -> set[int]:
    """The worker processes of this test process's Ray cluster (its nodes share the
    cluster's token, see servers.RayCluster) running a task or an actor (a trial)."""
    token = f"RAY_AUTH_TOKEN={os.environ.get('RAY_AUTH_TOKEN')}".encode()
    found = set()
    for p in Path("/proc").glob("[0-9]*"):
        title = _title(int(p.name))
        if title.startswith("ray::") and title not in IDLE_RAY:
            with contextlib.suppress(OSError):
                if token in p.joinpath("environ").read_bytes().split(b"\0"):
                    found.add(int(p.name))
    return found


def wait_gone(pids: set[int], timeout: float = 120) -> None:
    """Wait until every process of ``pids`` has exited (or, a Ray worker, gone idle)."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in pids if (title := _title(p)) and title not in IDLE_RAY}
        if not left:
            return
        assert time.monotonic() < deadline, f"processes outlived the killed search: {left}"
        time.sleep(0.2)
