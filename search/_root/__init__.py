"""vitpareto: Pareto-optimal compressed Vision Transformers.

``vitpareto.load(dir)`` rebuilds an exported model; the rest lives in the subpackages
``vitpareto.spaces`` (what is searched), ``vitpareto.evaluators`` (how a candidate is
scored) and ``vitpareto.search`` (training, search, results, export). ``vitpareto.errors``
and ``vitpareto.files`` sit below them all.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"
__all__ = ["load"]


def load(path: str | os.PathLike, device: str = "cpu", trust: bool = False):
    """The compressed model exported to directory ``path`` (``vitpareto export``), in eval
    mode on ``device``: architecture from timm and the candidate, weights from safetensors,
    once every file matches the directory's manifest.json (``trust=True``: unchecked, for
    a directory without one or one changed on purpose)."""
    # imported here, not above: every subpackage imports vitpareto.errors, which loads
    # this package first, before any of them could be imported from it
    from vitpareto.search.outputs import load_model

    return load_model(path, device=device, trust=trust)
