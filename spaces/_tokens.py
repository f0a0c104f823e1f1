"""Token reduction inside a block, between its attention and its MLP: EViT pruning and
fusing, and ToMe merging with proportional attention.

The elastic model and the compressed model call these same functions, so a candidate
reduces the same tokens in both. Merging gives each token a size (how many patches it
stands for); from the first merging block on, sizes travel with the tokens (the compressed
model packs them as one extra channel between its blocks) and weight the attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TOKEN_MODES = ("prune", "fuse", "merge")


def kept_tokens(keep: float, n: int) -> int:
    """Tokens kept of n by ratio keep: ``ceil(keep * n)``, robust to float round-off."""
    if keep >= 1.0:
        return n
    return min(n, max(1, math.ceil(keep * n - 1e-9)))


def reduces(candidate, block: int) -> bool:
    """Whether ``block`` reduces tokens at all (it needs its attention to rank them by)."""
    return candidate.heads[block] > 0 and candidate.keep[block] < 1.0


def token_counts(spec, candidate) -> list[tuple[int, int]]:
    """(tokens into the attention, tokens into the MLP) of every block, prefix tokens
    included: the one statement of how pruning, fusing and merging change the count."""
    c = candidate
    n = (spec.img_size[0] // c.patch_size) * (spec.img_size[1] // c.patch_size)
    out = []
    for i in range(spec.depth):
        before = n + spec.num_prefix_tokens
        if reduces(c, i):
            k = kept_tokens(c.keep[i], n)
            if k < n:
                n = k + (1 if c.token_mode[i] == "fuse" else 0)
        out.append((before, n + spec.num_prefix_tokens))
    return out


def sized_blocks(candidate) -> list[bool]:
    """Whether token sizes exist after each block: from the first merging block on."""
    out, sized = [], False
    for i in range(candidate.depth):
        sized = sized or (reduces(candidate, i) and candidate.token_mode[i] == "merge")
        out.append(sized)
    return out


def merge_rounds(n: int, k: int) -> list[tuple[int, int, int]]:
    """(tokens in set A, tokens in set B, pairs merged) of each bipartite round that takes
    n tokens to k. One round merges at most the ceil(n/2) tokens of A, so ratios below
    one half take several rounds."""
    rounds = []
    while n > k:
        a, b = (n + 1) // 2, n // 2
        r = min(a, n - k)
        rounds.append((a, b, r))
        n -= r
    return rounds


def merge_macs(n: int, k: int, channels: int) -> int:
    """MACs of the matching (cosine similarities of A against B) that takes n tokens to k."""
    return sum(a * b * channels for a, b, _ in merge_rounds(n, k))


class ClassAttention(nn.Module):
    """The class token's attention row, averaged over heads: the token-ranking score.

    The fused attention kernel never materialises the attention matrix, so the one row
    EViT ranks tokens by is recomputed here from q and k (O(N) per head, not O(N^2)).
    Without a class token, the mean query over the non-prefix tokens stands in for it.
    ``count_macs`` treats this as token-selection bookkeeping (EViT's convention).
    """

    def __init__(self, num_prefix_tokens: int, has_class_token: bool):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.has_class_token = has_class_token

    def forward(self, q, k, scale: float, bias: torch.Tensor | None = None) -> torch.Tensor:
        npt = self.num_prefix_tokens
        query = q[:, :, :1] if self.has_class_token else q[:, :, npt:].mean(2, keepdim=True)
        logits = (query * scale) @ k.transpose(-2, -1)  # B, h, 1, N
        if bias is not None:
            logits = logits + bias
        return torch.softmax(logits, dim=-1).mean(1)[:, 0, npt:]  # B, N - npt


class MergeMetric(nn.Module):
    """ToMe's similarity features: each non-prefix token's key, averaged over heads."""

    def __init__(self, num_prefix_tokens: int):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, q, k, scale: float, bias: torch.Tensor | None = None) -> torch.Tensor:
        return k[:, :, self.num_prefix_tokens :].mean(1)  # B, N - npt, qk_dim


class TokenSelect(nn.Module):
    """Keep the best-scored ``ceil(keep * n)`` of the n non-prefix tokens (EViT).

    Prefix tokens (class, register, distillation) always stay. With ``fuse`` the pruned
    tokens are merged into one extra token, their sum weighted by their scores.
    ``count_macs`` treats this as bookkeeping, as EViT's published MACs do.
    """

    def __init__(self, keep: float, fuse: bool, num_prefix_tokens: int):
        super().__init__()
        self.keep, self.fuse, self.num_prefix_tokens = keep, fuse, num_prefix_tokens

    def forward(self, x, scores, size=None, pos=None):
        return select_tokens(x, scores, self.keep, self.fuse, self.num_prefix_tokens, size, pos)


class TokenMerge(nn.Module):
    """Merge the n non-prefix tokens down to ``ceil(keep * n)`` by ToMe's bipartite soft
    matching. Unlike selection, ``count_macs`` counts the matching's similarity products."""

    def __init__(self, keep: float, num_prefix_tokens: int):
        super().__init__()
        self.keep, self.num_prefix_tokens = keep, num_prefix_tokens

    def forward(self, x, metric, size=None, pos=None):
        return merge_tokens(x, metric, self.keep, self.num_prefix_tokens, size, pos)


def reducer(mode: str, keep: float, num_prefix_tokens: int) -> nn.Module:
    """The module that reduces a block's tokens in ``mode``."""
    if mode == "merge":
        return TokenMerge(keep, num_prefix_tokens)
    return TokenSelect(keep, mode == "fuse", num_prefix_tokens)


def scorer(mode: str, num_prefix_tokens: int, has_class_token: bool) -> nn.Module:
    """What the attention computes for the reduction: token scores, or merge features."""
    if mode == "merge":
        return MergeMetric(num_prefix_tokens)
    return ClassAttention(num_prefix_tokens, has_class_token)


def select_tokens(x, scores, keep: float, fuse: bool, num_prefix_tokens: int, size=None, pos=None):
    """The computation of ``TokenSelect``; scores are [B, n] for the n non-prefix tokens,
    size (when tokens carry sizes) [B, N, 1], pos (when tokens carry rotary positions)
    [B, N]. Returns the tokens, their sizes and their positions; a fused token's size is
    the sum of the sizes it stands for, its position -1 (no rotation: it has no one place)."""
    npt = num_prefix_tokens
    n = x.shape[1] - npt
    k = kept_tokens(keep, n)
    if k >= n:
        return x, size, pos
    rest = x[:, npt:]
    top = scores.topk(k, dim=1).indices  # best first, as a descending sort would order them
    parts = [x[:, :npt], rest.gather(1, top.unsqueeze(-1).expand(-1, -1, x.shape[-1]))]
    sizes = None if size is None else [size[:, :npt], size[:, npt:].gather(1, top.unsqueeze(-1))]
    places = None if pos is None else [pos[:, :npt], pos[:, npt:].gather(1, top)]
    if fuse:  # the pruned tokens' score-weighted sum: one product, no second gather
        weight = scores.scatter(1, top, 0.0).unsqueeze(1)  # B, 1, n (zero where kept)
        parts.append(weight.to(rest.dtype) @ rest)
        if sizes is not None:
            pruned = torch.ones_like(scores).scatter(1, top, 0.0).unsqueeze(1)
            sizes.append(pruned.to(size.dtype) @ size[:, npt:])
        if places is not None:
            places.append(pos.new_full((pos.shape[0], 1), -1))
    size = None if sizes is None else torch.cat(sizes, dim=1)
    return torch.cat(parts, dim=1), size, None if places is None else torch.cat(places, dim=1)


def merge_tokens(x, metric, keep: float, num_prefix_tokens: int, size=None, pos=None):
    """ToMe's bipartite soft matching down to ``ceil(keep * n)`` non-prefix tokens.

    Each round splits the tokens into alternating sets A and B, matches every A token to
    its most similar B token (cosine of ``metric``), and merges the r best-matched A tokens
    into their matches as size-weighted averages. Sums and counts (``scatter_add``), never
    a scatter with ``mean``, which ONNX lacks. Returns the tokens, their sizes [B, N', 1]
    and, when tokens carry rotary positions ``pos`` [B, N], theirs: a merged token keeps
    the position of the token it was merged into.
    """
    npt = num_prefix_tokens
    n = x.shape[1] - npt
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    k = kept_tokens(keep, n)
    if k >= n:
        return x, size, pos
    rounds = merge_rounds(n, k)
    d = x.shape[-1]
    t, s = x[:, npt:], size[:, npt:]
    p = None if pos is None else pos[:, npt:]
    m = F.normalize(metric, dim=-1)
    for j, (a, _, r) in enumerate(rounds):
        last = j == len(rounds) - 1
        # the features merged: the tokens, and the metric when another round follows
        f = t if last else torch.cat([t, m], dim=-1)
        fa, fb, sa, sb = f[:, ::2] * s[:, ::2], f[:, 1::2] * s[:, 1::2], s[:, ::2], s[:, 1::2]
        best, match = (m[:, ::2] @ m[:, 1::2].transpose(-2, -1)).max(dim=-1)  # B, a
        order = best.topk(a, dim=-1).indices
        src, unm = order[:, :r].unsqueeze(-1), order[:, r:].unsqueeze(-1)
        dst = match.unsqueeze(-1).gather(1, src)
        width = f.shape[-1]
        fb = fb.scatter_add(1, dst.expand(-1, -1, width), fa.gather(1, src.expand(-1, -1, width)))
        sb = sb.scatter_add(1, dst, sa.gather(1, src))
        s = torch.cat([sa.gather(1, unm), sb], dim=1)
        if p is not None:  # B tokens keep their places, merged into or not
            p = torch.cat([p[:, ::2].gather(1, unm.squeeze(-1)), p[:, 1::2]], dim=1)
        f = torch.cat([fa.gather(1, unm.expand(-1, -1, width)), fb], dim=1) / s
        t = f[..., :d]
        if not last:
            m = F.normalize(f[..., d:], dim=-1)
    p = None if p is None else torch.cat([pos[:, :npt], p], dim=1)
    return torch.cat([x[:, :npt], t], dim=1), torch.cat([size[:, :npt], s], dim=1), p
