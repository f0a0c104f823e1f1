"""The input-adaptive patch-size cascade (after attention-guided dynamic inference: coarse
first, finer only where needed): each coarse stage's own patch embedding.

A compressed model with a cascade holds one set of blocks and, per coarse stage, a stem:
the patch embedding resized to the stage's patch size (FlexiViT's pseudo-inverse resize)
and the position embedding resampled to its grid, both computed once when the model is
cut. Resizing on every call instead would add a pseudo-inverse product per image for the
size of one small convolution's weights (``D x C x p x p`` per stage), so the stems are
precomputed: the stages cost exactly their own MACs, and the exported graph holds no
resize.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed


class StageStem(nn.Module):
    """Patch and position embedding of a cascade stage; the prefix tokens, dropouts and
    pre-norm are the model's own (``forward(images, vit)``), as timm's ``_pos_embed``
    adds them."""

    def __init__(self, proj: nn.Conv2d, norm: nn.Module, pos_embed: torch.Tensor | None):
        super().__init__()
        self.proj, self.norm = proj, norm
        self.pos_embed = None if pos_embed is None else nn.Parameter(pos_embed)

    def forward(self, x: torch.Tensor, vit: nn.Module) -> torch.Tensor:
        return stem_tokens(x, vit, self.proj, self.norm, self.pos_embed)


def stem_tokens(x, vit, proj=None, norm=None, pos_embed=None) -> torch.Tensor:
    """Images to tokens as timm's stem makes them, with ``proj``, ``norm`` and
    ``pos_embed`` (default: the model's own, already at its patch size). Written without
    timm's ``view(B, -1, C)``, which an exported graph cannot run on a batch of no images
    (the rows a cascade's earlier stages left none of)."""
    pe = vit.patch_embed
    if proj is None:
        proj, norm, pos_embed = pe.proj, pe.norm, vit.pos_embed
    x = norm(proj(x).flatten(2).transpose(1, 2))
    tokens = (vit.cls_token, getattr(vit, "dist_token", None), vit.reg_token)  # timm's order
    prefix = [t.expand(x.shape[0], -1, -1) for t in tokens if t is not None]
    if pos_embed is not None and vit.no_embed_class:
        x = x + pos_embed
    x = torch.cat([*prefix, x], dim=1) if prefix else x
    if pos_embed is not None and not vit.no_embed_class:
        x = x + pos_embed
    return vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))


@torch.no_grad()
def stage_stems(elastic, patch_sizes) -> nn.ModuleList:
    """A stem per patch size, cut from ``elastic``'s own embeddings as its ``embed`` resizes
    them (and as timm resamples a ``dynamic_img_size`` model's position embedding per
    input), so each stage computes what the elastic model computes at that size."""
    vit, s = elastic.vit, elastic.spec
    pe = vit.patch_embed
    stems = nn.ModuleList()
    for p in patch_sizes:
        proj = copy.deepcopy(pe.proj)
        proj.stride = (p, p)
        proj.kernel_size = (p, p)
        proj.weight = nn.Parameter(elastic.patch_weight(p).clone())
        pos = vit.pos_embed
        if pos is not None and p != s.patch_size:
            grid = [s.img_size[0] // p, s.img_size[1] // p]
            pos = resample_abs_pos_embed(
                pos,
                new_size=grid,
                old_size=list(pe.grid_size),
                num_prefix_tokens=0 if vit.no_embed_class else vit.num_prefix_tokens,
            )
        pos = None if pos is None else pos.detach().clone()
        stems.append(StageStem(proj, copy.deepcopy(pe.norm), pos))
    return stems
