"""benchmarks/RESULTS.md as a page of this site, results.md, read at each build: the
benchmarks write that file (each its own section), and the pages link to its tables
without a copy that could fall behind it."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
PAGE = "results.md"


def on_files(files, config, **kwargs):
    files.append(File.generated(config, PAGE, abs_src_path=str(RESULTS)))
    return files
