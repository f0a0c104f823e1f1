"""A results database other processes read while this one writes: opening it a second
time in this process (a search, then its front stage) must not drop this process's
locks on the file, or the next reader to close, finding itself last, deletes the write-
ahead log from under the open connections and every write after fails."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import create_trial

from vitpareto.search.explore import open_storage

pytestmark = pytest.mark.slow  # a reading process

READER = """
import pathlib, sqlite3, sys
n = 0
while True:  # what `vitpareto query` in another terminal does, over and over
    db = sqlite3.connect(sys.argv[1], timeout=30)
    db.execute("SELECT count(*) FROM trials").fetchall()
    db.close()
    n += 1
    if n == 20:  # it has opened and closed the file: say so
        pathlib.Path(sys.argv[2]).touch()
"""


def test_a_second_storage_beside_a_reader_keeps_writing(tmp_path):
    path = tmp_path / "r.db"
    url = f"sqlite:///{path}"
    first = open_storage(url)
    optuna.create_study(storage=first, study_name="s")
    reading = tmp_path / "reading"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), str(reading)])
    try:
        deadline = time.monotonic() + 60
        while not reading.exists():  # the reader opening and closing the file
            assert reader.poll() is None and time.monotonic() < deadline, "the reader failed"
            time.sleep(0.05)
        second = open_storage(url)  # the front stage's, while the search's is open
        for i in range(40):
            study = optuna.load_study(study_name="s", storage=(first, second)[i % 2])
            study.add_trial(create_trial(value=float(i), params={}, distributions={}))
    finally:
        reader.kill()
        reader.wait()
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 40
