"""The schemas of the files a model directory holds, read back through them.

``config.json``, ``metrics.json`` and ``manifest.json`` are read by ``vitpareto.load`` and
``bench`` wherever the user copied a directory, so they are input like any other: each is
read through one pydantic schema (types on every field the readers use, bounds on every
number) instead of checks scattered over the readers, and anything else is refused in one
line naming the file and the field. The model recipe inside ``config.json`` is bounded by
``check_recipe``, shared with checkpoints and studies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vitpareto.bounds import MAX_BATCH
from vitpareto.errors import VitParetoError
from vitpareto.evaluators import RUNTIMES
from vitpareto.files import read_text

MAX_JSON = 1 << 20  # bytes of a config.json, metrics.json or manifest.json
MAX_CLASSES = 10**6
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]
Batch = Annotated[int, Field(strict=True, ge=1, le=MAX_BATCH)]
Format = Annotated[int, Field(strict=True, ge=1, le=1)]  # 1; neither 1.0 nor true
Runtime = Literal[RUNTIMES]  # type: ignore[valid-type]


class ModelConfig(BaseModel):
    """``config.json``: what builds the model (recipe, candidate) and names its outputs."""

    model_config = ConfigDict(extra="ignore", strict=True)
    kind: Literal["vitpareto-model"]
    format: Format
    model: dict[str, Any]
    candidate: dict[str, Any]
    classes: list[Annotated[str, Field(max_length=1000)]] = Field(max_length=MAX_CLASSES)
    supernet_sha256: Sha256 | None = None
    weights_sha256: Sha256 | None = None
    preprocessing: dict[str, Any] | None = None


class Metrics(BaseModel):
    """``metrics.json``: the trial's figures; the fields ``bench`` acts on are typed and
    bounded, the rest are kept as written."""

    model_config = ConfigDict(extra="allow")
    runtime: Runtime | None = None
    deployed_runtime: Runtime | None = None
    batch_size: Batch | None = None
    deployed_batch: Batch | None = None
    latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    exit_fraction: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        default=None, max_length=1024
    )


class Manifest(BaseModel):
    """``manifest.json``: the SHA-256 of every file of the directory but itself and the
    card (which holds the manifest's own SHA-256)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal["vitpareto-manifest"]
    format: Format
    files: dict[FileName, Sha256] = Field(min_length=1, max_length=256)


def read_json(path: str | os.PathLike, schema: type[BaseModel], what: str) -> BaseModel:
    """The file at ``path`` parsed and checked against ``schema``; one error naming the
    file and the first field that is wrong otherwise (never a traceback, never a hang)."""
    path = Path(path)
    text = read_text(path, MAX_JSON, what)
    try:
        raw = json.loads(text)
    except ValueError as e:  # not JSON, or a number past Python's 4300 digits
        raise VitParetoError(f"{str(path)!r} is not valid JSON: {e}") from None
    except RecursionError:
        raise VitParetoError(f"{str(path)!r} is nested too deeply to be a {what}") from None
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise VitParetoError(f"{str(path)!r} is not a valid {what}: {_first(e)}") from None


def _first(e: ValidationError) -> str:
    """The first of a validation's errors, in a line: where, what, and how many more."""
    errors = e.errors(include_url=False, include_input=False)
    err = errors[0]
    where = ".".join(p if p.isidentifier() else repr(p) for p in map(str, err["loc"]))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return " ".join(f"{where or 'the file'}: {err['msg']}{more}".split())  # one line
