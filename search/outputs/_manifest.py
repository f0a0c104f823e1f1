"""The manifest of a model directory: every file's SHA-256, checked before any is used.

A directory is copied to other machines and read there (``vitpareto.load``, ``bench``), so
nothing in it is taken on trust: after copying another trial's ``model.onnx`` over this
one, ``bench`` would time the other graph under this trial's name, and a hash written
inside ``config.json`` is switched off by deleting it. ``manifest.json`` lists every file
but itself and the card, and the card (README.md) carries the manifest's own SHA-256, so
a reader can check the manifest itself. A directory without one is refused unless the
user says ``trust`` (``--trust``): then nothing is checked.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from vitpareto.errors import VitParetoError
from vitpareto.files import Content, file_sha256, read_text
from vitpareto.search.outputs._schemas import Manifest, read_json

MANIFEST, CARD = "manifest.json", "README.md"
OWN = "manifest.json SHA-256:"  # the card's line holding the manifest's own hash
# the files a reader acts on: one present but not listed is refused, not used unchecked
KNOWN = (  # and any name starting with "model" (an ONNX graph's external data)
    "config.json",
    "model.safetensors",
    "metrics.json",
    "candidate.json",
    "model.onnx",
    "model.pt2",
    "model_static.onnx",
    "model_static.pt2",
)


def with_manifest(files: dict[str, Content]) -> dict[str, Content]:
    """``files`` (name -> content, as ``atomic_dir`` writes them) followed by the manifest
    of every one of them but the card, then the card ending with the manifest's SHA-256:
    both written once the files they describe are on disk."""
    card = files.get(CARD) or "# A vitpareto model\n\nLoad it with `vitpareto.load(dir)`.\n"
    names = sorted(n for n in files if n not in (CARD, MANIFEST))

    def manifest(dest: Path) -> None:
        listed = {n: file_sha256(dest.parent / n) for n in names}
        body = {"kind": "vitpareto-manifest", "format": 1, "files": listed}
        dest.write_text(json.dumps(body, indent=2) + "\n")

    def write_card(dest: Path) -> None:
        digest = file_sha256(dest.parent / MANIFEST)
        dest.write_text(f"{card.rstrip()}\n\n{OWN} `{digest}`\n")

    return {**{n: files[n] for n in names}, MANIFEST: manifest, CARD: write_card}


def _check_card(path: Path) -> None:
    """The manifest's own SHA-256 against the one its card (README.md) holds."""
    card = path / CARD
    if not card.exists():
        raise VitParetoError(
            f"{str(card)!r} is missing: the card holds {MANIFEST}'s SHA-256; restore it from "
            "a copy or export again, or pass --trust to use the directory unchecked"
        )
    found = re.search(rf"{re.escape(OWN)} `([0-9a-f]{{64}})`", read_text(card, 1 << 20, "card"))
    if found is None or found.group(1) != file_sha256(path / MANIFEST):
        raise VitParetoError(
            f"{str(path / MANIFEST)!r} changed after export (its SHA-256 differs from the one "
            f"{CARD} holds): restore both from a copy or export again; --trust uses it anyway"
        )


def verify_dir(path: str | os.PathLike, trust: bool = False) -> dict[str, str] | None:
    """The manifest's file hashes once every listed file matches it (None with ``trust``,
    where nothing is checked); one error naming the first file that differs, is missing,
    or is present but not listed."""
    path = Path(path)
    if trust:
        return None
    if not (path / MANIFEST).exists():
        raise VitParetoError(
            f"{str(path)!r} has no {MANIFEST}, so its files cannot be checked: export the "
            "model again with this vitpareto, or pass --trust (trust=True) to use them unchecked"
        )
    listed = read_json(path / MANIFEST, Manifest, "manifest").files
    _check_card(path)
    for name in sorted(set(KNOWN) | {p.name for p in path.glob("model*")}):
        if name not in listed and (path / name).exists():
            raise VitParetoError(
                f"{str(path / name)!r} is not in {MANIFEST}: it was added after export; "
                "remove it, or pass --trust to use the directory unchecked"
            )
    for name, expected in listed.items():
        if not (path / name).exists():
            raise VitParetoError(
                f"{str(path / name)!r} is missing (listed in {MANIFEST}); restore it from a copy"
            )
        if file_sha256(path / name) != expected:
            raise VitParetoError(
                f"{str(path / name)!r} changed after export (its SHA-256 differs from "
                f"{MANIFEST}'s): restore it from a copy or export again; --trust uses it anyway"
            )
    return listed
