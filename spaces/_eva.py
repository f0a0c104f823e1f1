"""The Eva adapter: timm's ``Eva`` class (EVA-02, EVA-CLIP, the RoPE ViTs) mapped onto the
model vitpareto cuts, a timm ``VisionTransformer`` of pre-norm ``Block``s, plus its
rotary embedding. The only module that knows Eva's names.

Eva's separate q/k/v projections (or its fused qkv with a q and a v bias and no k bias)
become one qkv layer; its ``gamma_1``/``gamma_2`` become LayerScale; its norms, MLPs
(SwiGLU, GluMlp, Mlp), tokens, position embedding and head are taken as they are. Each
head's q and k channels are laid out in rotary pair order (``pair_order``): the logits
q.k are unchanged, and ranking and cutting then move whole pairs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from timm.layers import LayerScale
from timm.models.vision_transformer import VisionTransformer

from vitpareto.errors import VitParetoError
from vitpareto.spaces._rope import pair_order, pair_table


def _refuse(why: str) -> VitParetoError:
    return VitParetoError(f"unsupported Eva model: {why}")


def _check(eva: nn.Module) -> None:
    """Refuse, naming the reason, the Eva forms the canonical block cannot carry."""
    if getattr(eva, "rope_mixed", False):
        raise _refuse("mixed-mode rotary embeddings (one table per block)")
    if getattr(eva, "attn_pool", None) is not None:
        raise _refuse("an attention-pool head (Perception Encoder's): not mapped yet")
    if getattr(eva, "dynamic_img_size", False):
        raise _refuse(
            "dynamic image size: give it a fixed grid, `kwargs: {dynamic_img_size: false}` "
            "in a model file (timm.create_model(name, dynamic_img_size=False) in Python)"
        )
    for i, blk in enumerate(eva.blocks):
        if type(blk).__name__ != "EvaBlock":
            raise _refuse(
                f"block {i} is a {type(blk).__name__} (post-norm): vitpareto cuts pre-norm blocks"
            )
        attn = blk.attn
        if type(attn).__name__ not in ("EvaAttention", "AttentionRope"):
            raise _refuse(f"block {i} attention is a {type(attn).__name__}")
        if getattr(attn, "num_kv_heads", attn.num_heads) != attn.num_heads:
            raise _refuse(f"block {i} has grouped-query attention (fewer k/v heads than q)")
        if not isinstance(attn.norm, nn.Identity):
            raise _refuse(f"block {i} attention has an inner norm (scale_attn_inner)")
        if attn.gate is not None:
            raise _refuse(f"block {i} attention is gated")
        if not isinstance(getattr(blk.mlp, "norm", nn.Identity()), nn.Identity):
            raise _refuse(f"block {i} MLP has an inner norm (scale_mlp)")


@torch.no_grad()
def qkv_of(attn: nn.Module, half: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One [3 D, D] weight and [3 D] bias from Eva's projections, q and k in pair order."""
    q_bias = getattr(attn, "q_bias", None)  # EvaAttention's fused form: no k bias
    if attn.qkv is not None:
        w, b = attn.qkv.weight, attn.qkv.bias
        if q_bias is not None:
            b = torch.cat([q_bias, torch.zeros_like(q_bias), attn.v_bias])
    else:
        w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        parts = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        b = None
        if any(p is not None for p in parts):
            b = torch.cat(
                [p if p is not None else torch.zeros_like(attn.v_proj.weight[:, 0]) for p in parts]
            )
    H, hd = attn.num_heads, attn.head_dim
    order = pair_order(hd, half).to(w.device)
    w = w.view(3, H, hd, -1).clone()
    w[:2] = w[:2, :, order]
    if b is not None:
        b = b.view(3, H, hd).clone()
        b[:2] = b[:2, :, order]
        b = b.flatten()
    return w.flatten(0, 2), b


@torch.no_grad()
def canonical(eva: nn.Module) -> VisionTransformer:
    """A timm ``VisionTransformer`` computing what ``eva`` computes, but for the rotary
    embedding, which it carries as ``rope_table`` (sines and cosines per grid position and
    pair, ``pair_table``) and ``rope_half``; q/k norms are permuted with their channels."""
    _check(eva)
    blk0 = eva.blocks[0]
    half = bool(getattr(blk0.attn, "rotate_half", False))
    init = 1.0 if blk0.gamma_1 is not None else None
    vit = VisionTransformer(
        img_size=tuple(eva.patch_embed.img_size),
        patch_size=eva.patch_embed.patch_size[0],
        in_chans=eva.patch_embed.proj.in_channels,
        num_classes=eva.num_classes,
        global_pool=eva.global_pool,
        embed_dim=eva.embed_dim,
        depth=len(eva.blocks),
        num_heads=blk0.attn.num_heads,
        qkv_bias=qkv_of(blk0.attn, half)[1] is not None,
        qk_norm=not isinstance(blk0.attn.q_norm, nn.Identity),
        init_values=init,
        class_token=eva.cls_token is not None,
        reg_tokens=0 if eva.reg_token is None else eva.reg_token.shape[1],
        no_embed_class=eva.no_embed_class,
        pos_embed="learn" if eva.pos_embed is not None else "none",
        pre_norm=not isinstance(eva.norm_pre, nn.Identity),
        fc_norm=not isinstance(eva.fc_norm, nn.Identity),
        final_norm=not isinstance(eva.norm, nn.Identity),
        mlp_ratio=1.0,
        weight_init="skip",
    )
    vit.pretrained_cfg = getattr(eva, "pretrained_cfg", None) or {}  # names it in messages
    vit.patch_embed = copy.deepcopy(eva.patch_embed)
    for name in ("cls_token", "reg_token", "pos_embed"):
        src = getattr(eva, name, None)
        if src is not None:
            getattr(vit, name).copy_(src)
    vit.norm_pre, vit.norm, vit.fc_norm = (
        copy.deepcopy(m) for m in (eva.norm_pre, eva.norm, eva.fc_norm)
    )
    vit.head = copy.deepcopy(eva.head)
    order = pair_order(blk0.attn.head_dim, half)
    for blk, src in zip(vit.blocks, eva.blocks, strict=True):
        a, s = blk.attn, src.attn
        w, b = qkv_of(s, half)
        a.qkv = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        a.qkv.weight.copy_(w)
        if b is not None:
            a.qkv.bias.copy_(b)
        a.proj = copy.deepcopy(s.proj)
        for name in ("q_norm", "k_norm"):
            norm = copy.deepcopy(getattr(s, name))
            for p in (getattr(norm, "weight", None), getattr(norm, "bias", None)):
                if p is not None:
                    p.copy_(p[order])
            setattr(a, name, norm)
        blk.norm1, blk.norm2 = copy.deepcopy(src.norm1), copy.deepcopy(src.norm2)
        blk.mlp = copy.deepcopy(src.mlp)
        for ls, gamma in ((blk.ls1, src.gamma_1), (blk.ls2, src.gamma_2)):
            if gamma is not None:
                ls.gamma.copy_(gamma)
        if src.gamma_2 is None and isinstance(blk.ls2, LayerScale):
            blk.ls2 = nn.Identity()  # attention-only LayerScale
    if eva.rope is not None:
        sin, cos = pair_table(eva.rope.get_embed(), half)
        vit.register_buffer("rope_sin", sin, persistent=False)
        vit.register_buffer("rope_cos", cos, persistent=False)
        vit.rope_half = half
        vit.rope = copy.deepcopy(eva.rope)  # rebuilds the table for another patch grid
        vit.rope_grid = list(eva.patch_embed.grid_size)  # the grid rope_sin/rope_cos are for
        pairs = blk0.attn.head_dim // 2
        for blk in vit.blocks:  # which original pair each head's pair slot holds
            slots = torch.arange(pairs).expand(blk.attn.num_heads, -1).clone()
            blk.attn.register_buffer("rope_slots", slots)
    return vit.eval() if not eva.training else vit


def rope_table(vit: nn.Module, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The canonical model's rotary table (``pair_table``) for the grid of ``patch_size``:
    timm's own embedding for that grid (its reference-shape scaling included)."""
    h, w = vit.patch_embed.img_size
    grid = [h // patch_size, w // patch_size]
    if vit.rope_grid == grid:
        return vit.rope_sin, vit.rope_cos
    rope = copy.deepcopy(vit.rope)
    rope.update_feat_shape(grid)
    sin, cos = pair_table(rope.get_embed(), vit.rope_half)
    return sin.to(vit.rope_sin.device), cos.to(vit.rope_cos.device)
