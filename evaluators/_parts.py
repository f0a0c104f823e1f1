"""The parts a latency table is made of: which attention and MLP parts a space produces,
each part as a standalone module, and the token counts to time them at."""

from __future__ import annotations

import copy
from typing import Any

import torch

from vitpareto.spaces import Candidate, PrunedBlock, reduces, sized_blocks, token_counts


def attn_kinds(c: Candidate) -> list[str | None]:
    """Which measured attention part each block of ``c`` is (None without heads): plain,
    pruning (or fusing) or merging its tokens, ``_sized`` when merged tokens' sizes come in."""
    sized = [False, *sized_blocks(c)[:-1]]
    out = []
    for i in range(c.depth):
        kind = "attn"
        if reduces(c, i):
            kind = "attn_merge" if c.token_mode[i] == "merge" else "attn_select"
        out.append(kind + ("_sized" if sized[i] else "") if c.heads[i] else None)
    return out


def block_part(block, spec, h: int, dq: int, m: int, kind: str, dev) -> torch.nn.Module:
    """One branch of a block cut to the given widths, as a standalone module; an attention
    part reduces its tokens as ``kind`` says, and takes and passes on sizes when sized."""
    depth = spec.depth
    reduce = kind.startswith(("attn_select", "attn_merge"))
    c = Candidate(
        patch_size=spec.patch_size,
        heads=(h,) * depth,
        qk_dim=(dq,) * depth,
        mlp=(m,) * depth,
        keep=(0.5 if reduce else 1.0,) * depth,
        token_mode=("merge" if kind.startswith("attn_merge") else "prune",) * depth,
    )
    sized = kind.endswith("_sized")
    return PrunedBlock(copy.deepcopy(block), c, 0, spec, sized, sized).eval().to(dev)


def part_shapes(spec, pool: list[Candidate], n_grid: int, exact: bool) -> dict[str, list]:
    """The widths and patch sizes the space produces, and the token counts to measure: every
    count that occurs when ``exact``, else a geometric grid of ``n_grid`` spanning them."""
    pool = [*pool, *(c.stage(p) for c in pool for p in c.cascade)]  # each cascade stage too
    attn = sorted(
        {(c.heads[i], c.qk_dim[i]) for c in pool for i in range(spec.depth) if c.heads[i]}
    )
    mlp = sorted({c.mlp[i] for c in pool for i in range(spec.depth) if c.mlp[i]})
    kinds = {k for c in pool for k in attn_kinds(c) if k}
    if any(k.startswith("attn_merge") for k in kinds):  # every kind merging can lead to
        kinds |= {"attn_merge", "attn_sized", "attn_merge_sized"}
        kinds |= {"attn_select_sized"} if "attn_select" in kinds else set()
    kinds = sorted(kinds | {"attn", "attn_select"})
    patch = sorted({c.patch_size for c in pool})
    counts = [n for c in pool for pair in token_counts(spec, c) for n in pair]
    distinct = set(counts)
    if exact or len(distinct) <= n_grid:
        return {"attn": attn, "mlp": mlp, "patch": patch, "grid": sorted(distinct), "kinds": kinds}
    lo, hi = min(counts), max(counts)
    grid = {round(lo * (hi / lo) ** (k / max(1, n_grid - 1))) for k in range(n_grid)} | {lo, hi}
    full = {
        (spec.img_size[0] // p) * (spec.img_size[1] // p) + spec.num_prefix_tokens for p in patch
    }
    grid = sorted(grid | full)
    return {"attn": attn, "mlp": mlp, "patch": patch, "grid": grid, "kinds": kinds}


def spec_dict(spec) -> dict[str, Any]:
    return {
        "depth": spec.depth,
        "img_size": list(spec.img_size),
        "in_chans": spec.in_chans,
        "num_prefix_tokens": spec.num_prefix_tokens,
    }


class StoredSpec:
    """The few spec facts ``token_counts`` needs, read back from a stored table."""

    def __init__(self, d: dict[str, Any]):
        self.depth = d["depth"]
        self.img_size = tuple(d["img_size"])
        self.num_prefix_tokens = d["num_prefix_tokens"]
