"""CPU seconds a command and the processes it starts spent, by role, read from /proc.

A search on Ray runs in several processes (the driver, Tune's trial workers, Ray's own
services); when a version is slower, this says which of them worked more. Linux only:
elsewhere the roles come back empty.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

PROC = Path("/proc")
SERVICES = ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env", "monitor.py")


def _role(pid: int, cmdline: str, driver: int) -> str | None:
    if pid == driver:
        return "driver"
    if any(s in cmdline for s in SERVICES):
        return "Ray services"
    if "ray::" in cmdline or "default_worker" in cmdline:
        return "trial workers"
    return None


def _stat(pid: str) -> tuple[int, float]:
    """A process's parent and its CPU seconds (user + system)."""
    fields = (PROC / pid / "stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_sampled(cmd: list[str], env: dict, cwd: Path, every: float = 0.5):
    """Run ``cmd``; return its completed process and the CPU seconds by role (driver, trial
    workers, Ray services) of it and its descendants, each process's last reading before
    it ended (a process shorter than ``every`` can be missed)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        last: dict[int, tuple[str, float]] = {}
        while proc.poll() is None:
            _sample(proc.pid, last)
            time.sleep(every)
        out.seek(0), err.seek(0)
        done = subprocess.CompletedProcess(
            cmd,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )
    roles: dict[str, float] = {}
    for role, seconds in last.values():
        roles[role] = roles.get(role, 0.0) + seconds
    return done, roles


def _sample(root: int, last: dict[int, tuple[str, float]]) -> None:
    """Read the CPU seconds of ``root`` and its descendants into ``last``."""
    if not PROC.is_dir():
        return
    stats, cmdlines = {}, {}
    for p in PROC.iterdir():
        if p.name.isdigit():
            try:
                stats[int(p.name)] = _stat(p.name)
                cmdlines[int(p.name)] = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError, IndexError):  # it ended while being read
                continue
    family = {root}
    grew = True
    while grew:  # descendants: a parent in the family
        new = {pid for pid, (ppid, _) in stats.items() if ppid in family} - family
        family |= new
        grew = bool(new)
    for pid in family & stats.keys():
        role = _role(pid, cmdlines.get(pid, ""), root)
        if role:
            last[pid] = (role, stats[pid][1])
