"""Files written whole or not at all, and files read with limits.

Everything a crash could leave half-written (checkpoints, latency tables, space files,
model directories, benchmark results) goes through ``atomic_write`` or ``atomic_dir``:
the content is written beside its destination under a temporary name and moved into place
in one rename, so a reader sees the old file or the new one, never a mixture. User-named
files are read through ``read_bytes``, which takes regular files only (a FIFO would hang,
``/dev/zero`` would never end) and refuses those above a size limit.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from vitpareto.errors import VitParetoError

Content = bytes | str | Callable[[Path], None]


def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


def _write(dest: Path, content: Content) -> None:
    if callable(content):
        content(dest)
    elif isinstance(content, bytes):
        dest.write_bytes(content)
    else:
        dest.write_text(content)


def check_parent(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` if it can be written: its nearest existing ancestor is a writable directory
    (nothing is created); raises one clear error otherwise."""
    path = Path(path)
    for p in path.absolute().parents:
        if p.exists():
            if not p.is_dir():
                raise VitParetoError(f"{what} {str(path)!r}: {str(p)!r} is a file, not a directory")
            if not os.access(p, os.W_OK | os.X_OK):
                raise VitParetoError(f"{what} {str(path)!r}: {str(p)!r} is not writable")
            return path
    raise VitParetoError(f"{what} {str(path)!r}: no directory above it exists")  # pragma: no cover


def atomic_write(path: str | os.PathLike, content: Content) -> Path:
    """Write ``content`` (bytes, text, or a callable that writes the path it is given) to
    ``path`` in one rename; on any failure the destination is untouched and no temporary
    file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        _write(tmp, content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_dir(path: str | os.PathLike, files: Mapping[str, Content], replace: bool) -> Path:
    """Write ``files`` (relative name -> content) into a fresh directory that takes
    ``path``'s place in one rename; an existing ``path`` is replaced only when ``replace``."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not replace):
        raise VitParetoError(f"{str(path)!r} already exists; choose another path or pass --force")
    if path.exists() and not path.is_dir():
        raise VitParetoError(f"{str(path)!r} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    os.mkdir(tmp)  # mode 0o777 less the umask, as any directory the user makes
    old = None
    try:
        for name, content in files.items():
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            _write(dest, content)
        if path.exists():
            old = _temp_name(path)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)  # the old directory back where it was
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def read_bytes(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else (missing, a
    directory, a FIFO, a device, too large) is refused with one clear error."""
    path = Path(path)
    try:
        st = os.stat(path)  # follows links: a link to /dev/zero is a device
    except FileNotFoundError:
        raise VitParetoError(f"{what} {str(path)!r} does not exist") from None
    except OSError as e:
        raise VitParetoError(f"{what} {str(path)!r} cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise VitParetoError(f"{what} {str(path)!r} is {kind}")
    if st.st_size > limit:
        raise VitParetoError(
            f"{what} {str(path)!r} is {st.st_size:,} bytes, more than the {limit:,} allowed"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(min(limit, st.st_size) + 1)
    except OSError as e:
        raise VitParetoError(f"{what} {str(path)!r} cannot be read ({e.strerror})") from None
    if len(data) > limit or len(data) > st.st_size:  # it grew while being read
        raise VitParetoError(f"{what} {str(path)!r} changed while it was read; try again")
    return data


def read_text(path: str | os.PathLike, limit: int = 1 << 20, what: str = "file") -> str:
    """``read_bytes`` decoded as UTF-8, with one clear error for other encodings."""
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise VitParetoError(f"{what} {str(path)!r} is not UTF-8 text") from None
