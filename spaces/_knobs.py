"""The knobs of a ``JointSpace`` declaration: each one's allowed choices, and how a YAML
value (a scalar, a list, or a mapping with choices, groups and blocks) is read and checked."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vitpareto.errors import VitParetoError
from vitpareto.files import read_text
from vitpareto.spaces._branches import EXIT_TYPES
from vitpareto.spaces._candidate import PER_BLOCK, PRECISIONS
from vitpareto.spaces._spec import ViTSpec
from vitpareto.spaces._tokens import TOKEN_MODES

MAX_FILE = 1 << 20  # bytes of a space file

GROUPINGS = ("block", "all")

# knob -> (type of a choice, test, description of the allowed choices)
_RULES = {
    "patch_size": (int, lambda v: v >= 1, "patch sides in pixels, >= 1"),
    "heads": (int, lambda v: v >= 0, "head counts >= 0 (0 removes the attention)"),
    "qk_dim": (float, lambda v: 0 < v <= 1, "fractions of head_dim in (0, 1]"),
    "mlp": (float, lambda v: 0 <= v <= 1, "fractions of the block's MLP width in [0, 1]"),
    "keep": (float, lambda v: 0 < v <= 1, "token keep ratios in (0, 1]"),
    "exit_threshold": (float, lambda v: 0 < v <= 1, "softmax confidences in (0, 1]"),
    "fuse": (bool, lambda v: True, "true or false"),
    "token_mode": (str, lambda v: v in TOKEN_MODES, "token modes: " + ", ".join(TOKEN_MODES)),
    "exit_types": (str, lambda v: v in EXIT_TYPES, "exit designs: " + ", ".join(EXIT_TYPES)),
    "cascade": (int, lambda v: v >= 1, "patch sides in pixels, >= 1"),
    "cascade_threshold": (float, lambda v: 0 < v <= 1, "softmax confidences in (0, 1]"),
    "precision": (str, lambda v: v in PRECISIONS, "precisions: " + ", ".join(PRECISIONS)),
}


@dataclass(frozen=True)
class Knob:
    """How one per-block knob (heads, qk_dim, mlp, keep, token_mode) is searched.

    Attributes:
        choices: values to choose from (heads: head counts; qk_dim and mlp: fractions of the
            full width; keep: token keep ratios; token_mode: prune, fuse, merge).
        groups: ``"block"`` (one parameter per block), ``"all"`` (one parameter shared by
            every searched block) or a tuple of block tuples (one parameter per group).
        blocks: the searched blocks; ``None`` means every block, or the blocks of explicit
            groups; for token_mode, the blocks whose keep ratio is searched. Blocks not
            searched keep their full value (token_mode: prune).
    """

    choices: tuple
    groups: str | tuple[tuple[int, ...], ...] = "block"
    blocks: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        groups = self.groups if isinstance(self.groups, str) else [list(g) for g in self.groups]
        out: dict[str, Any] = {"choices": list(self.choices), "groups": groups}
        if self.blocks is not None:
            out["blocks"] = list(self.blocks)
        return out


def read_choices(name: str, value) -> tuple:
    """Normalise a scalar or a list into a tuple of checked, distinct choices."""
    kind, ok, allowed = _RULES[name]
    if isinstance(value, str | bytes | Mapping):
        raise VitParetoError(f"{name}: expected a list of choices ({allowed}), got {value!r}")
    values = list(value) if isinstance(value, Sequence) else [value]
    if not values:
        raise VitParetoError(f"{name}: needs at least one choice ({allowed})")
    out = []
    for v in values:
        c = _coerce(kind, v)
        if c is None or not ok(c):
            raise VitParetoError(f"{name}: choice {v!r} is not allowed; choices are {allowed}")
        if c in out:
            raise VitParetoError(f"{name}: choice {v!r} is listed twice")
        out.append(c)
    return tuple(out)


def _coerce(kind: type, v):
    """v as a bool/int/float, or None when it is not one."""
    if kind is bool:
        return v if isinstance(v, bool) else None
    if kind is str:
        return v if isinstance(v, str) else None
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
        return None
    if kind is int:
        return int(v) if v == int(v) else None
    return float(v)


def read_blocks(name: str, value) -> tuple[int, ...]:
    """A non-empty list of distinct block indices >= 0."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise VitParetoError(f"{name}: blocks must be a non-empty list of block indices")
    out = []
    for b in value:
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise VitParetoError(f"{name}: block {b!r} is not a block index (an integer >= 0)")
        if b in out:
            raise VitParetoError(f"{name}: block {b} is listed twice")
        out.append(b)
    return tuple(out)


def read_knob(name: str, value) -> Knob:
    """Normalise a Knob, a dict like the YAML form, a list or a scalar into a checked Knob."""
    if isinstance(value, Knob):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        value = {"choices": value}
    unknown = set(value) - {"choices", "groups", "blocks"}
    if unknown:
        raise VitParetoError(
            f"{name}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
            "known: choices, groups, blocks"
        )
    if "choices" not in value:
        raise VitParetoError(f"{name}: choices are missing, e.g. {name}: {{choices: [...]}}")
    choices = read_choices(name, value["choices"])
    groups = value.get("groups", "block")
    if isinstance(groups, str):
        if groups not in GROUPINGS:
            raise VitParetoError(
                f"{name}: groups={groups!r} is not allowed; use block, all or a list of "
                "block lists like [[0, 1], [2, 3]]"
            )
    else:
        if not isinstance(groups, Sequence) or not groups:
            raise VitParetoError(
                f"{name}: groups must be block, all or a non-empty list of block lists"
            )
        groups = tuple(
            tuple(sorted(read_blocks(f"{name} group {g}", grp))) for g, grp in enumerate(groups)
        )
        flat = [b for g in groups for b in g]
        if len(flat) != len(set(flat)):
            raise VitParetoError(f"{name}: a block is in more than one group: {groups}")
    blocks = value.get("blocks")
    if blocks is not None:
        blocks = tuple(sorted(read_blocks(name, blocks)))
        if isinstance(groups, tuple) and set(blocks) != {b for g in groups for b in g}:
            raise VitParetoError(
                f"{name}: blocks {list(blocks)} differ from the blocks of the groups; "
                "give the groups alone"
            )
    return Knob(choices=choices, groups=groups, blocks=blocks)


def _format(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in (".yaml", ".yml"):
        return "yaml"
    if ext == ".json":
        return "json"
    raise VitParetoError(f"space file {path} must end in .yaml, .yml or .json")


def read_mapping(path: str | Path) -> Mapping:
    """The mapping a .yaml/.yml/.json space file holds (a regular file of at most 1 MiB)."""
    path = Path(path)
    fmt = _format(path)
    text = read_text(path, MAX_FILE, "space file")
    try:
        data = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise VitParetoError(f"space file {path} is not valid {fmt.upper()}: {e}") from None
    if not isinstance(data, Mapping):
        raise VitParetoError(f"space file {path} must hold a mapping of knobs")
    return data


def dump(data: dict[str, Any], path: str | Path) -> str:
    """``data`` as the text of a space file named ``path`` (YAML or JSON by extension)."""
    if _format(Path(path)) == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def absolute(knob: str, v, block: int, s: ViTSpec):
    """A choice as the candidate's value: fractions become channel counts."""
    if knob == "qk_dim":  # whole rotary pairs where q and k are rotated
        if s.rope:
            return max(2, 2 * int(round(v * s.head_dim / 2)))
        return max(1, int(round(v * s.head_dim)))
    if knob == "mlp":
        return int(round(v * s.mlp_hidden[block]))
    return v


def knob_blocks(knob: Knob, depth: int) -> tuple[int, ...]:
    """The blocks a knob searches: its own, those of its groups, or every block."""
    if knob.blocks is not None:
        return knob.blocks
    if isinstance(knob.groups, tuple):
        return tuple(sorted(b for g in knob.groups for b in g))
    return tuple(range(depth))


def read_exits(exits) -> dict[str, Any]:
    """The space's ``exits: {blocks, threshold, types}`` entry as its fields (none if absent)."""
    if exits is None:
        return {}
    if not isinstance(exits, Mapping) or set(exits) - {"blocks", "threshold", "types"}:
        raise VitParetoError(
            "exits must look like {blocks: [5, 8], threshold: [0.8, 0.9], types: [linear, "
            f"conv]}} (types optional), got {exits!r}"
        )
    if "blocks" not in exits:
        raise VitParetoError("exits: blocks is missing, e.g. exits: {blocks: [5, 8], ...}")
    return {
        "exits": exits["blocks"],
        "exit_threshold": exits.get("threshold"),
        "exit_types": exits.get("types"),
    }


def read_cascade(cascade) -> dict[str, Any]:
    """The space's ``cascade: {patch_sizes, threshold}`` entry as its fields (none if absent)."""
    if cascade is None:
        return {}
    if not isinstance(cascade, Mapping) or set(cascade) != {"patch_sizes", "threshold"}:
        raise VitParetoError(
            "cascade must look like {patch_sizes: [32, 16], threshold: [0.8, 0.9]} (the "
            f"coarse stages' patch sizes, each searched on or off, and their thresholds), got {cascade!r}"
        )
    return {"cascade": cascade["patch_sizes"], "cascade_threshold": cascade["threshold"]}


def check_against(space, s: ViTSpec) -> None:
    """Every choice and block of ``space`` checked against the model ``s`` describes."""
    h, w = s.img_size
    sizes = [("patch_size", p) for p in space.patch_size or ()]
    for name, p in sizes + [("cascade", p) for p in space.cascade or ()]:
        if h % p or w % p:
            raise VitParetoError(
                f"{name}: {p} does not divide the {h}x{w} image; allowed: "
                + ", ".join(map(str, s.valid_patch_sizes()))
            )
    if space.heads is not None and max(space.heads.choices) > s.num_heads:
        raise VitParetoError(
            f"heads: choice {max(space.heads.choices)} is above the model's {s.num_heads} "
            f"heads; allowed: 0..{s.num_heads}"
        )
    for name in PER_BLOCK:
        knob = getattr(space, name)
        for b in space._blocks(name, s.depth) if knob is not None else ():
            if b >= s.depth:
                raise VitParetoError(
                    f"{name}: block {b} is out of range; allowed: 0..{s.depth - 1}"
                )
    if s.rope and (space.cascade or "attention" in (space.exit_types or ())):
        raise VitParetoError(
            "this model has rotary embeddings: a cascade and attention exits are not offered "
            "for it; leave cascade out and choose exit types among linear, mlp and conv"
        )
    for b in space.exits or ():
        if b > s.depth - 2:
            raise VitParetoError(
                f"exits: block {b} is out of range; allowed: 0..{s.depth - 2} "
                "(the final head follows the last block)"
            )
