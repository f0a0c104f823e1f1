"""Files written whole or not at all, and files read with limits.

Everything a crash could leave half-written (checkpoints, latency tables, space files,
model directories, benchmark results) goes through ``atomic_write`` or ``atomic_dir``:
the content is written beside its destination under a temporary name and moved into place
in one rename, so a reader sees the old file or the new one, never a mixture. What a
killed writer leaves behind is removed by the next write to the same destination (see
``_stale``). User-named files are read through ``read_bytes``, which takes regular files
only (a FIFO would hang, ``/dev/zero`` would never end) and refuses those above a size
limit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from vitpareto.errors import VitParetoError

Content = bytes | str | Callable[[Path], None]
STALE_S = 3600  # seconds since its last change before a writer's leftover may be removed


def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


@contextlib.contextmanager
def _held(tmp: Path) -> Iterator[None]:
    """Hold a shared lock on ``tmp`` (a file or a directory that exists) until the block
    ends: the sign ``_stale`` reads that a live writer still uses it. A file system
    without locks leaves it unlocked; the age rule alone protects it then."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)  # the lock goes with it


def _stale(path: Path) -> None:
    """Remove what killed writers left beside ``path``: ``.NAME.<12 hex>.tmp`` files and
    folders that nothing changed for ``STALE_S`` seconds and that no process holds locked.

    Every writer holds a lock on its temporary file from the moment it makes it until it
    is renamed into place, and a process's locks end with it; so a temporary file that can
    be locked here belongs to no live writer on this machine. The age rule covers what
    locks cannot see: the instant between a writer making its file and locking it, a
    writer on another machine sharing the folder, a file system without locks, and writers
    of older versions that took no lock. Anything unsure (a lock refused, a file gone
    meanwhile) is left alone; nothing here ever raises. (A directory that ``atomic_dir``
    was replacing, left under a temporary name by a kill between its two renames, goes
    too: the write that finds it is making that destination anew.)"""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{12}}\.tmp")
    with contextlib.suppress(OSError):
        for tmp in path.parent.iterdir():
            if pattern.fullmatch(tmp.name) and not tmp.is_symlink():
                with contextlib.suppress(OSError):
                    _remove_if_stale(tmp)


def _remove_if_stale(tmp: Path) -> None:
    """``tmp`` removed when unchanged for ``STALE_S`` and not locked by any process."""
    newest = tmp.lstat().st_mtime
    for folder, dirs, names in os.walk(tmp):  # a folder's newest file, links not followed
        for name in (*dirs, *names):
            newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    if time.time() - newest < STALE_S:
        return
    fd = os.open(tmp, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer's (or locks not supported): left alone
            return
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _write(dest: Path, content: Content) -> None:
    if callable(content):
        content(dest)
    elif isinstance(content, bytes):
        dest.write_bytes(content)
    else:
        dest.write_text(content)


def check_parent(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` if it can be written: its nearest existing ancestor is a writable directory
    on a file system that holds files (nothing is left created); raises one clear error
    otherwise."""
    path = Path(path)
    for p in path.absolute().parents:
        if p.exists():
            if not p.is_dir():
                raise VitParetoError(f"{what} {str(path)!r}: {str(p)!r} is a file, not a directory")
            if not os.access(p, os.W_OK | os.X_OK):
                raise VitParetoError(f"{what} {str(path)!r}: {str(p)!r} is not writable")
            _check_file_system(path, p, what)
            return path
    raise VitParetoError(f"{what} {str(path)!r}: no directory above it exists")  # pragma: no cover


def _check_file_system(path: Path, folder: Path, what: str) -> None:
    """Refuse a ``folder`` on a read-only file system, or on a special one that holds no
    files (/proc, /sys: they report no blocks, and root passes every permission check
    there). A file system reporting no blocks is tried with a file made and removed at
    once, so that one merely reporting no size (some network mounts) is still taken."""
    try:
        fs = os.statvfs(folder)
    except OSError:  # no statvfs here: the write itself will say
        return
    if fs.f_flag & os.ST_RDONLY:
        raise VitParetoError(
            f"{what} {str(path)!r} cannot be written: {str(folder)!r} is on a read-only "
            "file system; choose another path"
        )
    if fs.f_blocks == 0:
        probe = folder / f".vitpareto-probe.{uuid.uuid4().hex[:12]}"
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            probe.unlink()
        except OSError:
            raise VitParetoError(
                f"{what} {str(path)!r} cannot be written: {str(folder)!r} is on a special "
                "file system (like /proc or /sys) that holds no files; choose another path"
            ) from None


def atomic_write(path: str | os.PathLike, content: Content) -> Path:
    """Write ``content`` (bytes, text, or a callable that writes the path it is given) to
    ``path`` in one rename; on any failure the destination is untouched and no temporary
    file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _stale(path)
    tmp = _temp_name(path)
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        with _held(tmp):
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
    if path.is_symlink():  # replacing it would drop the link; writing through, go elsewhere
        raise VitParetoError(
            f"{str(path)!r} is a symbolic link (to {os.readlink(path)!r}); vitpareto neither "
            "writes through nor replaces one, even with --force: remove it or choose another "
            "--out"
        )
    if path.exists() and not replace:
        raise VitParetoError(f"{str(path)!r} already exists; choose another path or pass --force")
    if path.exists() and not path.is_dir():
        raise VitParetoError(f"{str(path)!r} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    _stale(path)
    tmp = _temp_name(path)
    os.mkdir(tmp)  # mode 0o777 less the umask, as any directory the user makes
    old = None
    with contextlib.ExitStack() as locks:
        try:
            locks.enter_context(_held(tmp))
            for name, content in files.items():
                dest = tmp / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                _write(dest, content)
            if path.exists():
                # locked before it takes a temporary name: no other writer's _stale takes it
                locks.enter_context(_held(path))
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


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a regular file, read in chunks (a FIFO or a device is refused, not read)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise VitParetoError(f"{str(path)!r} cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise VitParetoError(f"{str(path)!r} is not a regular file")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
