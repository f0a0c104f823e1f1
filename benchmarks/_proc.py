"""CPU seconds a command and the processes it starts spent, by role, read from /proc.

A search on Ray runs in several processes (the driver, Tune's trial workers, Ray's own
services); when a version is slower, this says which of them worked more. Linux only:
elsewhere the roles come back empty.
"""

from __future__ import annotations

import os
import subprocess
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


def _cpu_seconds(pid: str) -> float:
    fields = (PROC / pid / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run_sampled(cmd: list[str], env: dict, cwd: Path, every: float = 0.5):
    """Run ``cmd``; return its completed process and the CPU seconds by role (driver, trial
    workers, Ray services), each process's last reading before it ended."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    last: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        for pid in (p.name for p in PROC.iterdir() if p.name.isdigit()) if PROC.is_dir() else ():
            try:
                cmdline = (PROC / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                role = _role(int(pid), cmdline, proc.pid)
                if role:
                    last[int(pid)] = (role, _cpu_seconds(pid))
            except (OSError, ValueError, IndexError):  # it ended while being read
                continue
        time.sleep(every)
    out, err = proc.communicate()
    roles: dict[str, float] = {}
    for role, seconds in last.values():
        roles[role] = roles.get(role, 0.0) + seconds
    done = subprocess.CompletedProcess(cmd, proc.returncode, out.decode(), err.decode())
    return done, roles
