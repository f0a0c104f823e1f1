"""Computations shared by the elastic model and the compressed model.

Both models call these same functions, the elastic one with weight slices taken on the
fly and the compressed one with its own smaller weights, so a candidate computes the
same numbers in both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import RmsNorm

from vitpareto.spaces._spec import make_norm, norm_kind
from vitpareto.spaces._tokens import ClassAttention, MergeMetric


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
    if isinstance(norm, RmsNorm | nn.RMSNorm):
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
    scorer: ClassAttention | MergeMetric | None = None,
    size: torch.Tensor | None = None,
    rope: Callable | None = None,
    pos: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head self-attention with ``qk_dim`` q/k channels and ``head_dim`` value channels.

    The scale stays the original ``head_dim ** -0.5`` so that a candidate computes a
    prefix of the full model's attention logits. Tokens that carry a ``size`` [B, N, 1]
    are attended in proportion to it (ToMe's proportional attention: log size added to
    the logits). With ``rope`` (a ``TokenRope``) q and k are rotated by each token's
    position ``pos`` [B, N]. Returns the output and what the scorer computes (token scores
    or merge features), when one is given.
    """
    B, N, _ = x.shape
    qkv = F.linear(x, qkv_w, qkv_b)
    if qk_dim == head_dim:  # timm's layout: one reshape and one permute (fewer graph ops)
        q, k, v = qkv.reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = qkv.split([heads * qk_dim, heads * qk_dim, heads * head_dim], dim=-1)
        q = q.unflatten(-1, (heads, qk_dim)).transpose(1, 2)
        k = k.unflatten(-1, (heads, qk_dim)).transpose(1, 2)
        v = v.unflatten(-1, (heads, head_dim)).transpose(1, 2)
    q, k = q_norm(q), k_norm(k)
    if rope is not None:  # after the q/k norms, as timm's Eva rotates
        q, k = rope(q, k, pos)
    bias = None if size is None else size.log().to(q.dtype).transpose(1, 2).unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    out = F.linear(out.transpose(1, 2).reshape(B, N, heads * head_dim), proj_w, proj_b)
    scores = scorer(q, k, scale, bias) if scorer is not None else None
    return out, scores


# --- the residual block --------------------------------------------------------------------
def residual_block(
    x: torch.Tensor,
    blk: nn.Module,
    attn_fn: Callable | None,
    mlp_fn: Callable | None,
    reduce: Callable | None,
    size: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A pre-norm ViT block with tokens reduced between its attention and its MLP;
    returns the tokens, their sizes (None until a block merges) and their rotary
    positions (None for a model without rotary embeddings).

    ``blk`` supplies timm's own norm1/norm2, LayerScale and drop-path modules, so
    features such as LayerScale are kept rather than re-implemented.
    """
    if attn_fn is not None:
        out, scores = attn_fn(blk.norm1(x), size, pos)
        x = x + blk.drop_path1(blk.ls1(out))
        if reduce is not None:
            x, size, pos = reduce(x, scores, size=size, pos=pos)
    if mlp_fn is not None:
        x = x + blk.drop_path2(blk.ls2(mlp_fn(blk.norm2(x))))
    return x, size, pos


# --- early exits ----------------------------------------------------------------------------
class ExitHead(nn.Module):
    """An early-exit classifier that pools as the model's own head does (Multi-Exit ViT's
    MLP-EE): the class token or the patch tokens' mean, normalised, then a Linear; for an
    attention-pool model ('map', SigLIP), every patch token normalised, then its own copy
    of the model's attention pool, then a Linear.

    ``norm`` is the model's norm kind (``"layernorm"`` or ``"rmsnorm"``); ``attn_pool`` the
    model's pool, copied (trained from there on as this exit's own), over the prefix tokens
    too when ``pool_prefix``; ``norm_at`` where an attention-pool exit normalises, as its
    model does: the tokens (``"tokens"``, a final norm), the pooled vector (``"pooled"``,
    an ``fc_norm``) or nowhere (``"none"``)."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        pool: str,
        num_prefix_tokens: int,
        norm: str = "layernorm",
        attn_pool: nn.Module | None = None,
        pool_prefix: bool = False,
        norm_at: str = "tokens",
    ):
        super().__init__()
        self.pool, self.num_prefix_tokens = pool, num_prefix_tokens
        self.pool_from = 0 if pool_prefix else num_prefix_tokens  # the attention pool's first token
        self.norm_at = norm_at
        self.norm = nn.Identity() if norm_at == "none" else make_norm(norm, dim)
        self.attn_pool = copy.deepcopy(attn_pool) if attn_pool is not None else None
        self.head = nn.Linear(dim, num_classes)
        # set by ``extract`` to the channels the compressed model's tokens carry at this
        # point besides their features: merge sizes, rotary positions (see ``PrunedBlock``)
        self.packed = 0

    @classmethod
    def like(cls, vit: nn.Module, spec, attn_pool: bool = True) -> ExitHead:
        """A head for ``vit`` (described by ``spec``), started from its own final norm,
        pool and classifier so that a fresh exit predicts like the model's end (without
        ``attn_pool``, an attention-pool model's exit averages its patch tokens)."""
        pool = vit.attn_pool if spec.attn_pool and attn_pool else None
        at = "tokens" if spec.final_norm else "pooled" if spec.fc_norm else "none"
        kind = spec.global_pool if pool is not None or spec.global_pool != "map" else "avg"
        head = cls(spec.embed_dim, spec.num_classes, kind, spec.num_prefix_tokens,
                   spec.norm, pool, spec.pool_prefix, at if pool is not None else "tokens")  # fmt: skip
        ref = vit.cls_token if vit.cls_token is not None else vit.patch_embed.proj.weight
        head = head.to(device=ref.device, dtype=ref.dtype)
        ref_norm = vit.fc_norm if spec.fc_norm else vit.norm  # the norm the model's head reads
        with torch.no_grad():
            if norm_kind(ref_norm) == spec.norm:
                head.norm.load_state_dict(ref_norm.state_dict())
            if isinstance(vit.head, nn.Linear):
                head.head.load_state_dict(vit.head.state_dict())
        return head

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """The tokens' features, without the merge sizes and rotary positions riding on them."""
        return x[..., : -int(self.packed)] if self.packed else x

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised vector the classifier reads, pooled as the model's head pools."""
        if self.attn_pool is not None:
            if self.norm_at == "tokens":
                return self.attn_pool(self.norm(x)[:, self.pool_from :])
            return self.norm(self.attn_pool(x[:, self.pool_from :]))
        x = x[:, 0] if self.pool == "token" else x[:, self.num_prefix_tokens :].mean(1)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(self.unpack(x)))
