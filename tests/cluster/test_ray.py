"""Search on a real Ray cluster: a head and workers started by `ray start` as processes of
their own on loopback, the driver a separate `vitpareto search --backend ray` process. The
trials land in one database; latency runs only on the node holding the target; a worker
node killed mid-search loses no completed trial (a killed driver: the backend contract,
tests/cluster/test_backends.py)."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers.searches import complete, search_cmd

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # a Ray cluster, search processes


def ray_cmd(net, url, study, trials, cluster, *extra):
    return search_cmd(
        net, url, study, trials, "--backend", "ray", "--address", cluster.address, *extra
    )


def node_of(cluster, resource):
    return next(n["NodeID"] for n in cluster.alive() if resource in n["Resources"])


def test_latency_only_on_the_target_node(net, cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    out = subprocess.run(
        ray_cmd(net, url, "t", 6, cluster, "--target", "probe"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    done = complete(url, "t")
    assert len(done) == 6
    probe = node_of(cluster, "target:probe")
    assert {t.user_attrs["latency_node"] for t in done} == {probe}
    live = {n["NodeID"] for n in cluster.alive()}
    assert {t.user_attrs["trial_node"] for t in done} <= live
    study = optuna.load_study(study_name="t", storage=url)
    assert study.user_attrs["target_name"] == "probe"
    assert "front:" in out.stdout  # the same front table as the local backend


def test_front_fine_tuned_on_the_cluster_and_timed_on_the_target(net, cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    extra = ("--target", "probe", "--latency", "predicted", "--finetune-front", "3")
    out = subprocess.run(
        ray_cmd(net, url, "p", 5, cluster, *extra), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    searched = complete(url, "p")
    assert len(searched) == 5 and all(t.user_attrs["latency_predicted"] for t in searched)
    front = complete(url, "p/front")
    assert front and all(t.user_attrs["fidelity"] == "finetuned" for t in front)
    probe = node_of(cluster, "target:probe")
    assert {t.user_attrs["latency_node"] for t in front} == {probe}
    assert all("predicted_latency_ms" in t.user_attrs for t in front)
    # timed for real: a measurement's spread, which no prediction has
    assert all("latency_iqr_ms" in t.user_attrs for t in front)
    assert all(t.user_attrs["weights_artifact"] for t in front)
    # the latency table was built on the target with the study's threads, kept in the
    # node's own directory (not relative to where Tune runs the task)
    threads = optuna.load_study(study_name="p", storage=url).user_attrs["config"]["threads"]
    tables = Path(tempfile.gettempdir()) / "vitpareto-ray" / "latency"
    fps = [json.loads(p.read_text())["fingerprint"] for p in tables.glob("*.json")]
    assert any(fp["threads"] == threads for fp in fps), (threads, fps)


def test_a_target_no_node_holds_is_refused(net, cluster, tmp_path):
    db = tmp_path / "r.db"
    out = subprocess.run(
        ray_cmd(net, f"sqlite:///{db}", "t", 4, cluster, "--target", "orin"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "target:orin" in out.stderr and "ray start" in out.stderr
    assert not db.exists()  # nothing measured, nothing stored


def test_a_gpu_target_is_checked_on_the_target_not_on_the_driver(net, cluster, tmp_path):
    """A CPU-only driver searching for a GPU target: the refusal is about the target
    node that is missing, not about this machine's lack of CUDA."""
    db = tmp_path / "r.db"
    extra = ("--device", "cuda", "--target", "gpu", "--wait-for-target", "0")
    out = subprocess.run(
        ray_cmd(net, f"sqlite:///{db}", "g", 4, cluster, *extra),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "target:gpu" in err[0] and "ray start" in err[0], out.stderr
    assert "CUDA" not in out.stderr and "Traceback" not in out.stderr
    assert not db.exists()


def _kill_when(url, study, n, proc, kill, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if len(complete(url, study)) >= n:
            kill()
            return {t.number: t.values for t in complete(url, study)}
        time.sleep(0.3)
    raise AssertionError(f"the search ended or stalled before {n} trials: {proc.poll()}")


def test_a_killed_worker_node_loses_nothing(net, cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    cluster.start("doomed", cpus=1)
    doomed = {n["NodeID"] for n in cluster.alive()} - {
        node_of(cluster, "target:probe"),
        node_of(cluster, "node:__internal_head__"),
    }
    proc = subprocess.Popen(
        ray_cmd(net, url, "k", 8, cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        kept = _kill_when(url, "k", 3, proc, lambda: cluster.kill("doomed"))
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    done = complete(url, "k")
    assert len(done) == 8
    assert all(kept[t.number] == t.values for t in done if t.number in kept)
    assert doomed  # the killed node was part of the cluster the search ran on
