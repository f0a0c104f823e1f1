"""Damaged, foreign and hostile files: checkpoints, model directories and databases, each
refused with one line naming what is wrong, nothing run, fetched or overwritten."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import optuna
import pytest
import torch

import vitpareto
from tests.helpers.hostile import copy_db, digest, refused, sql
from vitpareto.bounds import MAX_INPUT_SHARE, check_input, memory_bytes
from vitpareto.errors import VitParetoError
from vitpareto.search import load_supernet
from vitpareto.search.cli import main
from vitpareto.search.explore import open_storage
from vitpareto.search.supernet import SupernetTrainer, read_checkpoint


def _damaged(net, tmp_path, change) -> str:
    ckpt = torch.load(net, weights_only=True)
    change(ckpt)
    path = tmp_path / "bad.pt"
    torch.save(ckpt, path)
    return str(path)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c.pop("model"), ["entry 'model' is missing"]),
        (lambda c: c.update(state_dict=[1, 2]), ["entry 'state_dict' is a list"]),
        (lambda c: c.update(state_dict="weights"), ["entry 'state_dict' is a str"]),
        (lambda c: c["model"]["kwargs"].update(pretrained=True), ["load weights from elsewhere"]),
        (lambda c: c["model"]["kwargs"].update(img_size=10**6), ["img_size 1000000 is out"]),
        (lambda c: c.update(epoch=7), ["do not match their SHA-256"]),  # a changed setting
    ],
)
def test_damaged_checkpoints(capsys, net, tmp_path, change, words):
    bad = _damaged(net, tmp_path, change)
    refused(capsys, ["search", "--supernet", bad, "--storage", f"sqlite:///{tmp_path / 'r.db'}",
                     "--study", "x"], *words)  # fmt: skip
    assert not (tmp_path / "r.db").exists()


def test_a_flipped_byte_in_the_optimizer_state_is_caught(net, tmp_path):
    trainer = SupernetTrainer.resume(net)
    x, y = next(iter(trainer.data.train))
    trainer.train_step(x, y)  # an optimizer state to damage
    good = tmp_path / "good.pt"
    trainer.save(good)
    ckpt = torch.load(good, weights_only=True)
    state = next(iter(ckpt["optimizer"]["state"].values()))
    state["exp_avg"].view(-1)[0] += 1.0
    torch.save(ckpt, tmp_path / "flipped.pt")
    with pytest.raises(VitParetoError, match="optimizer state, schedule or settings"):
        read_checkpoint(tmp_path / "flipped.pt")
    # and a state that is not finite is refused even with a matching hash
    state["exp_avg"].view(-1)[0] = float("nan")
    ckpt.pop("payload_sha256")
    torch.save(ckpt, tmp_path / "nan.pt")
    with pytest.raises(VitParetoError, match="not finite"):
        read_checkpoint(tmp_path / "nan.pt")


def test_a_diverged_run_never_replaces_a_good_checkpoint(net, tmp_path):
    path = tmp_path / "n.pt"
    shutil.copy(net, path)
    trainer = SupernetTrainer.resume(path)
    before = digest(path)
    with torch.no_grad():
        next(trainer.elastic.parameters()).fill_(float("nan"))
    with pytest.raises(VitParetoError, match="training diverged"):
        trainer.save(path)
    assert digest(path) == before and load_supernet(path).sha256


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c.pop("candidate"), ["candidate: Field required"]),
        (lambda c: c.update(model="vit_small"), ["model: Input should be a valid dictionary"]),
        (lambda c: c["model"]["kwargs"].update(checkpoint_path="/x.pth"), ["elsewhere"]),
        (lambda c: c["model"]["kwargs"].update(pretrained=True), ["elsewhere"]),
        (lambda c: c["model"]["kwargs"].update(img_size=10**6), ["out of range"]),
    ],
)
def test_hostile_model_configs_are_refused(model_dir, tmp_path, change, words):
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    change(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VitParetoError, match="config.json' changed after export"):
        vitpareto.load(d)
    with pytest.raises(VitParetoError) as e:
        vitpareto.load(d, trust=True)  # past the manifest: the config's own checks
    assert all(w in str(e.value) for w in words), str(e.value)


def test_weights_changed_after_export_are_refused(model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    vitpareto.load(d)  # as exported: loads
    blob = bytearray((d / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(VitParetoError, match="changed after export"):
        vitpareto.load(d)


@pytest.mark.parametrize(
    "extra, change, words",
    [
        (["--threads", "100000"], None, ["--threads must be a whole number of CPU threads"]),
        (["--batch", "100000"], None, ["--batch must be a whole number of images"]),
        (["--trust"], {"deployed_batch": 10_000_000}, ["metrics.json", "deployed_batch"]),
        (["--trust"], {"deployed_batch": -4}, ["metrics.json", "deployed_batch"]),
        (["--trust"], {"deployed_batch": "x"}, ["metrics.json", "deployed_batch"]),
    ],
)
def test_bench_counts_are_bounded_by_the_machine(capsys, model_dir, tmp_path, extra, change, words):
    """``bench`` on a count the machine cannot hold (100,000 threads crashed the
    interpreter; a batch of 10 million images asked for 123 GB): one line, exit 2."""
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    if change:
        metrics = json.loads((d / "metrics.json").read_text())
        (d / "metrics.json").write_text(json.dumps({**metrics, **change}))
    before = digest(d)
    refused(capsys, ["bench", str(d), *extra], *words)
    assert digest(d) == before


def test_a_batch_larger_than_memory_is_refused_before_it_is_allocated():
    """A batch within the count bound whose images would not fit: refused by its size."""
    check_input(64, (3, 224, 224))  # 38 MiB: fine anywhere
    gib = 60000 * 3 * 224 * 224 * 4 / 2**30  # 33.6 GiB, over a quarter of any machine here
    if gib <= MAX_INPUT_SHARE * memory_bytes() / 2**30:
        pytest.skip("this machine holds a batch of 60,000 224 px images")
    with pytest.raises(VitParetoError, match="GiB for the input alone"):
        check_input(60000, (3, 224, 224))


def test_a_database_changed_by_hand(capsys, db, tmp_path):
    path = tmp_path / "r.db"
    copy_db(db[0], path)
    url = f"sqlite:///{path}"
    sql(path, "UPDATE trial_user_attributes SET value_json=? WHERE key=?", '"x"', "candidate")
    before = digest(path)
    refused(capsys, ["query", "--storage", url, "--study", "s"], "no valid candidate")
    refused(capsys, ["report", "--storage", url, "--study", "s", "--out", tmp_path / "rep"],
            "no valid candidate")  # fmt: skip
    assert digest(path) == before and not (tmp_path / "rep").exists()
    objectives = '["accuracy", "latency_ms", "macs"]'
    sql(path, "UPDATE study_user_attributes SET value_json=? WHERE key='objectives'", objectives)
    refused(capsys, ["query", "--storage", url, "--study", "s"], "names 3 objectives")


def test_a_study_made_by_plain_optuna_is_refused_by_report(capsys, tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    st = optuna.create_study(storage=url, study_name="plain", directions=["maximize"])
    st.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    refused(capsys, ["report", "--storage", url, "--study", "plain", "--out", tmp_path / "rep"],
            "no valid candidate")  # fmt: skip
    assert not (tmp_path / "rep").exists()


def test_what_is_wrong_with_a_database_is_named(capsys, db, tmp_path):
    q = ["query", "--study", "s", "--storage"]
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(copy_db(db[0], tmp_path / "c.db").read_bytes()[:100] + b"\0" * 5000)
    refused(capsys, [*q, f"sqlite:///{damaged}"], "damaged")
    # a crash leaves the write-ahead log behind, and a crash is how files get damaged
    (tmp_path / "damaged.db-wal").write_bytes(b"")
    refused(capsys, [*q, f"sqlite:///{damaged}"], "damaged", "restore it from a copy")
    other = tmp_path / "other.db"
    sql(other, "CREATE TABLE t (x)")
    refused(capsys, [*q, f"sqlite:///{other}"], "another program")
    newer = tmp_path / "newer.db"
    copy_db(db[0], newer)
    sql(newer, "UPDATE alembic_version SET version_num='v99.0.0'")
    refused(capsys, [*q, f"sqlite:///{newer}"], "newer Optuna")
    refused(capsys, [*q, f"sqlite:///{tmp_path / 'none.db'}"], "no database at")
    assert not (tmp_path / "none.db").exists()


def test_a_path_with_a_hash_sign_is_a_database_like_any_other(capsys, db, tmp_path):
    d = tmp_path / "a#b"
    d.mkdir()
    copy_db(db[0], d / "r.db")
    assert main(["query", "--storage", f"sqlite:///{d / 'r.db'}", "--study", "s"]) == 0
    assert {p.name for p in d.iterdir()} <= {"r.db", "r.db-wal", "r.db-shm"}
    assert not (tmp_path / "a").exists()


@pytest.mark.slow  # a process of its own
def test_a_locked_database_is_reported_as_locked(net, db, tmp_path):
    path = tmp_path / "r.db"
    copy_db(db[0], path)
    before = digest(path)
    holder = sqlite3.connect(path)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for longer than we wait
    try:
        out = subprocess.run(
            [sys.executable, "-m", "vitpareto.search.cli", "search", "--supernet", str(net),
             "--storage", f"sqlite:///{path}", "--study", "new", "--trials", "1"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "VITPARETO_DB_TIMEOUT": "1"},
        )  # fmt: skip
    finally:
        holder.rollback()
        holder.close()
    assert out.returncode == 2 and "locked by another process" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert digest(path) == before


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr")
def test_a_read_only_database_is_named_before_any_work(capsys, net, db, tmp_path):
    """A database the user cannot write: refused as read-only, with what to do, before a
    trial runs; the file unchanged. (An immutable file is read-only even to root.)"""
    ro = copy_db(db[0], tmp_path / "ro.db")
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(ro)], capture_output=True)
        if made.returncode:
            pytest.skip("this file system cannot make a file immutable")
    else:
        ro.chmod(0o444)
    before = digest(ro)
    try:
        args = ["search", "--supernet", net, "--storage", f"sqlite:///{ro}", "--study", "s"]
        refused(capsys, [*args, "--trials", "5", "--no-progress"], "read-only", "writable")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(ro)], check=True)
    assert digest(ro) == before


def test_a_passing_disk_io_error_of_a_busy_database_is_tried_again(tmp_path, monkeypatch):
    """A read-only look at a database in write-ahead logging can fail with "disk I/O error"
    while another process's last connection closes: a search starting then goes on."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    optuna.create_study(storage=open_storage(url), study_name="s")
    real, calls = sqlite3.connect, []

    def flaky(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        if len(calls) <= 3:
            raise sqlite3.DatabaseError("file is not a database")
        return real(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", flaky)
    assert (tmp_path / "r.db-wal").exists()  # in use: its write-ahead log is there
    storage = open_storage(url)
    assert len(calls) >= 4 and calls[0] == calls[3]  # the look, failed three times, then again
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["s"]

    # SQLite 3.40 was seen failing every look for over ten seconds on a file two searches
    # wrote, intact afterwards: a file in use is never called damaged for it
    monkeypatch.setattr(
        sqlite3,
        "connect",
        lambda *a, **k: (_ for _ in ()).throw(sqlite3.DatabaseError("file is not a database")),
    )
    storage = open_storage(url)  # Optuna's own connections (SQLAlchemy's) read it
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["s"]


def test_a_disk_io_error_just_after_the_last_connection_closed_is_tried_again(
    tmp_path, monkeypatch
):
    """The last connection to close deletes the write-ahead log: a search starting at that
    moment (the next space of a benchmark, in the same process) finds no log but a file
    still changing, and a failed look is tried again, not taken for a full disk."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    storage = open_storage(url)
    optuna.create_study(storage=storage, study_name="s")
    storage.engine.dispose()  # every connection closed: the log is gone
    assert not (tmp_path / "r.db-wal").exists()
    real, calls = sqlite3.connect, []

    def flaky(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", flaky)
    storage = open_storage(url)
    assert len(calls) >= 2 and calls[0] == calls[1]  # the look, failed once, then again
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["s"]
