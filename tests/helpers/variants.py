"""Small real timm ViT variants, one per feature vitpareto must handle, with random
weights, their inputs, and random candidates over them."""

from __future__ import annotations

import random
from functools import partial

import timm
import torch
from timm.layers import GluMlp, SwiGLU

from vitpareto.spaces import Candidate, describe

# name -> (timm model, overrides); small image sizes and depths keep the suite on CPU in minutes
VARIANTS = {
    "class_token": ("deit_tiny_patch16_224", dict(img_size=64, depth=3)),
    "avg_pool": ("test_vit", dict(img_size=64, global_pool="avg", class_token=False, fc_norm=True)),
    "registers": ("test_vit2", dict(img_size=64, depth=4)),
    "cls_registers_layerscale": ("vit_small_patch14_reg4_dinov2", dict(img_size=56, depth=2)),
    "layerscale": ("deit3_small_patch16_224", dict(img_size=64, depth=2)),
    "patch32": ("vit_small_patch32_224", dict(img_size=64, depth=2)),
    "distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=64, depth=3)),
    "qk_norm": ("vit_small_patch16_224", dict(img_size=64, depth=2, qk_norm=True)),
    "one_channel": ("test_vit", dict(img_size=32, patch_size=8, in_chans=1, depth=2)),
    "swiglu": ("vit_small_patch16_224", dict(img_size=64, depth=2, mlp_layer=SwiGLU)),
    "glu": (
        "vit_small_patch16_224",
        dict(img_size=64, depth=2, mlp_layer=partial(GluMlp, gate_last=True), mlp_ratio=3.0),
    ),
    "rmsnorm": ("vit_small_patch16_224", dict(img_size=64, depth=2, norm_layer="rmsnorm")),
    # SigLIP's vision tower: no class token, an attention-pool ('map') head
    "siglip_map": (
        "vit_base_patch16_siglip_224",
        dict(img_size=64, depth=2, embed_dim=192, num_heads=3),
    ),
    # a class token and an attention pool that attends over it too
    "map_class_token": ("test_vit3", dict(img_size=32, patch_size=8, depth=3)),
    # the Eva family, through its adapter: rotary embeddings, SwiGLU, q and v biases only
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=56, depth=2)),
    # a RoPE ViT: separate q/k/v, rotate-half pairs, a register, LayerScale, average pool
    "rope_vit": (
        "vit_medium_patch16_rope_reg1_gap_256",
        dict(
            img_size=64, depth=2, embed_dim=128, num_heads=2, qkv_fused=False, rope_rotate_half=True
        ),
    ),
    # timm's AttentionRope (vit_*_rope_224, Perception Encoder's spatial towers), fused qkv
    "rope_attention": (
        "vit_small_patch16_rope_224",
        dict(img_size=64, depth=2, embed_dim=128, num_heads=2),
    ),
}


def make_variant(key: str, num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """A variant with random weights (biases and norms randomised too, so no part is trivial)."""
    name, kwargs = VARIANTS[key]
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=num_classes, **kwargs)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 1 or "token" in n or "pos_embed" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def images(model, n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    h, w = model.patch_embed.img_size
    return torch.randn(n, model.patch_embed.proj.in_channels, h, w, generator=g)


def random_candidate(model, rng: random.Random) -> Candidate:
    s = describe(model)
    base = s.patch_size
    patches = [p for p in s.valid_patch_sizes() if base // 2 <= p <= 2 * base and p < s.img_size[0]]
    heads = [rng.randint(0, s.num_heads) for _ in range(s.depth)]
    keep = [rng.choice([0.3, 0.5, 0.7, 1.0]) if h else 1.0 for h in heads]
    exits = sorted(rng.sample(range(s.depth - 1), rng.randint(0, s.depth - 1)))
    return Candidate(
        patch_size=rng.choice(patches),
        heads=heads,
        qk_dim=[  # whole rotary pairs where q and k are rotated
            2 * rng.randint(1, s.head_dim // 2) if s.rope else rng.randint(1, s.head_dim)
            for _ in range(s.depth)
        ],
        mlp=[rng.choice([0, rng.randint(1, m), m]) for m in s.mlp_hidden],
        keep=keep,
        exits=exits,
        exit_threshold=0.9,
        token_mode=[rng.choice(["prune", "fuse", "merge"]) for _ in range(s.depth)],
    ).validate(model)
