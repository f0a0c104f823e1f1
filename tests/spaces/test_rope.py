"""Rotary embeddings as vitpareto cuts them equal timm's: every head's q/k channels in
pair order, pairs permuted and sliced per head, each token rotated by its own position."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers.pos_embed_sincos import apply_rot_embed_cat

from vitpareto.spaces import (
    TokenRope,
    grid_positions,
    merge_tokens,
    pair_order,
    pair_table,
    select_tokens,
)


@pytest.mark.parametrize("half", [False, True])
def test_pairs_permuted_and_sliced_rotate_as_timm_does(half):
    torch.manual_seed(0)
    model = timm.create_model("eva02_tiny_patch14_224", img_size=56, depth=1, rope_rotate_half=half)
    emb = model.rope.get_embed()
    n, hd = emb.shape[0], emb.shape[1] // 2
    heads, batch, npt, kept = 3, 2, 1, 5
    q, k = torch.randn(2, batch, heads, npt + n, hd).unbind(0)
    want = [
        torch.cat([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], emb, half=half)], dim=2)
        for t in (q, k)
    ]
    order, pairs = pair_order(hd, half), hd // 2
    slots = torch.stack([torch.randperm(pairs) for _ in range(heads)])[:, :kept]

    def ours(t):  # pair order, then each head's kept pairs in its own order
        t = t[..., order].unflatten(-1, (pairs, 2))
        return torch.stack([t[:, h][:, :, slots[h]].flatten(-2) for h in range(heads)], dim=1)

    rope = TokenRope(*pair_table(emb, half), slots)
    got = rope(ours(q), ours(k), grid_positions(batch, npt, n))
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, ours(w))


def test_a_token_keeps_its_rotation_wherever_it_moves():
    torch.manual_seed(0)
    emb = timm.create_model("eva02_tiny_patch14_224", img_size=56, depth=1).rope.get_embed()
    n, hd = emb.shape[0], emb.shape[1] // 2
    rope = TokenRope(*pair_table(emb, False), torch.arange(hd // 2).expand(2, -1))
    q = torch.randn(1, 2, n, hd)
    pos = grid_positions(1, 0, n)
    perm = torch.randperm(n)
    moved = rope(q[:, :, perm], q[:, :, perm], pos[:, perm])[0]
    assert torch.equal(moved, rope(q, q, pos)[0][:, :, perm])
    # the row past the grid is no rotation: prefix tokens and fused tokens
    still = rope(q[:, :, :1], q[:, :, :1], torch.tensor([[-1]]))[0]
    assert torch.equal(still, q[:, :, :1])


@pytest.mark.parametrize("fuse", [False, True])
def test_pruned_tokens_carry_their_positions(fuse):
    torch.manual_seed(0)
    n, npt = 16, 1
    pos = grid_positions(2, npt, n)
    x = torch.randn(2, npt + n, 8)
    x[:, npt:, 0] = torch.arange(n, dtype=x.dtype)  # each token says where it is
    out, _, where = select_tokens(x, torch.rand(2, n), 0.5, fuse, npt, pos=pos)
    assert (where[:, :npt] == -1).all()
    kept = where[:, npt : npt + 8]
    assert torch.equal(out[:, npt : npt + 8, 0], kept.to(x.dtype))
    if fuse:  # the fused token stands for several places: no rotation
        assert where.shape[1] == npt + 9 and (where[:, -1] == -1).all()


def test_merged_tokens_keep_the_place_of_the_token_merged_into():
    torch.manual_seed(0)
    n, npt = 16, 1
    pos = grid_positions(2, npt, n)
    x = torch.randn(2, npt + n, 8)
    out, size, where = merge_tokens(x, torch.randn(2, n, 4), 0.4, npt, pos=pos)
    assert where.shape == out.shape[:2] and (where[:, :npt] == -1).all()
    for b in range(2):
        places = where[b, npt:].tolist()
        assert len(set(places)) == len(places) and set(places) <= set(range(n))
        for j, p in enumerate(places):  # a token nothing merged into is itself, unchanged
            if size[b, npt + j, 0] == 1:
                assert torch.equal(out[b, npt + j], x[b, npt + p])
