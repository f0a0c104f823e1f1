"""What the API reference (api.md, mkdocstrings) needs before it reads the source.

The packages are built from four folders (``pyproject.toml``'s ``package-dir``: the root
package from ``search/_root``, ``vitpareto.spaces`` from ``spaces``, ...), a layout the
source reader of mkdocstrings cannot follow: it looks for ``vitpareto/spaces/``. So each
build lays the packages out as a wheel would, as links under ``build/api/vitpareto``
(ignored by git), and mkdocs.yml points mkdocstrings there.

Docstrings write shapes in code spans (````[H][head_dim]````): bare brackets read as a
Markdown reference link, which strict mode refuses as a missing cross-reference.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "build" / "api"
PACKAGE_DIR = re.compile(r'^"(vitpareto[\w.]*)"\s*=\s*"([^"]+)"', re.M)  # package-dir lines


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


def on_startup(**kwargs) -> None:
    lay_out()  # before mkdocstrings starts: it keeps only the search paths that exist
