"""Real servers for the cluster tests, started from their own binaries on loopback and
stopped afterwards: a PostgreSQL cluster in a temporary directory, and Ray nodes started
with `ray start` as processes of their own (a head, workers, a node holding a target)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=os.path.getmtime)
    initdb = shutil.which("initdb") or (found[-1] if found else None)
    return Path(initdb).resolve().parent if initdb else None


def start_postgres():
    """initdb + pg_ctl start on a free loopback port, in a directory of its own; returns
    (url, stop). As root, the server runs as the ``postgres`` user (PostgreSQL refuses to
    run as root), in a directory that user can reach."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="vitpareto-pg-"))
    data, port = root / "pgdata", free_port()
    data.mkdir()
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        root.chmod(0o755)
        shutil.chown(data, "postgres")

    def run(*cmd):
        out = subprocess.run([*as_user, *cmd], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {out.stderr or out.stdout}")

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "vitpareto")
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=200"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(data / "log"), "-w", "start")

    def stop():
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)

    url = f"postgresql://vitpareto@127.0.0.1:{port}/postgres"
    return url, stop


def ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


class RayCluster:
    """A head node and worker nodes, each started by `ray start --block` in a process group
    of its own, so one node can be killed (SIGKILL to its group) while the rest run on."""

    def __init__(self, root: Path):
        self.root, self.port, self.nodes = root, free_port(), {}
        # Ray's sockets live under its temp dir, and a socket path is at most 107 bytes
        self.temp = Path(tempfile.mkdtemp(prefix="vp-ray-", dir="/tmp"))
        self.address = f"127.0.0.1:{self.port}"
        # the cluster's own token: its nodes, this process and the drivers it starts share it
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            # a killed node is noticed within seconds, not the default half minute
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_failure_threshold": "4",
            "RAY_health_check_initial_delay_ms": "0",
        }

    def start(self, name: str, cpus: int, resources: str = "{}", head: bool = False):
        cmd = [ray_bin(), "start", "--block", "--node-ip-address=127.0.0.1"]
        cmd += [f"--num-cpus={cpus}", f"--resources={resources}", "--disable-usage-stats"]
        if head:
            cmd += ["--head", f"--port={self.port}", "--include-dashboard=false"]
            cmd += [f"--temp-dir={self.temp}"]
        else:
            cmd += [f"--address={self.address}"]
        with open(self.root / f"{name}.log", "w") as log:  # the child keeps its own copy
            self.nodes[name] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self._wait_started(name)
        self.wait_nodes(len(self.nodes))

    def _wait_started(self, name: str, timeout: float = 120) -> None:
        log, proc = self.root / f"{name}.log", self.nodes[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ray node {name} exited: {log.read_text()[-3000:]}")
            if "Ray runtime started" in log.read_text():
                return
            time.sleep(0.3)
        raise TimeoutError(f"ray node {name} did not start: {log.read_text()[-3000:]}")

    def alive(self) -> list[dict]:
        import ray

        return [n for n in ray.nodes() if n["Alive"]]

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        """Wait until the cluster has ``n`` live nodes (connects this process as a driver)."""
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not ray.is_initialized():
                    ray.init(address=self.address, logging_level="ERROR")
                if len(self.alive()) == n:
                    return
            except ConnectionError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the Ray cluster did not reach {n} nodes")

    def kill(self, name: str) -> None:
        """SIGKILL a node: its `ray start`, raylet and every process of its group."""
        proc = self.nodes.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        # every node at once: a test cluster keeps nothing worth a clean shutdown, and
        # `ray start --block` took the whole 30 s it was given to leave after SIGTERM
        for name in reversed(list(self.nodes)):
            with contextlib.suppress(ProcessLookupError):  # a node that failed to start
                os.killpg(self.nodes[name].pid, signal.SIGKILL)
        for name in list(self.nodes):
            self.nodes.pop(name).wait()
        shutil.rmtree(self.temp, ignore_errors=True)
