"""Mistakes once answered by a traceback or a misleading line: a damaged results database,
a stored candidate that is not one, outputs that cannot be written, files that are not
weights, and the leftovers of a killed write. Each is refused with one line naming what
is wrong and what to do (exit 2), before any work, with the files as they were."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import SMALL
from tests.helpers.hostile import READERS, copy_db, digest, export_args, reader_args, refused
from tests.helpers.searches import stored
from vitpareto.errors import VitParetoError
from vitpareto.files import atomic_dir, atomic_write, check_parent
from vitpareto.search.cli import main
from vitpareto.search.supernet import load_teacher
from vitpareto.spaces import create_model

# -- a damaged results database -------------------------------------------------------------


def _garble(path: Path, table: str) -> None:
    """Overwrite the root page of ``table`` with garbage; the header stays intact."""
    with contextlib.closing(sqlite3.connect(path)) as c:
        (page,) = c.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,)).fetchone()
        (size,) = c.execute("PRAGMA page_size").fetchone()
    data = bytearray(path.read_bytes())
    data[(page - 1) * size : page * size] = bytes((i * 37 + 11) % 256 for i in range(size))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("table", ["trial_user_attributes", "trials", "studies", "trial_values"])
@pytest.mark.parametrize("command", READERS)
def test_a_damaged_database_is_named_by_everyreader_args(capsys, net, db, tmp_path, table, command):
    path = copy_db(db[0], tmp_path / "r.db")
    _garble(path, table)
    before = digest(path)
    line = refused(capsys, reader_args(command, f"sqlite:///{path}", tmp_path, net),
                   "is damaged", "restore it from a copy", ".recover")  # fmt: skip
    assert "invalid data in the commit" not in line
    assert digest(path) == before
    assert not (tmp_path / "rep").exists() and not (tmp_path / "exp").exists()


# -- a stored candidate that is not one -----------------------------------------------------


def _set_candidate(path: Path, value_json: str) -> None:
    """Trial 1's stored candidate replaced by ``value_json`` (as another program would)."""
    with contextlib.closing(sqlite3.connect(path)) as c:
        c.execute(
            "UPDATE trial_user_attributes SET value_json=? WHERE key='candidate' AND trial_id="
            "(SELECT trial_id FROM trials WHERE number=1)",
            (value_json,),
        )
        c.commit()


def _candidate(db) -> dict:
    """The candidate trial 0 stored."""
    with contextlib.closing(sqlite3.connect(f"file:{db[0]}?mode=ro", uri=True)) as c:
        (text,) = c.execute(
            "SELECT value_json FROM trial_user_attributes WHERE key='candidate' AND trial_id="
            "(SELECT trial_id FROM trials WHERE number=0)"
        ).fetchone()
    return json.loads(text)


@pytest.mark.parametrize(
    "value_json",
    ["not json{", '"x"', "[1, 2]", "null", '{"patch_size": 8}', "{", '{"heads": 1e999}'],
)
@pytest.mark.parametrize("command", ["query", "report", "export"])
def test_a_stored_candidate_that_is_not_one_names_the_trial(
    capsys, net, db, tmp_path, command, value_json
):
    path = copy_db(db[0], tmp_path / "r.db")
    _set_candidate(path, value_json)
    before = stored(path)
    refused(
        capsys, reader_args(command, f"sqlite:///{path}", tmp_path, net), "trial 1", "'candidate'"
    )
    assert stored(path) == before
    assert not (tmp_path / "rep").exists() and not (tmp_path / "exp").exists()


@pytest.mark.parametrize(
    "change", [{"patch_size": 7}, {"heads": [9] * 6}, {"keep": [5.0] * 6}, {"exits": [99]}]
)
def test_a_candidate_that_does_not_fit_the_supernet_names_the_trial(
    capsys, net, db, tmp_path, change
):
    path = copy_db(db[0], tmp_path / "r.db")
    _set_candidate(path, json.dumps({**_candidate(db), **change}))
    refused(capsys, reader_args("export", f"sqlite:///{path}", tmp_path, net),
            "trial 1", "'candidate'", next(iter(change)))  # fmt: skip
    assert not (tmp_path / "exp").exists()


# -- outputs that cannot be written ---------------------------------------------------------

PROC = Path("/proc")
needs_proc = pytest.mark.skipif(
    not (PROC / "self").exists(), reason="needs a /proc file system (Linux)"
)


def test_space_out_under_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    refused(capsys, ["space", *SMALL, "--out", tmp_path / "f" / "s.yaml"],
            "is a file, not a directory")  # fmt: skip
    assert (tmp_path / "f").read_text() == "x" and sorted(tmp_path.iterdir()) == [tmp_path / "f"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes any directory")
def test_space_out_in_a_read_only_directory_is_refused(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    refused(capsys, ["space", *SMALL, "--out", ro / "s.yaml"], "not writable")
    assert not list(ro.iterdir())


@needs_proc
@pytest.mark.parametrize(
    "args",
    [
        ["space", *SMALL, "--out", PROC / "s.yaml"],
        ["train", *SMALL, "--dataset", "digits", "--out", PROC / "v.pt"],
    ],
)
def test_an_output_on_a_special_file_system_is_named_so(capsys, args):
    line = refused(capsys, args, "cannot be written", "special file system")
    assert "MiB free" not in line


@needs_proc
def test_check_parent_knows_a_special_file_system(tmp_path):
    with pytest.raises(VitParetoError, match="special file system"):
        check_parent(PROC / "v.pt", "--out")
    assert check_parent(tmp_path / "new" / "v.pt") == tmp_path / "new" / "v.pt"


# -- files that are not weights -------------------------------------------------------------


def test_a_text_file_as_checkpoint_names_the_formats_read(capsys, tmp_path):
    text = tmp_path / "some_text_file.db"
    text.write_text("hello, not weights\n")
    line = refused(capsys, ["space", *SMALL, "--checkpoint", text],
                   "is not a checkpoint vitpareto can read", "state dict", ".safetensors")  # fmt: skip
    assert "101" not in line


class _Payload:
    """An object whose unpickling runs a command: what a hostile 'checkpoint' holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_holding_code_is_refused_without_advice_to_run_it(capsys, net, db, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(tmp_path / "ran")}, evil)
    for args in (
        ["space", *SMALL, "--checkpoint", evil],
        ["export", "--storage", db[1], "--study", "s", "--trial", "0", "--out",
         tmp_path / "exp", "--supernet", evil, "--no-portable", "--no-measure"],
    ):  # fmt: skip
        line = refused(capsys, args, "objects other than tensors", "loads weights only")
        assert "weights_only" not in line and "False" not in line
    assert not (tmp_path / "ran").exists() and not (tmp_path / "exp").exists()


def test_non_finite_weights_are_refused_on_load_naming_the_tensor(capsys, tmp_path):
    state = create_model("test_vit", img_size=32, num_classes=10).state_dict()
    name = "blocks.2.mlp.fc1.weight"
    state[name].view(-1)[3] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    out = tmp_path / "n.pt"
    for args in (
        ["space", *SMALL, "--checkpoint", bad],
        ["train", *SMALL, "--dataset", "digits", "--checkpoint", bad, "--out", out],
    ):
        line = refused(capsys, args, "not finite", name)
        assert "training diverged" not in line and "last good epoch" not in line
    state[name].view(-1)[3] = float("inf")
    torch.save(state, bad)
    refused(capsys, ["space", *SMALL, "--checkpoint", bad], "not finite", name)
    assert not out.exists()


def test_an_existing_teacher_file_is_a_file_whatever_its_suffix(net, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("teacher").write_bytes(Path(net).read_bytes())  # a checkpoint without a suffix
    model, record = load_teacher("teacher")
    assert record["checkpoint"] == str((tmp_path / "teacher").resolve())
    Path("notes").write_text("not a model")
    with pytest.raises(VitParetoError, match="is not a vitpareto checkpoint"):
        load_teacher("notes", pretrained=True)


def test_export_force_onto_a_symbolic_link_says_so(capsys, net, db, tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (out / "trial_1").symlink_to(target)
    line = refused(capsys, export_args(db[1], out, net, "--force"),
                   "symbolic link", "remove it or choose another --out")  # fmt: skip
    assert "pass --force" not in line
    assert (out / "trial_1").is_symlink() and not list(target.iterdir())
    with pytest.raises(VitParetoError, match="symbolic link"):
        atomic_dir(out / "trial_1", {"a.txt": "a"}, replace=True)


@pytest.mark.parametrize("columns", [",", " , ,", ""])
def test_an_empty_column_list_is_refused(capsys, db, columns):
    refused(capsys, ["query", "--storage", db[1], "--study", "s", "--columns", columns],
            "--columns", "names no column")  # fmt: skip


# -- the leftovers of a killed write --------------------------------------------------------

HOUR = 3600


def _leftover(dest: Path, age: float, folder: bool = False, tag: str = "0123456789ab") -> Path:
    """A temporary file (or folder) beside ``dest`` as a killed writer leaves it, ``age``
    seconds old."""
    tmp = dest.parent / f".{dest.name}.{tag}.tmp"
    if folder:
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"\0" * 1000)
    else:
        tmp.write_bytes(b"\0" * 1000)
    stamp = time.time() - age
    for p in [*tmp.rglob("*"), tmp]:
        os.utime(p, (stamp, stamp))
    return tmp


def test_a_stale_temporary_file_is_removed_at_the_next_write(tmp_path):
    dest = tmp_path / "n.pt"
    stale = _leftover(dest, 2 * HOUR)
    fresh = _leftover(dest, 60, tag="fedcba987654")
    others = [
        _leftover(tmp_path / "other.pt", 2 * HOUR),  # another destination's
        tmp_path / f".{dest.name}.not-hex-at-all.tmp",  # not a name we make
    ]
    others[1].write_text("x")
    os.utime(others[1], (time.time() - 2 * HOUR,) * 2)
    atomic_write(dest, b"new")
    assert dest.read_bytes() == b"new"
    assert not stale.exists()
    assert fresh.exists() and all(p.exists() for p in others)


def test_a_temporary_file_a_live_writer_holds_is_never_removed(tmp_path):
    """A writer holds a lock on its temporary file until it is renamed: however old its
    last change (a long export that writes nothing for a while), it stays."""
    dest = tmp_path / "n.pt"
    held = _leftover(dest, 2 * HOUR)
    with open(held, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)  # as the live writer's own lock
        atomic_write(dest, b"new")
        assert held.exists()
    atomic_write(dest, b"newer")  # the writer gone: its file is stale now
    assert not held.exists()


def test_a_live_writer_keeps_its_lock_while_it_writes(tmp_path):
    dest = tmp_path / "n.pt"
    seen = {}

    def write(tmp: Path) -> None:
        with open(tmp, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen["locked"] = False
            except BlockingIOError:
                seen["locked"] = True
        tmp.write_bytes(b"x")

    atomic_write(dest, write)
    assert seen == {"locked": True} and dest.read_bytes() == b"x"


def test_a_stale_temporary_folder_is_removed_at_the_nextexport_args(net, db, tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    stale = _leftover(out / "trial_1", 2 * HOUR, folder=True)
    assert main([str(a) for a in export_args(db[1], out, net)]) == 0
    assert not stale.exists() and (out / "trial_1" / "config.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["trial_1"]


def test_a_stale_temporary_folder_is_removed_by_atomic_dir(tmp_path):
    dest = tmp_path / "d"
    stale = _leftover(dest, 2 * HOUR, folder=True)
    fresh = _leftover(dest, 10, folder=True, tag="aaaaaaaaaaaa")
    atomic_dir(dest, {"a.txt": "a"}, replace=False)
    assert not stale.exists() and fresh.exists() and (dest / "a.txt").read_text() == "a"


_SLOW_WRITER = """
import sys, time
from pathlib import Path
from vitpareto.files import atomic_write

def slow(tmp):
    tmp.write_bytes(b"theirs")
    while not Path(sys.argv[2]).exists():
        time.sleep(0.05)

atomic_write(sys.argv[1], slow)
"""


def _started(dest: Path, go: Path) -> tuple[subprocess.Popen, Path]:
    """A process writing ``dest`` that waits, mid-write, until ``go`` exists; its temp file."""
    child = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(dest), str(go)])
    deadline = time.time() + 60
    while (
        not (found := list(dest.parent.glob(f".{dest.name}.*.tmp"))) or not found[0].stat().st_size
    ):
        assert time.time() < deadline and child.poll() is None
        time.sleep(0.05)
    stamp = time.time() - 2 * HOUR  # as if it had written nothing for two hours
    os.utime(found[0], (stamp, stamp))
    return child, found[0]


def test_a_live_writer_in_another_process_keeps_its_file_a_killed_one_does_not(tmp_path):
    dest = tmp_path / "n.pt"
    child, tmp = _started(dest, tmp_path / "go")
    atomic_write(tmp_path / "n.pt", b"ours")  # another writer meanwhile: leaves it alone
    assert tmp.exists()
    (tmp_path / "go").touch()
    assert child.wait(60) == 0 and dest.read_bytes() == b"theirs" and not tmp.exists()

    (tmp_path / "go").unlink()
    child, tmp = _started(dest, tmp_path / "go")
    child.send_signal(signal.SIGKILL)  # killed mid-write: its file left behind, unlocked
    child.wait(60)
    assert tmp.exists()
    atomic_write(dest, b"next")
    assert not tmp.exists() and dest.read_bytes() == b"next"
