"""Write a benchmark's table into benchmarks/RESULTS.md, replacing its own earlier section."""

from __future__ import annotations

import os
import platform
import re
from datetime import date
from pathlib import Path

import timm
import torch

from vitpareto.files import atomic_write

RESULTS = Path(__file__).with_name("RESULTS.md")


def stamp() -> str:
    """Date, machine, cores, torch threads, torch and timm: how a table's line begins."""
    machine = platform.processor() or platform.machine()
    return (
        f"{date.today().isoformat()}, {machine} ({os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}), torch {torch.__version__}, timm {timm.__version__}"
    )


def write_section(key: str, markdown: str, path: Path = RESULTS) -> None:
    """Put ``markdown`` between ``<!-- key -->`` markers, atomically; other sections stay."""
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}\n"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmark results\n\nEach section is written by the benchmark named in it; rerun it to refresh.\n"
    )
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block
    )
    atomic_write(path, text)
