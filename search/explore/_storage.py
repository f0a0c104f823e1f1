"""The results database: an Optuna RDB storage (SQLite by default, PostgreSQL for clusters).

``open_storage`` tells apart the ways a database can be wrong before Optuna touches it (no
database there, not a database, damaged, locked by another process, another program's
tables, a schema of another Optuna version, read-only) and says which, with what to do.
SQLite runs in write-ahead-log mode: readers never block the search's writes, and a
commit costs no disk flush of its own (a killed process loses nothing it committed).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.exc

from vitpareto.bounds import environment_number
from vitpareto.errors import VitParetoError
from vitpareto.search.explore._readable import damage_of, damaged, readable

DEFAULT_STORAGE = "sqlite:///results/vitpareto.db"
HEARTBEAT_S = 10
MAX_NAME = 250  # characters of a study name, NAME/front included: within every backend's column
_OPTUNA_TABLES = {"studies", "trials", "version_info", "alembic_version"}


def lock_timeout() -> float:
    """Seconds to wait for a database another process holds locked: VITPARETO_DB_TIMEOUT,
    read when a database is opened and checked against its bounds (one error, not a
    traceback at import, for ``abc``, ``nan`` or ``-1``)."""
    return environment_number("VITPARETO_DB_TIMEOUT")


def check_study_name(name: str) -> str:
    """A study name every storage accepts, or one clear error."""
    if not isinstance(name, str) or not name.strip():
        raise VitParetoError("--study must name a study (an empty name was given)")
    if len(name) > MAX_NAME - len("/front"):
        raise VitParetoError(
            f"--study is {len(name)} characters; at most {MAX_NAME - len('/front')} fit every "
            "results database"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise VitParetoError(f"--study {name!r} holds control characters; use printable ones")
    return name


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (None for other databases)."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def open_storage(url: str, create: bool = True, write: bool = True):
    """An Optuna RDB storage with a heartbeat (crashed trials are failed, then retried).

    ``create``: a missing database is made; else it must exist. ``write``: the caller
    will write (a read-only file is refused up front)."""
    # heartbeats and retries are marked experimental; they are what resuming relies on, and
    # the trial loop sends the heartbeats Study.optimize would
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    if not isinstance(url, str) or "://" not in url:
        raise VitParetoError(
            f"--storage {url!r} is not a database URL; e.g. sqlite:///results/vitpareto.db "
            "or postgresql://user:password@host/db"
        )
    lock_timeout()  # a malformed setting refused before anything is created
    path = sqlite_path(url)
    engine_url = url
    if path is not None:
        engine_url = _check_sqlite(url, path, create, write)
    for attempt in range(6):
        try:
            storage = optuna.storages.RDBStorage(
                engine_url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=3 * HEARTBEAT_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=2
                ),
            )
            if path is not None:
                _sqlite_pragmas(storage, write)
            return storage
        except sqlalchemy.exc.IntegrityError:
            # processes started together on a new database race to create its tables;
            # the loser finds them made on its next try
            if attempt == 5:
                raise
        except sqlalchemy.exc.OperationalError as e:
            # a lock, or another process creating the same tables ("already exists"): the
            # race is lost, and the next try finds them made
            racing = "locked" in str(e) or "already exists" in str(e)
            if not racing or attempt == 5:
                raise VitParetoError(_operational(url, e)) from None
        except sqlalchemy.exc.DatabaseError as e:  # "malformed", "not a database": damaged
            # ... or PostgreSQL's "relation already exists": processes creating a new
            # database's tables together, whose loser finds them made on its next try
            if "already exists" not in str(e) or attempt == 5:
                raise VitParetoError(_operational(url, e)) from None
        except ImportError as e:
            hint = "pip install 'vitpareto[postgres]'" if url.startswith("postgres") else str(e)
            raise VitParetoError(f"storage {url!r} needs a database driver: {hint}") from None
        except RuntimeError as e:
            text = _schema_message(engine_url, str(e))
            raise VitParetoError(f"storage {url!r}: {text}") from None
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
            if "already exists" not in str(e) or attempt == 5:  # the same race, wrapped
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise VitParetoError(
                    f"storage {url!r} cannot be opened as a results database: {first}"
                ) from None
        time.sleep(0.2 * 2**attempt)


def _operational(url: str, e: Exception) -> str:
    text = (str(getattr(e, "orig", e)).strip().splitlines() or [type(e).__name__])[0]
    if "locked" in text:
        return (
            f"storage {url!r} has been locked by another process for {lock_timeout():g} s; "
            "try again when it is done (VITPARETO_DB_TIMEOUT sets the wait)"
        )
    if "readonly" in text or "read-only" in text:
        return f"storage {url!r} is read-only; make it writable or copy it somewhere writable"
    if "full" in text or "No space" in text:
        return f"storage {url!r} cannot be written ({text}); free some disk space"
    if "disk I/O" in text:
        return (
            f"storage {url!r} could not be read or written ({text}); check the free disk "
            "space and that no other process is replacing the file, then try again"
        )
    if damage_of(e) is not None:
        return damaged(url, text)
    return f"storage {url!r} cannot be opened as a results database: {text}"


def _schema_message(url: str, text: str) -> str:
    """Why Optuna refused a database's schema: older (it can be upgraded) or newer than
    this Optuna knows (upgrade Optuna)."""
    known = optuna.storages.RDBStorage("sqlite:///:memory:").get_all_versions()
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            found = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version"))
            version = found.scalar()
        engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError:
        version = None
    if version is not None and version not in known:
        return (
            f"its schema ({version}) was made by a newer Optuna than this one "
            f"({optuna.__version__}); upgrade optuna"
        )
    if version is not None and version != known[0]:
        return (
            f"its schema ({version}) was made by an older Optuna; upgrade it with `optuna "
            "storage upgrade --storage URL` (back the database up first)"
        )
    return f"cannot be opened as a results database: {text.splitlines()[0]}"


def _check_sqlite(url: str, path: Path, create: bool, write: bool) -> str:
    """Tell apart what can be wrong with an SQLite file before Optuna opens it; the URL to
    open it by (for a reader of a file it cannot write, one SQLite opens read-only)."""
    if path.is_dir():
        raise VitParetoError(f"storage {url!r}: {str(path)!r} is a directory; name a file")
    if not path.exists():
        if not create:
            raise VitParetoError(
                f"storage {url!r}: no database at {str(path)!r}; run `vitpareto search` first"
            )
        for p in (path.parent, *path.parent.parents):
            if p.exists():
                if not p.is_dir():
                    raise VitParetoError(f"storage {url!r}: {str(p)!r} is a file, not a directory")
                break
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VitParetoError(
                f"storage {url!r}: cannot create {str(path.parent)!r} ({e.strerror})"
            ) from None
        if not os.access(path.parent, os.W_OK):
            raise VitParetoError(f"storage {url!r}: {str(path.parent)!r} is not writable")
        return url
    if not path.is_file():
        raise VitParetoError(f"storage {url!r}: {str(path)!r} is not a regular file")
    if write and not os.access(path, os.W_OK):
        raise VitParetoError(
            f"storage {url!r}: {str(path)!r} is read-only; make it writable or copy it"
        )
    head = _header(path)  # the magic string, then the header up to the journal mode
    if not head:
        if not create:
            raise VitParetoError(f"storage {url!r}: {str(path)!r} is empty; no studies in it")
        return url
    if head[:16] != b"SQLite format 3\x00":
        raise VitParetoError(
            f"storage {url!r}: {str(path)!r} is not an SQLite database; give another path"
        )
    wal = head[18:20] == b"\x02\x02"
    fixed = None if write else read_only_uri(url, path, wal)
    tables = _tables(url, path, wal=wal, uri=fixed)
    if tables is None:  # in use by other processes: Optuna's opening reads it as they do
        return url
    if tables and not tables & _OPTUNA_TABLES:
        raise VitParetoError(
            f"storage {url!r}: {str(path)!r} is an SQLite database of another program "
            "(no Optuna tables); give another path"
        )
    if not tables and not create:
        raise VitParetoError(f"storage {url!r}: {str(path)!r} holds no studies")
    return url if fixed is None else "sqlite:///" + fixed + "&uri=true"


def read_only_uri(url: str, path: Path, wal: bool) -> str | None:
    """An SQLite URI that reads ``path`` where this process can write neither it nor its
    folder (a read-only mount, a shared results folder), None where it can.

    A database in write-ahead logging needs its ``-shm`` and ``-wal`` files made beside
    it, so SQLite's plain read-only mode fails there ("unable to open database file").
    Nothing can write such a file, so it is opened as immutable: no locks, no log. A log
    left beside it with changes not yet merged into the file would be ignored that way:
    then the file is read through the log in read-only mode, or refused with the fix."""
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        return None
    base = path.resolve().as_uri()  # '#' and '?' in the path escaped
    log = path.with_name(path.name + "-wal")
    if not wal or not log.exists() or log.stat().st_size == 0:
        return base + "?immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(base + "?mode=ro", uri=True)) as db:
            db.execute("SELECT name FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError:
        raise VitParetoError(
            f"storage {url!r}: {str(path)!r} is on a location this process cannot write, "
            f"and its write-ahead log {log.name!r} holds changes not yet merged into it; "
            "copy the database with its -wal file somewhere writable (or open it once "
            "where it can be written) and read that"
        ) from None
    return base + "?mode=ro"


TRANSIENT = ("disk I/O error", "not a database", "malformed")  # see _tables
_HEADERS: dict[tuple[int, int], int] = {}  # (device, inode) -> a descriptor kept open


def _header(path: Path) -> bytes:
    """The first 20 bytes of a database file, read through a descriptor this process never
    closes: closing any descriptor of a file drops every POSIX lock the process holds on it,
    SQLite's included, and the next process to close the database, finding itself the last,
    deletes the write-ahead log from under this process's connections (each write after
    fails with a disk I/O error; SQLite's "How To Corrupt", 2.2)."""
    st = path.stat()
    key = (st.st_dev, st.st_ino)
    fd = _HEADERS.get(key)
    if fd is not None and os.fstat(fd).st_nlink == 0:  # a deleted file's inode, reused
        os.close(fd)  # its locks were on the deleted file's
        fd = None
    if fd is None:
        fd = _HEADERS[key] = os.open(path, os.O_RDONLY)
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 20)


def _tables(
    url: str, path: Path, wal: bool, attempts: int = 5, uri: str | None = None
) -> set[str] | None:
    """The tables of an SQLite file, read without writing (waiting while it is locked);
    None when a file in use could not be looked at (Optuna's own opening checks it then).

    A look at a database in write-ahead logging can fail ("disk I/O error", "file is not a
    database", "malformed") while other processes write and checkpoint it (a search's
    workers; with SQLite 3.40 for ten seconds and more, on a file found intact afterwards):
    such a failure is tried again, and a file in use is never called damaged for it.
    ``wal``: the file's header says write-ahead logging; such a file counts as in use even
    when its log is gone for a moment (deleted by the last connection as it closes); with
    a rollback journal instead, a read-only look is safe and a failure is final. ``uri``:
    how to open a file this process cannot write (``read_only_uri``)."""
    if uri is not None:
        wal = False
    else:
        uri = path.resolve().as_uri()  # as a URI: '#' and '?' in the path escaped
    if "?" not in uri and not wal:
        # a rollback journal: a read-only look cannot change the file; in write-ahead
        # logging, a plain connection takes part in its locking (a read-only one read
        # pages in the middle of other processes' checkpoints) and still writes nothing
        uri += "?mode=ro"
    for attempt in range(attempts if wal else 1):
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=lock_timeout())) as db:
                rows = db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                return {r[0] for r in rows}
        except sqlite3.DatabaseError as e:
            if wal and any(t in str(e) for t in TRANSIENT):
                time.sleep(0.2 * (attempt + 1))
                continue
            if isinstance(e, sqlite3.OperationalError):
                raise VitParetoError(_operational(url, e)) from None
            raise VitParetoError(damaged(url, str(e))) from None
    return None


def _sqlite_pragmas(storage, write: bool) -> None:
    """On every connection: wait for a lock up to ``lock_timeout()`` s; for a writer, write-ahead logging
    (a reader leaves the file exactly as it was)."""

    def pragmas(dbapi_conn, _record):
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(1000 * lock_timeout())}")
        if write:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections made before the listener get it too


def load_study(url: str, name: str, write: bool = False):
    """An existing study, or one clear error naming the studies that exist. Its attributes
    and trials are read here, before any work: a damaged file, or a value that is not JSON,
    is named now in one line (``readable``), not met later as Optuna's traceback."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_study_name(name)
    store = open_storage(url, create=False, write=write)
    with storage_errors(url), readable(url, store, name):
        try:
            study = optuna.load_study(study_name=name, storage=store)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(store)]
            raise VitParetoError(
                f"no study {name!r} in {url}; studies there: {', '.join(names) or 'none'}"
            ) from None
        # read now for their errors (the finished trials Optuna keeps: not read twice)
        study.user_attrs  # noqa: B018
        study.get_trials(deepcopy=False)
    return study


def study_names(url: str) -> list:
    """The summaries of every study in a database (which must exist)."""
    store = open_storage(url, create=False, write=False)
    with storage_errors(url), readable(url, store):
        return optuna.get_all_study_summaries(store)


@contextlib.contextmanager
def storage_errors(url: str):
    """A database failing mid-work (full disk, read-only, gone) as one clear error; what it
    committed before stays (every record is one transaction)."""
    try:
        yield
    except (sqlalchemy.exc.DBAPIError, optuna.exceptions.StorageInternalError) as e:
        # Optuna wraps the database's own error in StorageInternalError
        cause = e.__cause__ if isinstance(e, optuna.exceptions.StorageInternalError) else e
        if isinstance(cause, sqlalchemy.exc.OperationalError):
            raise VitParetoError(_operational(url, cause)) from None
        if (text := damage_of(cause)) is not None:  # "malformed" is no OperationalError
            raise VitParetoError(damaged(url, text)) from None
        first = (str(getattr(cause, "orig", cause)).strip().splitlines() or ["?"])[0]
        raise VitParetoError(f"storage {url!r} failed: {first}") from None
