"""What the API reference (api.md, mkdocstrings) needs before it reads the source.

The packages are built from four folders (``pyproject.toml``'s ``package-dir``: the root
package from ``search/_root``, ``vitpareto.spaces`` from ``spaces``, ...), a layout the
source reader of mkdocstrings cannot follow: it looks for ``vitpareto/spaces/``. So each
build lays the packages out as a wheel would, as links under ``build/api/vitpareto``
(ignored by git), and mkdocs.yml points mkdocstrings there.

Some docstrings write shapes in brackets (``[H][head_dim]``), which Markdown reads as a
reference link and autorefs reports as a cross-reference it cannot find. Those are shown
as written; their warnings are counted and reported once, as information, so that strict
mode still fails on every other warning. A cross-reference to a dotted name (an API
object) that cannot be found still fails the build.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "build" / "api"
BRACKETED = re.compile(r"from \S+\.py:\d+: .*Could not find cross-reference target '[^.']+'$")
PACKAGE_DIR = re.compile(r'^"(vitpareto[\w.]*)"\s*=\s*"([^"]+)"', re.M)  # package-dir lines
log = logging.getLogger("mkdocs.hooks.api")


def lay_out() -> None:
    """``build/api/vitpareto/...``: each source folder linked where a wheel puts it."""
    text = (ROOT / "pyproject.toml").read_text()
    shutil.rmtree(TREE, ignore_errors=True)
    for name, folder in sorted(PACKAGE_DIR.findall(text)):
        where = TREE.joinpath(*name.split("."))
        if where.exists():  # inside a folder already linked
            continue
        source = ROOT / folder
        if name == "vitpareto":  # its folder sits inside another package's: link its files
            where.mkdir(parents=True)
            for f in source.glob("*.py"):
                (where / f.name).symlink_to(f)
        else:
            where.parent.mkdir(parents=True, exist_ok=True)
            where.symlink_to(source, target_is_directory=True)


class Bracketed(logging.Filter):
    """Drops autorefs' warnings about bracketed words in docstrings, counting them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno == logging.WARNING and BRACKETED.search(message):
            self.seen.append(message)
            return False
        return True


BRACKETS = Bracketed()


def on_startup(**kwargs) -> None:
    lay_out()  # before mkdocstrings starts: it keeps only the search paths that exist


def on_config(config, **kwargs):
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("mkdocs.plugins.mkdocs_autorefs"):
            logging.getLogger(name).addFilter(BRACKETS)
    BRACKETS.seen.clear()
    return config


def on_post_build(config, **kwargs) -> None:
    for message in BRACKETS.seen:
        log.info("bracketed words in a docstring, shown as written: %s", message)
