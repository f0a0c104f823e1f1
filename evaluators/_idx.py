"""Reading IDX files (the MNIST family's format), gzipped or not, with their header and
size checked, so that a damaged file is named rather than read as noise."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from vitpareto.spaces import VitParetoError


def idx_file(root: Path, name: str) -> Path:
    """``root/name`` or ``root/name.gz``, whichever exists."""
    for path in (root / name, root / f"{name}.gz"):
        if path.is_file():
            return path
    raise VitParetoError(f"Fashion-MNIST file {root / name} (or .gz) is missing; put it in {root}")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped or not), checking its header and its size."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise VitParetoError(f"cannot read IDX file {path}: {e}; replace the file") from e
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes([0, 0, 0x08, ndim]):
        raise VitParetoError(
            f"{path} is not an unsigned-byte IDX file with {ndim} dimension(s) "
            f"(bad magic number {raw[:4].hex() or 'none'}); replace the file"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise VitParetoError(
            f"IDX file {path} is truncated or corrupt: header says shape {shape} "
            f"({expected} bytes) but the file has {len(raw)} bytes; replace the file"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
