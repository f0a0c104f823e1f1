"""Results on a location nobody can write (a shared read-only mount): read the way SQLite
supports, or refused with the fix; never read as if a write-ahead log were not there."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from tests.helpers.hostile import copy_db, digest
from vitpareto.search.cli import main

pytestmark = pytest.mark.slow  # processes, a read-only mount


@contextlib.contextmanager
def _read_only(folder):
    """``folder`` and every file in it unwritable, as on a read-only mount: immutable to
    root (chattr), without write bits to anyone else."""
    files = [folder, *folder.iterdir()]
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("needs chattr")
        made = subprocess.run(["chattr", "+i", *map(str, files)], capture_output=True)
        if made.returncode:
            pytest.skip("this file system cannot make a file immutable")
    else:
        for f in files:
            f.chmod(0o555 if f.is_dir() else 0o444)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", *map(str, files)], check=True)
        else:
            for f in files:
                f.chmod(0o755 if f.is_dir() else 0o644)


def test_a_database_on_a_read_only_location_is_read(capsys, small_study, tmp_path):
    """Results in a folder nobody can write (a shared read-only mount) are read: the
    database is in write-ahead logging, whose -shm file SQLite cannot make there."""
    shared = tmp_path / "shared"
    shared.mkdir()
    ro = copy_db(small_study[0], shared / "r.db")
    with contextlib.closing(sqlite3.connect(ro)) as conn:
        assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    before = digest(shared)
    url = f"sqlite:///{ro}"
    with _read_only(shared):
        assert main(["studies", "--storage", url]) == 0
        assert "s\t3 trials" in capsys.readouterr().out
        assert main(["query", "--storage", url, "--study", "s", "--columns", "accuracy"]) == 0
        assert "of 3 trials" in capsys.readouterr().out
    assert digest(shared) == before


def test_a_read_only_database_whose_log_holds_changes_is_read_or_named(
    capsys, small_study, tmp_path
):
    """A database left with changes only in its write-ahead log (its writer killed), on a
    location nobody can write: read through the log where SQLite can, else refused with
    the fix; never read as if the log were not there."""
    shared = tmp_path / "shared"
    shared.mkdir()
    ro = copy_db(small_study[0], shared / "r.db")
    script = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA journal_mode = WAL')\n"
        "c.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "c.execute(\"UPDATE studies SET study_name = 'moved'\"); c.commit(); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(ro)], check=True)
    assert (shared / "r.db-wal").stat().st_size > 0
    url = f"sqlite:///{ro}"
    with _read_only(shared):  # the log and its index beside it: read through them
        assert main(["studies", "--storage", url]) == 0
        assert capsys.readouterr().out.startswith("moved\t")  # the log's change is seen
    os.remove(shared / "r.db-shm")
    before = digest(shared)
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a read-only mount needs root and unshare")
    # a real read-only mount, in a mount namespace of the command's own: no index, none
    # can be made, the log cannot be read (an immutable folder would still let it be)
    mount = f'mount --bind -o ro {shared} {shared} && exec "$0" "$@"'
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", mount, sys.executable, "-m", "vitpareto.search.cli",
         "studies", "--storage", url],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    if out.stderr.startswith("mount:"):
        pytest.skip(f"no read-only mount here: {out.stderr.strip()}")
    assert out.returncode == 2, out
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert "write-ahead log" in out.stderr and "copy" in out.stderr, out.stderr
    assert digest(shared) == before
