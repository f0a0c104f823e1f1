"""The command line run as a test needs it: in this process (fast), or as a process of
its own (what a shell sees)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import torch

from vitpareto.search.cli import main

SMALL = ["--model", "test_vit", "--img-size", "32", "--num-classes", "10"]


def vitpareto(*args, cwd=None) -> subprocess.CompletedProcess:
    """``vitpareto ARGS`` run by the command line's ``main`` in this process, its output
    and exit code captured as a finished process's would be. A fresh interpreter per call
    paid half a minute of imports on a busy 2-core CI machine, forty times over; the tests
    of the process itself (``python -m``, warnings on stderr) use ``vitpareto_process``."""
    args = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    here, threads = os.getcwd(), torch.get_num_threads()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as e:  # argparse: --help, a usage error
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)  # --threads sets them for the process
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def vitpareto_process(*args, cwd=None) -> subprocess.CompletedProcess:
    """``python -m vitpareto.search.cli ARGS`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "vitpareto.search.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )
