"""The one object every part of vitpareto takes: a point of the joint compression space."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vitpareto.errors import VitParetoError
from vitpareto.spaces._branches import EXIT_TYPES, check_design
from vitpareto.spaces._spec import ViTSpec, describe
from vitpareto.spaces._tokens import TOKEN_MODES, reduces

PER_BLOCK = ("heads", "qk_dim", "mlp", "keep", "token_mode")
# how the deployed artifact computes: float32; int8 by ONNX Runtime's own quantization
# (weights alone, activations quantized on the fly; or weights and activations, the
# activations' ranges calibrated on training images); or every weight and activation in
# bfloat16 or float16 (PyTorch runtimes, where the device computes them natively)
PRECISIONS = ("fp32", "int8-dynamic", "int8-static", "bf16", "fp16")
HALF = ("bf16", "fp16")
REQUIRED = ("patch_size", "heads", "qk_dim", "mlp", "keep")


@dataclass(frozen=True)
class Candidate:
    """A compressed ViT described by its knobs (see the README, "The Candidate").

    Blocks are 0-based; every per-block tuple has one entry per block.

    Attributes:
        patch_size: square patch side in pixels; must divide the image sides.
        heads: attention heads kept in each block (0 removes the attention branch).
        qk_dim: query/key channels kept per head in each block (same in every head).
        mlp: MLP hidden channels kept in each block (0 removes the MLP branch).
        keep: fraction r in (0, 1] of non-prefix tokens kept after each block's
            attention (``ceil(r * n)`` tokens).
        exits: blocks after which an early-exit classifier sits.
        exit_threshold: softmax confidence at which a sample leaves at an exit.
        fuse: the earlier spelling of ``token_mode="fuse"`` in every block; read only
            when ``token_mode`` is not given, and afterwards true when every block that
            reduces tokens fuses them.
        token_mode: how each block reduces its tokens to ``ceil(r * n)``: ``prune``
            (EViT: keep the tokens the class token attends to most), ``fuse`` (prune, and
            fuse the pruned ones into one extra token) or ``merge`` (ToMe: merge similar
            tokens, attention weighted by how many patches each stands for). A block that
            reduces no tokens (keep 1.0 or no heads) reads ``prune``.
        exit_types: the branch design of each exit, aligned with ``exits``: ``linear``
            (the model's head; the default), ``mlp``, ``attention`` (one transformer
            block) or ``conv`` (convolutions on the token grid, before any token
            reduction); one name sets every exit's.
        cascade: coarser patch sizes run first, coarsest first (an input-adaptive
            cascade): each stage is the candidate's model at that patch size, and a sample
            whose confidence there reaches the stage's threshold stops; the rest go on to
            the next stage, the last being the candidate itself, exits and all.
        cascade_thresholds: each cascade stage's softmax confidence to stop at.
        precision: how the deployed artifact computes (``PRECISIONS``): ``fp32``,
            ``int8-dynamic`` / ``int8-static`` (ONNX Runtime's quantization of the exported
            graph), or ``bf16`` / ``fp16`` (the model's weights and activations, under the
            PyTorch runtimes); the accuracy and latency of a candidate are its artifact's.
    """

    patch_size: int
    heads: tuple[int, ...]
    qk_dim: tuple[int, ...]
    mlp: tuple[int, ...]
    keep: tuple[float, ...]
    exits: tuple[int, ...] = ()
    exit_threshold: float = 1.0
    fuse: bool = dataclasses.field(default=False, compare=False)
    token_mode: tuple[str, ...] = ()
    exit_types: tuple[str, ...] = ()
    cascade: tuple[int, ...] = ()
    cascade_thresholds: tuple[float, ...] = ()
    precision: str = "fp32"

    def __post_init__(self):
        set_ = object.__setattr__
        if self.precision not in PRECISIONS:
            raise VitParetoError(
                f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        set_(self, "patch_size", _as_int("patch_size", self.patch_size))
        for name in ("heads", "qk_dim", "mlp"):
            values = getattr(self, name)
            set_(
                self,
                name,
                tuple(_as_int(f"{name}[{i}]", v) for i, v in enumerate(_seq(name, values))),
            )
        set_(
            self,
            "keep",
            tuple(_as_float(f"keep[{i}]", v) for i, v in enumerate(_seq("keep", self.keep))),
        )
        set_(
            self,
            "exits",
            tuple(_as_int(f"exits[{i}]", v) for i, v in enumerate(_seq("exits", self.exits))),
        )
        set_(self, "exit_threshold", _as_float("exit_threshold", self.exit_threshold))
        if not isinstance(self.fuse, bool):
            raise VitParetoError(f"fuse must be true or false, got {self.fuse!r}")
        modes = self.token_mode
        # one mode for every block, as Candidate.make takes it
        modes = (
            (modes,) * len(self.heads)
            if isinstance(modes, str)
            else tuple(_seq("token_mode", modes))
        )
        if not modes:
            modes = ("fuse" if self.fuse else "prune",) * len(self.heads)
        for i, m in enumerate(modes):
            if m not in TOKEN_MODES:
                raise VitParetoError(
                    f"token_mode[{i}]={m!r} is not a token mode; allowed: {', '.join(TOKEN_MODES)}"
                )
        set_(self, "token_mode", modes)
        depths = {name: len(getattr(self, name)) for name in PER_BLOCK}
        if len(set(depths.values())) != 1:
            raise VitParetoError(
                "heads, qk_dim, mlp, keep and token_mode need one entry per block; got lengths "
                + ", ".join(f"{k}={v}" for k, v in depths.items())
            )
        # a block that reduces no tokens has no mode: one candidate per computation
        reducing = [reduces(self, i) for i in range(len(modes))]
        modes = tuple(m if r else "prune" for m, r in zip(modes, reducing, strict=True))
        set_(self, "token_mode", modes)
        fused = [m == "fuse" for m, r in zip(modes, reducing, strict=True) if r]
        set_(self, "fuse", bool(fused) and all(fused))  # every reducing block fuses
        types = self.exit_types
        types = (types,) * len(self.exits) if isinstance(types, str) else _seq("exit_types", types)
        types = tuple(types) or ("linear",) * len(self.exits)
        if len(types) != len(self.exits):
            raise VitParetoError(
                f"exit_types needs one design per exit: {len(self.exits)} exit(s), "
                f"{len(types)} type(s)"
            )
        for j, t in enumerate(types):
            if t not in EXIT_TYPES:
                raise VitParetoError(
                    f"exit_types[{j}]={t!r} is not an exit design; allowed: {', '.join(EXIT_TYPES)}"
                )
        set_(self, "exit_types", types)
        stages = _seq("cascade", self.cascade)
        set_(self, "cascade", tuple(_as_int(f"cascade[{i}]", v) for i, v in enumerate(stages)))
        ts = _seq("cascade_thresholds", self.cascade_thresholds)
        ts = tuple(_as_float(f"cascade_thresholds[{i}]", v) for i, v in enumerate(ts))
        if len(ts) != len(self.cascade):
            raise VitParetoError(
                f"cascade_thresholds needs one threshold per cascade stage: "
                f"{len(self.cascade)} stage(s), {len(ts)} threshold(s)"
            )
        set_(self, "cascade_thresholds", ts)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def full(cls, model) -> Candidate:
        """The unmodified model: every head, channel, block and token kept, no exits."""
        s = describe(model)
        return cls(
            patch_size=s.patch_size,
            heads=(s.num_heads,) * s.depth,
            qk_dim=(s.head_dim,) * s.depth,
            mlp=s.mlp_hidden,
            keep=(1.0,) * s.depth,
        )

    @classmethod
    def make(cls, model, **knobs) -> Candidate:
        """Build a candidate from flexible input, the rest taken from the full model.

        Each per-block knob may be one value for every block, a mapping
        ``{block: value}`` (other blocks keep the full value) or a sequence with one
        value per block, e.g. ``Candidate.make(model, keep={3: 0.7, 6: 0.7}, heads=4)``.
        """
        base = cls.full(model)
        unknown = set(knobs) - {f.name for f in dataclasses.fields(cls) if f.init}
        if unknown:
            raise VitParetoError(f"unknown candidate field(s): {_names(unknown)}")
        for name in PER_BLOCK:
            if name in knobs:
                knobs[name] = _per_block(name, knobs[name], getattr(base, name))
        return base.replace(**knobs).validate(model)

    def replace(self, **changes) -> Candidate:
        if "fuse" in changes and "token_mode" not in changes:
            changes["token_mode"] = ()  # the earlier spelling sets every block's mode
        if "exits" in changes and "exit_types" not in changes:  # each kept exit keeps its design
            was = dict(zip(self.exits, self.exit_types, strict=True))
            exits = _seq("exits", changes["exits"])
            changes["exit_types"] = tuple(was.get(b, "linear") for b in exits)
        if "cascade" in changes and "cascade_thresholds" not in changes:  # stages keep theirs
            was = dict(zip(self.cascade, self.cascade_thresholds, strict=True))
            stages = [_as_int("cascade", p) for p in _seq("cascade", changes["cascade"])]
            changes["cascade_thresholds"] = tuple(was[p] for p in stages if p in was)
        return dataclasses.replace(self, **changes)

    # -- facts ----------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.heads)

    def removed(self, block: int) -> bool:
        """True when block has neither attention nor MLP left, so it is skipped entirely."""
        return self.heads[block] == 0 and self.mlp[block] == 0

    def validate(self, model) -> Candidate:
        """Check the candidate against a model; return it, or raise naming the bad field."""
        s: ViTSpec = describe(model)
        if self.depth != s.depth:
            raise VitParetoError(
                f"candidate has {self.depth} blocks but the model has {s.depth}; "
                f"per-block fields need {s.depth} entries"
            )
        h, w = s.img_size
        if self.patch_size < 1 or h % self.patch_size or w % self.patch_size:
            raise VitParetoError(
                f"patch_size={self.patch_size} does not divide the {h}x{w} image; "
                f"allowed: {', '.join(map(str, s.valid_patch_sizes()))}"
            )
        for i in range(s.depth):
            _check_range("heads", i, self.heads[i], 0, s.num_heads)
            _check_range("qk_dim", i, self.qk_dim[i], 1, s.head_dim)
            if s.rope and self.qk_dim[i] % 2:
                raise VitParetoError(
                    f"qk_dim[{i}]={self.qk_dim[i]} splits a rotary pair; this model rotates q "
                    "and k in pairs of channels: choose an even qk_dim"
                )
            _check_range("mlp", i, self.mlp[i], 0, s.mlp_hidden[i])
            r = self.keep[i]
            if not (0.0 < r <= 1.0) or math.isnan(r):
                raise VitParetoError(f"keep[{i}]={r} is out of range; allowed: (0, 1]")
            if r < 1.0 and self.heads[i] == 0:
                raise VitParetoError(
                    f"keep[{i}]={r} reduces tokens with block {i}'s attention, but heads[{i}]=0 "
                    f"removes it; use keep[{i}]=1.0 or keep a head"
                )
        if list(self.exits) != sorted(set(self.exits)):
            raise VitParetoError(f"exits={list(self.exits)} must be distinct and increasing")
        for j, b in enumerate(self.exits):
            if not 0 <= b <= s.depth - 2:
                raise VitParetoError(
                    f"exits[{j}]={b} is out of range; allowed blocks: 0..{s.depth - 2} "
                    "(the final head follows the last block)"
                )
        for j, (b, design) in enumerate(zip(self.exits, self.exit_types, strict=True)):
            check_design(s, design)
            first = self.reduced_by(b)
            if design == "conv" and first is not None:
                raise VitParetoError(
                    f"exit_types[{j}]='conv' reads the full token grid, but block {first} "
                    f"reduces tokens before exit {b}; choose another design for that exit "
                    "or keep every token up to it"
                )
        t = self.exit_threshold
        if not (0.0 < t <= 1.0) or math.isnan(t):
            raise VitParetoError(f"exit_threshold={t} is out of range; allowed: (0, 1]")
        self._check_cascade(s)
        return self

    def _check_cascade(self, s: ViTSpec) -> None:
        sizes = (*self.cascade, self.patch_size)
        if any(a <= b for a, b in zip(sizes, sizes[1:], strict=False)):
            raise VitParetoError(
                f"cascade={list(self.cascade)} must be patch sizes coarser than patch_size="
                f"{self.patch_size}, coarsest first (strictly decreasing)"
            )
        h, w = s.img_size
        for k, (p, t) in enumerate(zip(self.cascade, self.cascade_thresholds, strict=True)):
            if h % p or w % p:
                raise VitParetoError(
                    f"cascade[{k}]={p} does not divide the {h}x{w} image; allowed: "
                    f"{', '.join(map(str, s.valid_patch_sizes()))}"
                )
            if not (0.0 < t <= 1.0) or math.isnan(t):
                raise VitParetoError(
                    f"cascade_thresholds[{k}]={t} is out of range; allowed: (0, 1]"
                )
        if self.cascade and s.rope:
            raise VitParetoError(
                "a patch-size cascade is not offered for a model with rotary embeddings (each "
                "stage would need its own rotary table); leave cascade empty"
            )

    def reduced_by(self, block: int) -> int | None:
        """The first block up to ``block`` that reduces tokens, or None (the grid is whole)."""
        return next((i for i in range(block + 1) if reduces(self, i)), None)

    @property
    def routes(self) -> int:
        """Where a sample can leave before the final head: each cascade stage, each exit."""
        return len(self.cascade) + len(self.exits)

    def thresholds(self) -> tuple[float, ...]:
        """The confidence to leave at each route, in order (stages, then exits)."""
        return self.cascade_thresholds + (self.exit_threshold,) * len(self.exits)

    def stage(self, patch_size: int) -> Candidate:
        """Cascade stage at ``patch_size``: these knobs, static (no exits, no cascade)."""
        return self.replace(patch_size=patch_size, exits=(), cascade=(), exit_threshold=1.0)

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values; ``fuse`` is left out (``token_mode`` says it), and
        ``exit_types`` when every exit is ``linear``."""
        out = {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)
            if f.init and f.name != "fuse"
        }
        if all(t == "linear" for t in self.exit_types):
            del out["exit_types"]  # the default: candidates made before designs read the same
        if not self.cascade:
            del out["cascade"], out["cascade_thresholds"]
        if self.precision == "fp32":
            del out["precision"]  # the default: candidates made before precision read the same
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        if not isinstance(data, Mapping):
            raise VitParetoError(f"a candidate must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(data) - names
        if unknown:
            raise VitParetoError(f"unknown candidate field(s): {_names(unknown)}")
        missing = set(REQUIRED) - set(data)
        if missing:
            raise VitParetoError(f"candidate is missing field(s): {', '.join(sorted(missing))}")
        return cls(**data)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Candidate:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise VitParetoError(f"candidate is not valid JSON: {e}") from None
        return cls.from_dict(data)


def _seq(name: str, values) -> Sequence:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        what = " with one value per block" if name in PER_BLOCK else ""
        raise VitParetoError(f"{name} must be a list{what}, got {values!r}")
    return values


def _as_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
        raise VitParetoError(f"{name} must be an integer, got {v!r}")
    return int(v)


def _as_float(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise VitParetoError(f"{name} must be a number, got {v!r}")
    return float(v)


def _check_range(name: str, block: int, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise VitParetoError(
            f"{name}[{block}]={value} is out of range for block {block}; allowed: {lo}..{hi}"
        )


def _per_block(name: str, value, full: tuple) -> tuple:
    """Normalise one value / {block: value} / a sequence into a per-block tuple."""
    depth = len(full)
    if isinstance(value, Mapping):
        out = list(full)
        for b, v in value.items():
            if not isinstance(b, int) or not 0 <= b < depth:
                raise VitParetoError(
                    f"{name}: block {b!r} is out of range; allowed: 0..{depth - 1}"
                )
            out[b] = v
        return tuple(out)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (value,) * depth
    if isinstance(value, str) and name == "token_mode":
        return (value,) * depth
    return tuple(_seq(name, value))


def _names(keys) -> str:
    """Field names as a user wrote them, quoted where they are not plain names (a name
    holding a newline stays on one line)."""
    return ", ".join(k if k.isidentifier() else repr(k) for k in sorted(map(str, keys)))
