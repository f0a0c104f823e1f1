"""Computations shared by the elastic model and the compressed model.

Both models call these same functions, the elastic one with weight slices taken on the
fly and the compressed one with its own smaller weights, so a candidate computes the
same numbers in both.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import RmsNorm


def kept_tokens(keep: float, n: int) -> int:
    """Tokens kept of n by ratio keep: ``ceil(keep * n)``, robust to float round-off."""
    if keep >= 1.0:
        return n
    return min(n, max(1, math.ceil(keep * n - 1e-9)))


def token_counts(spec, candidate) -> list[tuple[int, int]]:
    """(tokens into the attention, tokens into the MLP) of every block, prefix tokens
    included: the one statement of how pruning and fusing change the token count."""
    c = candidate
    n = (spec.img_size[0] // c.patch_size) * (spec.img_size[1] // c.patch_size)
    out = []
    for i in range(spec.depth):
        before = n + spec.num_prefix_tokens
        if c.heads[i]:
            k = kept_tokens(c.keep[i], n)
            if k < n:
                n = k + (1 if c.fuse else 0)
        out.append((before, n + spec.num_prefix_tokens))
    return out


# --- attention -------------------------------------------------------------------------------
def slice_qkv(attn: nn.Module, heads: int, qk_dim: int):
    """Weights of the first ``heads`` heads keeping the first ``qk_dim`` q/k channels each.

    Returns (qkv_weight, qkv_bias, proj_weight, proj_bias); rows of qkv_weight are
    [q heads x qk_dim; k heads x qk_dim; v heads x head_dim].
    """
    H, hd = attn.num_heads, attn.head_dim
    w = attn.qkv.weight.view(3, H, hd, -1)
    qkv_w = torch.cat(
        [
            w[0, :heads, :qk_dim].flatten(0, 1),
            w[1, :heads, :qk_dim].flatten(0, 1),
            w[2, :heads].flatten(0, 1),
        ]
    )
    qkv_b = None
    if attn.qkv.bias is not None:
        b = attn.qkv.bias.view(3, H, hd)
        qkv_b = torch.cat(
            [
                b[0, :heads, :qk_dim].flatten(),
                b[1, :heads, :qk_dim].flatten(),
                b[2, :heads].flatten(),
            ]
        )
    proj_w = attn.proj.weight[:, : heads * hd]
    return qkv_w, qkv_b, proj_w, attn.proj.bias


def sliced_norm(norm: nn.Module, d: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-head q/k norm restricted to its first d channels, as a function."""
    if isinstance(norm, nn.Identity) or d == norm.weight.shape[0]:
        return norm
    if isinstance(norm, nn.LayerNorm):
        w = norm.weight[:d] if norm.weight is not None else None
        b = norm.bias[:d] if norm.bias is not None else None
        return lambda t: F.layer_norm(t, (d,), w, b, norm.eps)
    if isinstance(norm, RmsNorm):
        return lambda t: F.rms_norm(
            t, (d,), norm.weight[:d] if norm.weight is not None else None, norm.eps
        )
    raise TypeError(f"cannot slice a {type(norm).__name__}")


def sliced_norm_module(norm: nn.Module, d: int) -> nn.Module:
    """A standalone copy of the q/k norm over its first d channels (same math as ``sliced_norm``)."""
    new = copy.deepcopy(norm)
    if isinstance(norm, nn.Identity) or d == norm.weight.shape[0]:
        return new
    new.normalized_shape = (d,)
    for name in ("weight", "bias"):
        p = getattr(norm, name, None)
        if p is not None:
            setattr(new, name, nn.Parameter(p.detach()[:d].clone(), requires_grad=p.requires_grad))
    return new


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

    def forward(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
        npt = self.num_prefix_tokens
        query = q[:, :, :1] if self.has_class_token else q[:, :, npt:].mean(2, keepdim=True)
        row = torch.softmax((query * scale) @ k.transpose(-2, -1), dim=-1)  # B, h, 1, N
        return row.mean(1)[:, 0, npt:]  # B, N - npt


def attention(
    x: torch.Tensor,
    qkv_w: torch.Tensor,
    qkv_b: torch.Tensor | None,
    proj_w: torch.Tensor,
    proj_b: torch.Tensor | None,
    heads: int,
    qk_dim: int,
    head_dim: int,
    scale: float,
    q_norm: Callable,
    k_norm: Callable,
    dropout_p: float = 0.0,
    scorer: ClassAttention | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head self-attention with ``qk_dim`` q/k channels and ``head_dim`` value channels.

    The scale stays the original ``head_dim ** -0.5`` so that a candidate computes a
    prefix of the full model's attention logits. Returns the output and, when a scorer
    is given, the class-attention token scores.
    """
    B, N, _ = x.shape
    qkv = F.linear(x, qkv_w, qkv_b)
    q, k, v = qkv.split([heads * qk_dim, heads * qk_dim, heads * head_dim], dim=-1)
    q = q.unflatten(-1, (heads, qk_dim)).transpose(1, 2)
    k = k.unflatten(-1, (heads, qk_dim)).transpose(1, 2)
    v = v.unflatten(-1, (heads, head_dim)).transpose(1, 2)
    q, k = q_norm(q), k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    out = F.linear(out.transpose(1, 2).reshape(B, N, heads * head_dim), proj_w, proj_b)
    scores = scorer(q, k, scale) if scorer is not None else None
    return out, scores


# --- token selection ------------------------------------------------------------------------
class TokenSelect(nn.Module):
    """Keep the best-scored ``ceil(keep * n)`` of the n non-prefix tokens (EViT).

    Prefix tokens (class, register, distillation) always stay. With ``fuse`` the pruned
    tokens are merged into one extra token, their sum weighted by their scores.
    ``count_macs`` treats this as bookkeeping, as EViT's published MACs do.
    """

    def __init__(self, keep: float, fuse: bool, num_prefix_tokens: int):
        super().__init__()
        self.keep, self.fuse, self.num_prefix_tokens = keep, fuse, num_prefix_tokens

    def forward(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return select_tokens(x, scores, self.keep, self.fuse, self.num_prefix_tokens)


def select_tokens(
    x: torch.Tensor, scores: torch.Tensor, keep: float, fuse: bool, num_prefix_tokens: int
) -> torch.Tensor:
    """The computation of ``TokenSelect``; scores are [B, n] for the n non-prefix tokens."""
    npt = num_prefix_tokens
    n = x.shape[1] - npt
    k = kept_tokens(keep, n)
    if k >= n:
        return x
    rest = x[:, npt:]
    top = scores.topk(k, dim=1).indices  # best first, as a descending sort would order them
    parts = [x[:, :npt], rest.gather(1, top.unsqueeze(-1).expand(-1, -1, x.shape[-1]))]
    if fuse:  # the pruned tokens' score-weighted sum: one product, no second gather
        weight = scores.scatter(1, top, 0.0).unsqueeze(1)  # B, 1, n (zero where kept)
        parts.append(weight.to(rest.dtype) @ rest)
    return torch.cat(parts, dim=1)


# --- the residual block --------------------------------------------------------------------
def residual_block(
    x: torch.Tensor,
    blk: nn.Module,
    attn_fn: Callable | None,
    mlp_fn: Callable | None,
    select: Callable | None,
) -> torch.Tensor:
    """A pre-norm ViT block with tokens pruned between its attention and its MLP.

    ``blk`` supplies timm's own norm1/norm2, LayerScale and drop-path modules, so
    features such as LayerScale are kept rather than re-implemented.
    """
    if attn_fn is not None:
        out, scores = attn_fn(blk.norm1(x))
        x = x + blk.drop_path1(blk.ls1(out))
        if select is not None:
            x = select(x, scores)
    if mlp_fn is not None:
        x = x + blk.drop_path2(blk.ls2(mlp_fn(blk.norm2(x))))
    return x


def mlp_forward(mlp: nn.Module, x: torch.Tensor, fc1_w, fc1_b, fc2_w, fc2_b) -> torch.Tensor:
    """timm's Mlp computation with given (possibly sliced) fc1/fc2 weights."""
    x = mlp.drop1(mlp.act(F.linear(x, fc1_w, fc1_b)))
    return mlp.drop2(F.linear(mlp.norm(x), fc2_w, fc2_b))


# --- early exits ----------------------------------------------------------------------------
class ExitHead(nn.Module):
    """An early-exit classifier: pool like the model, LayerNorm, Linear (Multi-Exit ViT's MLP-EE)."""

    def __init__(self, dim: int, num_classes: int, pool: str, num_prefix_tokens: int):
        super().__init__()
        self.pool, self.num_prefix_tokens = pool, num_prefix_tokens
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, 0] if self.pool == "token" else x[:, self.num_prefix_tokens :].mean(1)
        return self.head(self.norm(x))
