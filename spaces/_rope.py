"""Rotary position embeddings (RoPE) as vitpareto cuts them: each token rotated by its own
place on the patch grid, each q/k channel pair at its own original frequency.

timm's Eva models rotate q and k by a table of sines and cosines, one row per grid
position, over channel pairs laid out either interleaved (channels 2p and 2p+1) or in
halves (p and p + head_dim/2). Here every head's q/k channels are put in pair order (the
two channels of a pair side by side), so that ranking, slicing and cutting move whole
pairs; each head keeps which original pair each of its slots holds, and reads that pair's
frequency. A token's position is an index into the table; -1 (the row past the grid) is
the identity rotation that prefix tokens and an EViT fused token get (timm rotates no
prefix token; a fused token stands for several places). Pruning gathers positions with
the tokens; ToMe merging keeps the position of the token merged into.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def pair_order(head_dim: int, half: bool) -> torch.Tensor:
    """The channel order that puts each rotary pair's two channels side by side: the
    identity for interleaved pairs, ``0, P, 1, P+1, ...`` for halves (P = head_dim / 2)."""
    if not half:
        return torch.arange(head_dim)
    p = head_dim // 2
    return torch.stack([torch.arange(p), torch.arange(p) + p], dim=-1).flatten()


def pair_table(embed: torch.Tensor, half: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sines and cosines [n + 1, P] of each grid position and original pair from timm's
    concatenated ``[sin | cos]`` table [n, 2 head_dim]; the extra last row is the identity
    rotation (sine 0, cosine 1)."""
    sin, cos = embed.chunk(2, dim=-1)
    p = sin.shape[-1] // 2
    sin, cos = (t[:, :p] if half else t[:, 0::2] for t in (sin, cos))
    sin = torch.cat([sin, sin.new_zeros(1, p)])
    cos = torch.cat([cos, cos.new_ones(1, p)])
    return sin, cos


def rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., 2 P'] in pair order by angles given as ``sin``/``cos`` [..., P']."""
    pairs = x.unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)


class TokenRope(nn.Module):
    """The rotation of one attention's q and k: ``slots`` [heads, P'] are the original pair
    each head's kept pair slot holds; ``forward(q, k, pos)`` rotates q and k [B, h, N, 2 P']
    by the table rows of each token's position ``pos`` [B, N]."""

    def __init__(self, sin: torch.Tensor, cos: torch.Tensor, slots: torch.Tensor):
        super().__init__()
        self.register_buffer("sin", sin[:, slots].permute(1, 0, 2).contiguous(), persistent=False)
        self.register_buffer("cos", cos[:, slots].permute(1, 0, 2).contiguous(), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor):
        sin = self.sin[:, pos].transpose(0, 1)  # B, h, N, P'
        cos = self.cos[:, pos].transpose(0, 1)
        return rotate(q, sin, cos), rotate(k, sin, cos)


def grid_positions(batch: int, prefix: int, n: int, device=None) -> torch.Tensor:
    """Every token's position before any reduction [batch, prefix + n]: prefix tokens -1
    (the identity row), the patch tokens their place on the grid in timm's order."""
    pos = torch.cat([torch.full((prefix,), -1, device=device), torch.arange(n, device=device)])
    return pos.expand(batch, -1)
