"""Options a careless user gives: each refused before any work with one line and exit 2,
and nothing already stored changed."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers.hostile import digest, refused
from tests.helpers.nets import small_supernet

TRAIN = ["train", "--model", "test_vit", "--dataset", "digits"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--patch-size", "0"], ["--patch-size must be a whole number", "from 1 to 4096"]),
        (["--patch-size", "-8"], ["--patch-size must be a whole number", "from 1 to 4096"]),
        (["--img-size", "-32"], ["--img-size must be a whole number", "from 1 to 4096"]),
        (["--img-size", "80000"], ["--img-size must be a whole number", "from 1 to 4096"]),
        (["--lr", "nan"], ["--lr must be a finite number"]),
        (["--epochs", "0"], ["--epochs must be a whole number of epochs from 1"]),
    ],
)
def test_training_options_are_checked_before_training(capsys, tmp_path, extra, words):
    refused(capsys, [*TRAIN, "--out", tmp_path / "n.pt", *extra], *words)
    assert not list(tmp_path.iterdir())


def test_an_output_under_a_file_is_refused_before_training(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    refused(capsys, [*TRAIN, "--out", tmp_path / "f" / "n.pt"], "is a file, not a directory")


def test_a_space_file_that_is_not_a_regular_file_is_refused(capsys, tmp_path):
    fifo = tmp_path / "space.yaml"
    os.mkfifo(fifo)
    refused(capsys, [*TRAIN, "--out", tmp_path / "n.pt", "--space", fifo], "not a regular file")
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    refused(capsys, [*TRAIN, "--out", tmp_path / "n.pt", "--space", link], "not a regular file")
    big = tmp_path / "big.yaml"
    big.write_text("x" * (2 << 20))
    refused(capsys, [*TRAIN, "--out", tmp_path / "n.pt", "--space", big], "more than the")


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--max-latency-ms", "nan"], ["--max-latency-ms must be a finite number", "above 0"]),
        (["--max-latency-ms", "-1"], ["--max-latency-ms must be a finite number", "above 0"]),
        (["--min-accuracy", "2"], ["--min-accuracy must be a finite number", "from 0 to 1"]),
        (["--objectives", "accuracy,accuracy"], ["names one objective twice"]),
        (["--finetune-lr", "nan"], ["--finetune-lr must be a finite number"]),
        (["--batch", "0"], ["--batch must be a whole number of images", "from 1 to 65536"]),
        (["--trials", "0"], ["--trials must be a whole number of trials from 1"]),
    ],
)
def test_search_settings_are_checked_before_any_trial(capsys, net, db, extra, words):
    path, url = db
    before = digest(path)
    refused(capsys, ["search", "--supernet", net, "--storage", url, "--study", "s", *extra], *words)
    assert digest(path) == before  # the study is neither poisoned nor changed


HUGE = "100000"  # threads: torch and OpenMP crash the interpreter on as many


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--jobs", HUGE], ["--jobs must be a whole number of worker processes from 1 to"]),
        (["--jobs", "0"], ["--jobs must be a whole number"]),
        (["--batch", "1000000"], ["--batch must be a whole number", "from 1 to 65536"]),
    ],
)
def test_counts_beyond_the_machine_are_refused_before_any_trial(capsys, net, db, extra, words):
    path, url = db
    before = digest(path)
    line = refused(capsys, ["search", "--supernet", net, "--storage", url, "--study", "s", *extra],
                   *words)  # fmt: skip
    assert HUGE not in extra or f"this machine has {os.cpu_count()} logical CPUs" in line
    assert digest(path) == before


@pytest.mark.parametrize(
    "args",
    [
        [*TRAIN, "--threads", HUGE],
        [*TRAIN, "--workers", HUGE],
        ["demo", "--threads", HUGE],
        ["latency", "--model", "test_vit", "--threads", HUGE],
        ["showcase", "--model", "test_vit", "--threads", HUGE],
    ],
)
def test_every_command_bounds_its_threads_and_workers_by_the_machine(capsys, tmp_path, args):
    refused(capsys, [*args, "--out", tmp_path / "o"] if args[0] in ("train", "demo") else args,
            "must be a whole number of", "from ", f"this machine has {os.cpu_count()}")  # fmt: skip
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "study, words",
    [
        ("", ["--study must name a study"]),
        ("x" * 300, ["at most 244 fit"]),
        ("a\x01b", ["control"]),
    ],
)
def test_study_names_are_one_rule_for_every_database(capsys, net, db, study, words):
    path, url = db
    before = digest(path)
    refused(capsys, ["search", "--supernet", net, "--storage", url, "--study", study], *words)
    assert digest(path) == before


def test_an_artifact_store_that_is_a_file_is_refused_before_the_search(capsys, net, db, tmp_path):
    path, url = db
    (tmp_path / "a").write_text("x")
    before = digest(path)
    args = ["search", "--supernet", net, "--storage", url, "--study", "s2"]
    refused(
        capsys, [*args, "--artifacts", tmp_path / "a", "--finetune-front", "1"], "not a directory"
    )
    assert digest(path) == before


def test_export_and_report_paths(capsys, net, db, tmp_path):
    path, url = db
    out = tmp_path / "models"
    out.mkdir()
    (out / "trial_0").symlink_to(tmp_path / "nowhere")  # a dangling link
    refused(capsys, ["export", "--storage", url, "--study", "s", "--trial", "0", "--out", out],
            "is a symbolic link")  # fmt: skip
    (tmp_path / "file").write_text("x")
    refused(capsys, ["report", "--storage", url, "--study", "s", "--out", tmp_path / "file"],
            "is a file")  # fmt: skip
    refused(capsys, ["demo", "--out", tmp_path / "file"], "is a file")
    refused(capsys, ["export", "--storage", url, "--study", "s", "--pareto", "--out",
                     tmp_path / "file" / "m"], "is a file")  # fmt: skip
    assert (tmp_path / "file").read_text() == "x"


def test_finetune_refuses_a_trial_of_another_supernet(capsys, db, tmp_path):
    path, url = db
    other = small_supernet(tmp_path / "other.pt", seed=1)  # another init: another SHA-256
    args = ["finetune", "--supernet", other, "--storage", url, "--study", "s", "--trial", "0"]
    refused(capsys, [*args, "--out", tmp_path / "m"], "searched another supernet")
    assert not (tmp_path / "m").exists()


@pytest.mark.slow  # a process of its own
def test_an_unreachable_ray_cluster_is_refused_at_once(net, tmp_path):
    pytest.importorskip("ray")
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "vitpareto.search.cli", "search", "--supernet", str(net),
         "--storage", f"sqlite:///{tmp_path / 'r.db'}", "--study", "r", "--backend", "ray",
         "--address", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "no Ray cluster answers at '127.0.0.1:1'" in out.stderr
    assert "Traceback" not in out.stderr and time.monotonic() - start < 60
    assert not (tmp_path / "r.db").exists()


def test_a_disk_too_small_for_the_checkpoint_is_found_before_training(
    capsys, tmp_path, monkeypatch
):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    refused(capsys, [*TRAIN, "--out", tmp_path / "n.pt"], "MiB free", "choose another --out")
    assert not list(tmp_path.iterdir())


def test_a_full_disk_during_export_leaves_nothing_behind(capsys, net, db, tmp_path, monkeypatch):
    path, url = db
    real = os.replace

    def full(src, dst):
        if "trial_" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "models"
    # the full disk is the point: no timing, so no warning beside the one line
    args = ["export", "--storage", url, "--study", "s", "--pareto", "--out", out,
            "--no-portable", "--no-measure"]  # fmt: skip
    refused(capsys, [*args, "--supernet", net], "No space left on device")
    assert not out.exists()
