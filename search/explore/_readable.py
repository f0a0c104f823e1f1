"""A results database read whole before any work, what cannot be read named in one line.

Optuna reads a study's trials when they are first asked for, and fails there in its own
words: a damaged page as a ``StorageInternalError`` that blames "invalid data in the
commit", a stored value that is not JSON as a bare ``JSONDecodeError`` that names neither
the trial nor the attribute. ``readable`` turns both into what the user can do: restore
or recover a damaged file; see which trial's which attribute was changed by hand.
"""

from __future__ import annotations

import contextlib
import json
import shlex

import optuna
import sqlalchemy
import sqlalchemy.exc

from vitpareto.errors import VitParetoError

DAMAGE = ("malformed", "not a database")  # SQLite's words for a damaged file

# the JSON columns of Optuna's schema: table, what a row is called, its name column, its
# JSON column, and whether it belongs to a trial (else to a study)
_JSON_COLUMNS = (
    ("trial_user_attributes", "user attribute", "key", "value_json", True),
    ("trial_system_attributes", "system attribute", "key", "value_json", True),
    ("trial_params", "parameter", "param_name", "distribution_json", True),
    ("study_user_attributes", "user attribute", "key", "value_json", False),
    ("study_system_attributes", "system attribute", "key", "value_json", False),
)


def damaged(url: str, text: str) -> str:
    """What to do with a damaged database: restore a copy, or recover what is left."""
    where = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else "FILE"
    return (
        f"storage {url!r} is damaged ({text}); restore it from a copy, or save what is left "
        f"with `sqlite3 {shlex.quote(where)} .recover | sqlite3 recovered.db` and read that"
    )


def damage_of(error: BaseException) -> str | None:
    """SQLite's first line about a damaged file, when ``error`` (a SQLAlchemy error, or
    Optuna's ``StorageInternalError`` around one) is that; else None."""
    if isinstance(error, optuna.exceptions.StorageInternalError):
        error = error.__cause__ or error
    text = (str(getattr(error, "orig", error)).strip().splitlines() or [""])[0]
    return text if any(d in text for d in DAMAGE) else None


@contextlib.contextmanager
def readable(url: str, storage, study: str | None = None):
    """Reads of ``storage`` (an Optuna ``RDBStorage`` opened from ``url``) whose failures
    become one line: a damaged file, or a value of ``study`` (of any study: None) that is
    not JSON, its study, trial and attribute named."""
    try:
        yield
    except ValueError as e:  # JSON's own, or a number past Python's 4300 digits
        found = _undecodable(url, storage.engine, study)
        if found is None and not isinstance(e, json.JSONDecodeError):
            raise  # not a stored value's: Optuna's or ours, as it is
        raise VitParetoError(found or _unfound(url, study, e)) from None
    except (sqlalchemy.exc.DBAPIError, optuna.exceptions.StorageInternalError) as e:
        text = damage_of(e)
        if text is None:
            raise
        raise VitParetoError(damaged(url, text)) from None


def _undecodable(url: str, engine, study: str | None) -> str | None:
    """Which stored value is not JSON, found by decoding every JSON column the way Optuna
    does (None when every one decodes)."""
    for table, label, name_col, json_col, per_trial in _JSON_COLUMNS:
        join = (
            "JOIN trials t ON t.trial_id = a.trial_id JOIN studies s ON s.study_id = t.study_id"
            if per_trial
            else "JOIN studies s ON s.study_id = a.study_id"
        )
        number = "t.number" if per_trial else "NULL"
        sql = f"SELECT s.study_name, {number}, a.{name_col}, a.{json_col} FROM {table} a {join}"
        if study is not None:
            sql += " WHERE s.study_name = :study"
        try:
            with engine.connect() as conn:
                rows = conn.execute(sqlalchemy.text(sql), {"study": study}).fetchall()
        except sqlalchemy.exc.SQLAlchemyError:  # another schema: look no further there
            continue
        for owner, trial, name, text in rows:
            try:
                json.loads(text)
            except (TypeError, ValueError) as e:
                where = f"study {owner!r}" + ("" if trial is None else f", trial {trial}")
                return (
                    f"{where}: its {label} {name!r} is not valid JSON ({e}); the database "
                    "was changed by hand or by another program: restore it from a copy"
                )
    return None


def _unfound(url: str, study: str | None, error: ValueError) -> str:
    """A line about the study as a whole, when no single stored value is to blame."""
    what = f"study {study!r}" if study is not None else "a study"
    return (
        f"storage {url!r}: a value stored in {what} is not valid JSON ({error}); the database "
        "was changed by hand or by another program: restore it from a copy"
    )
