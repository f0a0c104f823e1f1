"""JointSpace: one declaration of the searched knobs, from which every search backend derives.

The declaration says which knobs of a ``Candidate`` are searched and their choices. Both
backends read the same flat list of categorical parameters (``params()``): Optuna through
``suggest(trial)`` (define-by-run, ``trial.suggest_categorical`` only), and any other
driver (a Ray Tune param space, a trial's stored params) through ``decode(config)``. Both
turn parameter values into a candidate through one function (``_build``), so the same
values give the same candidate whichever drives the search.

Design: a ``JointSpace`` is a plain, model-independent declaration (what a YAML file holds).
Choices that depend on the model (per-block parameter names, fractions turned into channel
counts) need the model's shape, so ``bind(model)`` returns a copy that carries the model's
``ViTSpec``; ``params``, ``size``, ``suggest`` and ``decode`` need a bound space.
``JointSpace.default(model)`` and ``JointSpace.load(path, model)`` return bound spaces.

YAML form (a knob left out is not searched: every block keeps its full value; a knob with one
choice is fixed, not a parameter)::

    patch_size: [16, 28, 32]                 # patch sides, one categorical
    heads: {choices: [0, 2, 3], groups: block}   # absolute head counts (0 removes attention)
    qk_dim: {choices: [0.5, 1.0], groups: all}   # fractions of head_dim, >= 1 channel
    mlp: {choices: [0.5, 1.0], groups: [[0, 1, 2], [3, 4, 5]]}  # fractions of each MLP width
    keep: {blocks: [3, 6, 9], choices: [0.5, 0.7, 1.0]}  # token keep ratios in (0, 1]
    token_mode: [prune, merge]               # how those blocks reduce: prune, fuse, merge
    exits: {blocks: [5, 8], threshold: [0.8, 0.9], types: [linear, conv]}  # on/off, threshold, design

``groups`` is ``block`` (one parameter per block, the default), ``all`` (one parameter shared
by every searched block) or a list of block lists (one parameter per group). ``blocks`` limits
a per-block knob to those blocks (default: every block, or the blocks named in the groups;
for ``token_mode``, the blocks of ``keep``). ``fuse: [false, true]``, the earlier form of
``token_mode: [prune, fuse]`` with one choice for every block, still loads.

Parameter names: ``patch_size``, ``heads.b3`` (per block), ``heads.g0`` (group), ``heads``
(all blocks), ``keep.b3``, ``token_mode.b3``, ``exit.b5``, ``exit_type.b5``, ``exit_threshold``,
``fuse``.

Normalisation, identical in both backends because both go through ``_build``:

- a block whose heads are 0 has no attention to rank tokens by, so its keep becomes 1.0;
- a block that reduces no tokens has no token mode (the candidate reads ``prune``);
- ``exit_threshold`` is always a parameter when exits are declared (a static space suits
  GridSampler, multivariate TPE and Ray's fixed param space alike), and a candidate with no
  exit switched on gets ``exit_threshold=1.0``, the ``Candidate`` default;
- exit ``types`` (default ``[linear]``) are searched per exit; a ``conv`` exit reads the
  full token grid, so where a block before it reduces tokens the exit reads ``linear``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from vitpareto.errors import VitParetoError
from vitpareto.files import atomic_write
from vitpareto.spaces._candidate import PER_BLOCK, Candidate
from vitpareto.spaces._knobs import (
    Knob,
    absolute,
    check_against,
    dump,
    knob_blocks,
    read_blocks,
    read_cascade,
    read_choices,
    read_exits,
    read_knob,
    read_mapping,
)
from vitpareto.spaces._spec import ViTSpec, describe

if TYPE_CHECKING:
    import optuna

_KNOBS = ("patch_size", *PER_BLOCK, "exits", "fuse", "cascade", "precision")


class _Slot(NamedTuple):
    """One knob setting: a parameter (``param``), or a fixed value when ``param`` is None."""

    knob: str
    param: str | None
    blocks: tuple[int, ...]
    choices: tuple


@dataclass(frozen=True)
class JointSpace:
    """The searched knobs and their choices; ``None`` means not searched (full value).

    Construct it in Python with flexible input (a list of choices, a scalar, a ``Knob`` or a
    dict like the YAML form for per-block knobs), e.g.
    ``JointSpace(heads=[2, 3], keep={"blocks": [3, 6, 9], "choices": [0.5, 1.0]},
    exits=[5, 8], exit_threshold=[0.8, 0.9]).bind(model)``; or from a dict / file with
    ``from_dict`` / ``load``, where exits are written ``exits: {blocks: .., threshold: ..}``.
    Every value is checked here; the model-dependent checks run in ``validate``/``bind``.
    """

    patch_size: tuple[int, ...] | None = None
    heads: Knob | None = None
    qk_dim: Knob | None = None
    mlp: Knob | None = None
    keep: Knob | None = None
    token_mode: Knob | None = None
    exits: tuple[int, ...] | None = None
    exit_threshold: tuple[float, ...] | None = None
    fuse: tuple[bool, ...] | None = None
    exit_types: tuple[str, ...] | None = None
    cascade: tuple[int, ...] | None = None  # coarse stages' patch sizes, each on or off
    cascade_threshold: tuple[float, ...] | None = None
    precision: tuple[str, ...] | None = None  # the deployed artifact's arithmetic
    spec: ViTSpec | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        set_ = object.__setattr__
        if (self.cascade is None) != (self.cascade_threshold is None):
            raise VitParetoError(
                "a cascade needs patch sizes and thresholds, e.g. cascade: {patch_sizes: [32], "
                "threshold: [0.8, 0.9]}"
            )
        for name in ("patch_size", "fuse", "cascade", "cascade_threshold", "precision"):
            if getattr(self, name) is not None:
                set_(self, name, read_choices(name, getattr(self, name)))
        for name in PER_BLOCK:
            if getattr(self, name) is not None:
                set_(self, name, read_knob(name, getattr(self, name)))
        if self.exits is not None:
            set_(self, "exits", tuple(sorted(read_blocks("exits", self.exits))))
            if self.exit_threshold is None:
                raise VitParetoError(
                    "exits need threshold choices, e.g. exits: {blocks: [5, 8], "
                    "threshold: [0.8, 0.9]}"
                )
            set_(self, "exit_threshold", read_choices("exit_threshold", self.exit_threshold))
            if self.exit_types is not None:
                set_(self, "exit_types", read_choices("exit_types", self.exit_types))
        elif self.exit_threshold is not None or self.exit_types is not None:
            raise VitParetoError(
                "exit thresholds or types are given but no exits; declare the exit blocks, e.g. "
                "exits: {blocks: [5, 8], threshold: [0.8, 0.9]}"
            )
        if self.fuse is not None and self.token_mode is not None:
            raise VitParetoError(  # fuse: [false, true], the earlier form of token_mode
                "the space declares both fuse and token_mode: declare token_mode alone"
            )
        if self.token_mode is not None and self.keep is None:
            raise VitParetoError(
                "token_mode chooses how the keep ratios reduce tokens, but the space has no "
                "keep: declare keep too, e.g. keep: {blocks: [3, 6, 9], choices: [0.5, 1.0]}"
            )
        if self.spec is not None and not isinstance(self.spec, ViTSpec):
            raise VitParetoError("spec must be a ViTSpec; use space.bind(model)")

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def default(cls, model) -> JointSpace:
        """A sensible space for any supported ViT, bound to it.

        Patch sides dividing the image in [base, 2*base]; heads per block from
        {ceil(H/2), ceil(3H/4), H}; qk_dim and mlp fractions 0.5/0.75/1.0; keep at blocks
        round(depth/4), round(depth/2), round(3*depth/4) (EViT's 3, 6, 9 for depth 12) with
        ratios 0.5/0.7/0.9/1.0, reduced by pruning; exits after blocks depth//2-1 and
        3*depth//4-1 (when before the last block) with thresholds 0.8/0.9/0.95.
        """
        s = describe(model)
        base, h, d = s.patch_size, s.num_heads, s.depth
        keep_blocks = sorted({round(d / 4), round(d / 2), round(3 * d / 4)} & set(range(d)))
        exits = sorted(b for b in {d // 2 - 1, 3 * d // 4 - 1} if 0 <= b < d - 1)
        patches = [p for p in s.valid_patch_sizes() if base <= p <= 2 * base]
        return cls(
            patch_size=patches or None,
            heads=sorted({math.ceil(h / 2), math.ceil(3 * h / 4), h}),
            qk_dim=[0.5, 0.75, 1.0],
            mlp=[0.5, 0.75, 1.0],
            keep={"blocks": keep_blocks, "choices": [0.5, 0.7, 0.9, 1.0]},
            exits=exits or None,
            exit_threshold=[0.8, 0.9, 0.95] if exits else None,
            fuse=[False],
        ).bind(s)

    def bind(self, model) -> JointSpace:
        """Return a copy that carries the model's shape (``ViTSpec``), after ``validate``."""
        spec = describe(model)
        self.validate(spec)
        return dataclasses.replace(self, spec=spec)

    def validate(self, model) -> JointSpace:
        """Check every choice and block against a model (or ViTSpec); return self or raise."""
        check_against(self, describe(model))
        return self

    # -- the parameters -------------------------------------------------------------------
    def params(self) -> dict[str, list]:
        """Parameter name -> its choices, in a stable order (fits Optuna's GridSampler)."""
        return {s.param: list(s.choices) for s in self._plan() if s.param is not None}

    def size(self) -> int:  # several combinations may decode to the same candidate
        """Number of parameter combinations."""
        return math.prod(len(c) for c in self.params().values())

    def suggest(self, trial: optuna.trial.BaseTrial) -> Candidate:
        """Sample a candidate in an Optuna objective with ``trial.suggest_categorical``."""
        values = {name: trial.suggest_categorical(name, c) for name, c in self.params().items()}
        return self._build(values)

    def decode(self, config: Mapping[str, Any]) -> Candidate:
        """The candidate of a parameter assignment (a Ray Tune config, a trial's params):
        every parameter present with one of its choices; other keys are ignored."""
        if not isinstance(config, Mapping):
            raise VitParetoError(f"config must be a mapping, got {type(config).__name__}")
        values = {}
        for name, choices in self.params().items():
            if name not in config:
                raise VitParetoError(f"config is missing parameter {name!r} of the space")
            v = config[name]
            if v not in choices:
                raise VitParetoError(f"config[{name!r}]={v!r} is not one of the choices {choices}")
            values[name] = choices[choices.index(v)]
        return self._build(values)

    def sample(self, rng) -> Candidate:
        """A uniformly random candidate (``rng``: a ``random.Random``)."""
        return self._build({name: rng.choice(c) for name, c in self.params().items()})

    def smallest(self) -> Candidate:
        """The cheapest candidate: fewest heads, channels and tokens, the largest patch, every
        exit on (so that supernet training reaches every exit head) at the lowest threshold
        (the most samples leave at the first exit: the least expected compute)."""
        return self._build(self.extreme_params())

    def extreme_params(self, largest: bool = False) -> dict[str, Any]:
        """The parameters of the cheapest candidate (``smallest``) or of the largest: most
        heads, channels and tokens, the smallest patch, no exit."""
        values = {}
        for name, choices in self.params().items():
            knob = name.split(".")[0]
            if knob in ("fuse", "cascade", "precision"):  # no cascade: the static pass alone
                values[name] = choices[0]
            elif knob == "token_mode":  # pruning adds no token and computes no matching
                values[name] = "prune" if "prune" in choices else choices[0]
            elif knob == "exit_type":  # the cheapest design, and the one every model holds
                values[name] = "linear" if "linear" in choices else choices[0]
            elif knob in ("patch_size", "exit"):
                values[name] = min(choices) if largest else max(choices)
            elif knob == "exit_threshold":  # the largest has no exit: its threshold is moot
                values[name] = min(choices)
            else:
                values[name] = max(choices) if largest else min(choices)
        return values

    # -- read / write ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The declaration in its YAML/JSON form; knobs not searched are left out."""
        out: dict[str, Any] = {}
        if self.patch_size is not None:
            out["patch_size"] = list(self.patch_size)
        for name in PER_BLOCK:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).to_dict()
        if self.exits is not None:
            out["exits"] = {"blocks": list(self.exits), "threshold": list(self.exit_threshold)}
            if self.exit_types is not None:
                out["exits"]["types"] = list(self.exit_types)
        if self.fuse is not None:
            out["fuse"] = list(self.fuse)
        if self.cascade is not None:
            out["cascade"] = {"patch_sizes": list(self.cascade)}
            out["cascade"]["threshold"] = list(self.cascade_threshold)
        if self.precision is not None:
            out["precision"] = list(self.precision)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], model=None) -> JointSpace:
        """Build from the YAML/JSON form; bound to ``model`` when one is given."""
        if not isinstance(data, Mapping):
            raise VitParetoError(f"a space must be a mapping of knobs, got {type(data).__name__}")
        unknown = [k for k in data if k not in _KNOBS]
        if unknown:
            raise VitParetoError(
                f"unknown knob(s) in the space: {', '.join(map(str, unknown))}; "
                f"known: {', '.join(_KNOBS)}"
            )
        kwargs = dict(data)
        kwargs.update(read_exits(kwargs.pop("exits", None)))
        kwargs.update(read_cascade(kwargs.pop("cascade", None)))
        space = cls(**kwargs)
        return space.bind(model) if model is not None else space

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> JointSpace:
        """Read a .yaml/.yml/.json space file; bound to ``model`` when one is given."""
        return cls.from_dict(read_mapping(path), model)

    def save(self, path: str | os.PathLike) -> None:
        """Write the declaration as YAML or JSON (by extension), atomically."""
        atomic_write(path, dump(self.to_dict(), path))

    def _spec(self) -> ViTSpec:
        if self.spec is None:
            raise VitParetoError("the space is not bound to a model; use space.bind(model)")
        return self.spec

    def _plan(self) -> list[_Slot]:
        """Every knob setting, parameters and fixed values, in the order of ``params``."""
        depth = self._spec().depth
        slots = []
        if self.patch_size is not None:
            slots.append(_slot("patch_size", "patch_size", (), self.patch_size))
        for name in PER_BLOCK:
            knob = getattr(self, name)
            if knob is None:
                continue
            if knob.groups == "block":
                for b in self._blocks(name, depth):
                    slots.append(_slot(name, f"{name}.b{b}", (b,), knob.choices))
            elif knob.groups == "all":
                slots.append(_slot(name, name, self._blocks(name, depth), knob.choices))
            else:
                for g, blocks in enumerate(knob.groups):
                    slots.append(_slot(name, f"{name}.g{g}", blocks, knob.choices))
        for b in self.exits or ():
            slots.append(_slot("exits", f"exit.b{b}", (b,), (False, True)))
            slots.append(
                _slot("exit_type", f"exit_type.b{b}", (b,), self.exit_types or ("linear",))
            )
        if self.exits is not None:
            slots.append(_slot("exit_threshold", "exit_threshold", (), self.exit_threshold))
        if self.fuse is not None:
            slots.append(_slot("fuse", "fuse", (), self.fuse))
        if self.precision is not None:
            slots.append(_slot("precision", "precision", (), self.precision))
        for q in self.cascade or ():  # a stage at patch size q, on or off, and its threshold
            slots.append(_slot("cascade", f"cascade.p{q}", (q,), (False, True)))
            slots.append(
                _slot("cascade_threshold", f"cascade_threshold.p{q}", (q,), self.cascade_threshold)
            )
        return slots

    def _blocks(self, name: str, depth: int) -> tuple[int, ...]:
        """The blocks a per-block knob searches (token_mode: those of keep by default)."""
        knob = getattr(self, name)
        if name == "token_mode" and knob.blocks is None and isinstance(knob.groups, str):
            return self._blocks("keep", depth) if self.keep is not None else tuple(range(depth))
        return knob_blocks(knob, depth)

    def _build(self, values: Mapping[str, Any]) -> Candidate:
        """The one translation from parameter values to a candidate, used by both backends."""
        s = self._spec()
        per_block = {
            "heads": [s.num_heads] * s.depth,
            "qk_dim": [s.head_dim] * s.depth,
            "mlp": list(s.mlp_hidden),
            "keep": [1.0] * s.depth,
            "token_mode": ["prune"] * s.depth,
        }
        knobs: dict[str, Any] = {"patch_size": s.patch_size, "exit_threshold": 1.0, "fuse": False}
        exits, choice = [], {}
        for slot in self._plan():
            v = values[slot.param] if slot.param is not None else slot.choices[0]
            if slot.knob == "exits":
                exits += list(slot.blocks) if v else []
            elif slot.knob in ("exit_type", "cascade", "cascade_threshold"):
                choice[slot.knob, slot.blocks[0]] = v  # an exit's design; a stage's on, threshold
            elif slot.knob in per_block:
                for b in slot.blocks:
                    per_block[slot.knob][b] = absolute(slot.knob, v, b, s)
            else:
                knobs[slot.knob] = v
        for b, h in enumerate(per_block["heads"]):
            if h == 0:  # no attention: no tokens to rank, no q/k channels to count
                per_block["keep"][b] = 1.0
                per_block["qk_dim"][b] = s.head_dim
        if knobs.pop("fuse"):
            per_block["token_mode"] = ["fuse"] * s.depth
        if not exits:
            knobs["exit_threshold"] = 1.0
        exits.sort()
        types = [choice["exit_type", b] for b in exits]
        stages = [q for q in self.cascade or () if choice["cascade", q] and q > knobs["patch_size"]]
        knobs["cascade"] = tuple(sorted(stages, reverse=True))  # coarsest first
        knobs["cascade_thresholds"] = tuple(
            choice["cascade_threshold", q] for q in knobs["cascade"]
        )
        cand = Candidate(exits=tuple(exits), exit_types=tuple(types), **knobs, **per_block)
        # a conv exit needs the whole grid: after a block that reduces tokens it reads linear
        grid = tuple(
            "linear" if t == "conv" and cand.reduced_by(b) is not None else t
            for b, t in zip(cand.exits, cand.exit_types, strict=True)
        )
        if grid != cand.exit_types:
            cand = cand.replace(exit_types=grid)
        return cand.validate(s)


def _slot(knob: str, param: str, blocks: tuple[int, ...], choices: tuple) -> _Slot:
    return _Slot(knob, param if len(choices) > 1 else None, tuple(blocks), tuple(choices))
