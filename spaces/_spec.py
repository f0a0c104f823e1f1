"""What a supported timm ViT looks like, read once so that every other part can check against it."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from timm.layers import PatchEmbed, RmsNorm
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from vitpareto.errors import VitParetoError
from vitpareto.spaces._adapters import adapt, adapted
from vitpareto.spaces._mlp import MLPS, gated, hidden


@dataclass(frozen=True)
class ViTSpec:
    """Shape facts of a timm ``VisionTransformer`` that the knobs refer to."""

    depth: int
    embed_dim: int
    num_heads: int
    head_dim: int
    mlp_hidden: tuple[int, ...]
    img_size: tuple[int, int]
    patch_size: int
    num_prefix_tokens: int
    has_class_token: bool
    global_pool: str
    num_classes: int
    distilled: bool
    qk_norm: bool = False
    norm_pre: bool = False
    embed_norm: bool = False  # a norm over the patch embeddings (timm's embed_norm_layer)
    final_norm: bool = True
    fc_norm: bool = False
    in_chans: int = 3
    gated_mlp: bool = False  # SwiGLU or GLU: two first-layer rows per hidden channel
    norm: str = "layernorm"  # every norm's kind: "layernorm" or "rmsnorm"
    attn_pool: tuple[int, int, int] | None = None  # a 'map' head: (latent tokens, heads, MLP width)
    pool_prefix: bool = False  # the attention pool attends over the prefix tokens too
    rope: bool = False  # rotary position embeddings on q and k (the Eva family)

    @property
    def norm_macs(self) -> int:
        """MACs per normalised element: 5 for a LayerNorm (fvcore's count), 3 for an
        RMSNorm (the same less the mean and its subtraction)."""
        return NORM_MACS[self.norm]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One input image's ``(channels, height, width)``."""
        return (self.in_chans, *self.img_size)

    @property
    def num_patches(self) -> int:
        return (self.img_size[0] // self.patch_size) * (self.img_size[1] // self.patch_size)

    def valid_patch_sizes(self) -> list[int]:
        """Patch sides that divide both image sides."""
        h, w = self.img_size
        return [p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]


NORM_MACS = {"layernorm": 5, "rmsnorm": 3}


def norm_kind(norm: nn.Module) -> str | None:
    """``"layernorm"`` or ``"rmsnorm"`` for a norm vitpareto counts, else None."""
    if isinstance(norm, nn.LayerNorm):
        return "layernorm"
    if isinstance(norm, RmsNorm | nn.RMSNorm):
        return "rmsnorm"
    return None


def make_norm(kind: str, dim: int) -> nn.Module:
    """A fresh norm of ``kind`` over ``dim`` channels, as timm builds one."""
    return RmsNorm(dim, eps=1e-6) if kind == "rmsnorm" else nn.LayerNorm(dim, eps=1e-6)


# why an architecture cannot be cut, by timm class name: what a user can act on
_FAMILIES = {
    "VisionTransformerRelPos": "relative-position bias (vit_relpos_*): each pair of tokens "
    "has a learned bias that token pruning and patch resizing would have to re-index",
    "Beit": "relative-position bias (BEiT, BEiT-v2): each pair of tokens has a learned bias "
    "that token pruning and patch resizing would have to re-index",
    "VisionTransformerSAM": "windowed attention (SAM's image encoder): tokens attend within "
    "windows, which token pruning would break",
    "NaFlexVit": "variable-resolution inputs (NaFlexViT, SigLIP2 NaFlex): patches come as "
    "a sequence with their own coordinates; vitpareto cuts fixed-grid ViTs (the "
    "vit_*_siglip_* towers)",
    "HybridEmbed": "a convolutional stem (a hybrid model): the patch-size knob resizes a "
    "linear patch embedding, which a CNN stem is not",
    "ParallelThingsBlock": "parallel blocks (attention and MLP branches side by side): "
    "vitpareto cuts one attention then one MLP per block",
    "ParallelScalingBlock": "parallel blocks (attention and MLP in one fused layer): "
    "vitpareto cuts one attention then one MLP per block",
    "ResPostBlock": "post-norm blocks (ResPostBlock): vitpareto cuts pre-norm blocks",
}
_WINDOWED = ("Swin", "Hiera", "MultiScaleVit", "Twins", "Volo", "MaxxVit", "Levit")


def _unsupported(model: nn.Module, why: str) -> VitParetoError:
    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    label = f"{type(model).__name__}" + (f" ({name})" if name else "")
    return VitParetoError(f"unsupported model {label}: {why}")


def describe(model) -> ViTSpec:
    """Return the ``ViTSpec`` of a timm VisionTransformer, an elastic or a compressed ViT.

    Raises ``VitParetoError`` naming the feature that vitpareto cannot compress.
    """
    if isinstance(model, ViTSpec):
        return model
    spec = getattr(model, "spec", None)
    if isinstance(spec, ViTSpec):
        return spec

    if adapted(model):  # another architecture: described as its adapter maps it
        return describe(adapt(model))
    if not isinstance(model, VisionTransformer):
        raise _not_a_vit(model)
    pool = _attn_pool(model)
    if model.global_pool not in ("token", "avg", "map"):
        raise _unsupported(model, f"global_pool={model.global_pool!r}; use 'token', 'avg' or 'map'")
    num_heads, head_dim, widths, gated_mlp = _blocks(model)
    pe = model.patch_embed
    if type(pe) is not PatchEmbed:
        why = _FAMILIES.get(type(pe).__name__, "vitpareto cuts a linear patch embedding")
        raise _unsupported(model, f"the patch embedding is a {type(pe).__name__}: {why}")
    norm = _norm(model)
    if model.num_classes < 1:
        raise _unsupported(
            model,
            "it has no classifier head (num_classes=0, a backbone): give it one, "
            "`kwargs: {num_classes: N}` in a model file (--model file.yaml, a new head to "
            "train), --num-classes N with the --checkpoint that holds its trained head, or "
            "timm.create_model(name, num_classes=N) in Python",
        )
    _check_patches(model, pe)
    distilled = getattr(model, "dist_token", None) is not None
    return ViTSpec(
        depth=len(model.blocks),
        embed_dim=model.embed_dim,
        num_heads=num_heads,
        head_dim=head_dim,
        mlp_hidden=tuple(widths),
        img_size=tuple(pe.img_size),
        patch_size=pe.patch_size[0],
        num_prefix_tokens=model.num_prefix_tokens,
        has_class_token=model.cls_token is not None,
        global_pool=model.global_pool,
        num_classes=model.num_classes,
        distilled=distilled,
        qk_norm=not isinstance(model.blocks[0].attn.q_norm, nn.Identity),
        norm_pre=not isinstance(model.norm_pre, nn.Identity),
        embed_norm=not isinstance(model.patch_embed.norm, nn.Identity),
        final_norm=not isinstance(model.norm, nn.Identity),
        fc_norm=not isinstance(model.fc_norm, nn.Identity),
        in_chans=pe.proj.in_channels,
        gated_mlp=gated_mlp,
        norm=norm,
        attn_pool=pool,
        pool_prefix=pool is not None and bool(getattr(model, "pool_include_prefix", False)),
        rope=hasattr(model, "rope_sin"),
    )


def _norm(model: nn.Module) -> str:
    """The one kind of every norm in ``model`` (its cost per element is counted exactly)."""
    mods = [model.patch_embed.norm, model.norm_pre, model.norm, model.fc_norm]
    for blk in model.blocks:
        mods += [blk.norm1, blk.norm2, blk.attn.q_norm, blk.attn.k_norm]
    if model.attn_pool is not None:
        mods += [model.attn_pool.norm]
    kinds = set()
    for mod in mods:
        if isinstance(mod, nn.Identity):
            continue
        kind = norm_kind(mod)
        if kind is None or not _affine(mod):
            raise _unsupported(
                model, f"a {type(mod).__name__} norm: vitpareto counts LayerNorm and RMSNorm "
                "with their learned scale"
            )  # fmt: skip
        kinds.add(kind)
    if len(kinds) > 1:
        raise _unsupported(model, "it mixes LayerNorm and RMSNorm layers")
    return kinds.pop() if kinds else "layernorm"


def _affine(norm: nn.Module) -> bool:
    return getattr(norm, "weight", None) is not None


def _attn_pool(model: nn.Module) -> tuple[int, int, int] | None:
    """The shape facts of an attention-pool head (SigLIP's 'map'), refusing the forms whose
    inputs token pruning or a new patch size would change underneath it."""
    pool = model.attn_pool
    if pool is None:
        return None
    if type(pool).__name__ != "AttentionPoolLatent":
        raise _unsupported(model, f"a {type(pool).__name__} pooling head: vitpareto keeps "
                           "timm's AttentionPoolLatent ('map')")  # fmt: skip
    if pool.pos_embed is not None:
        raise _unsupported(model, "an attention pool with its own position embedding, tied to "
                           "one token grid that token pruning and patch resizing change")  # fmt: skip
    if pool.mlp is None or type(pool.mlp) not in MLPS or gated(pool.mlp):
        raise _unsupported(model, "an attention pool without its plain MLP")
    return pool.latent_len, pool.num_heads, hidden(pool.mlp)


def _is_sliceable_norm(norm: nn.Module) -> bool:

    return isinstance(norm, nn.LayerNorm | RmsNorm | nn.RMSNorm)


def _not_a_vit(model) -> VitParetoError:
    """Why a model that is not a timm VisionTransformer (and has no adapter) is refused."""
    kind = type(model).__name__
    if kind in _FAMILIES:
        return _unsupported(model, _FAMILIES[kind])
    if kind.startswith(_WINDOWED):
        why = "windowed or hierarchical attention (token grids that change between stages)"
        return _unsupported(model, why)
    return _unsupported(
        model,
        "vitpareto compresses timm VisionTransformer models (vit_*, deit_*, deit3_*, "
        "test_vit); Swin, CNNs and hybrids are not supported",
    )


def _blocks(model) -> tuple[int, int, list[int], bool]:
    """Heads, head width, each block's MLP width and whether the MLPs are gated, once every
    block is one vitpareto can cut (timm's pre-norm Block, its Attention and MLPs)."""
    heads, kinds = set(), set()
    widths = []
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block:
            why = _FAMILIES.get(type(blk).__name__, "vitpareto cuts timm's pre-norm Block")
            raise _unsupported(model, f"block {i} is a {type(blk).__name__}: {why}")
        attn, mlp = blk.attn, blk.mlp
        if type(attn) is not Attention:
            raise _unsupported(model, f"block {i} attention is a {type(attn).__name__}")
        if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
            raise _unsupported(model, f"block {i} attention has an output norm or gate")
        if type(mlp) not in MLPS:
            raise _unsupported(
                model,
                f"block {i} MLP is a {type(mlp).__name__}: vitpareto cuts timm's Mlp, SwiGLU "
                "and GluMlp",
            )
        if not isinstance(mlp.norm, nn.Identity):
            raise _unsupported(model, f"block {i} MLP has an inner norm (scale_mlp_norm)")
        if not isinstance(attn.q_norm, nn.Identity) and not _is_sliceable_norm(attn.q_norm):
            raise _unsupported(model, f"block {i} q/k norm is a {type(attn.q_norm).__name__}")
        heads.add((attn.num_heads, attn.head_dim))
        widths.append(hidden(mlp))
        kinds.add(gated(mlp))
    if len(kinds) != 1:
        raise _unsupported(model, "some blocks have gated MLPs and some plain ones")
    if len(heads) != 1:
        raise _unsupported(model, "blocks differ in head count or head width")
    ((num_heads, head_dim),) = heads
    return num_heads, head_dim, widths, kinds == {True}


def _check_patches(model, pe) -> None:
    """Refuse non-square patches, and a patch size that does not divide the image."""
    if pe.patch_size[0] != pe.patch_size[1]:
        raise _unsupported(model, f"non-square patches {tuple(pe.patch_size)}")
    h, w = pe.img_size
    if h % pe.patch_size[0] or w % pe.patch_size[0]:
        sides = [p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]
        raise VitParetoError(
            f"patch size {pe.patch_size[0]} does not divide the {h}x{w} image; choose a patch "
            f"size from {', '.join(map(str, sides))} or another image size"
        )
