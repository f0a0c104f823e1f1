"""The peer: Torch-Pruning (PyPI ``torch-pruning``, the ``bench`` extra) cutting a timm ViT to
a given number of heads and MLP channels per block, with the settings of its timm ViT
example (whole heads removed, MLP hidden channels pruned, the embedding width kept)."""

from __future__ import annotations

import copy
import types

import torch.nn.functional as F
from timm.models.vision_transformer import Attention

try:
    import torch_pruning as tp
except ImportError:  # the bench extra is not installed
    tp = None


def _attention_forward(self, x, attn_mask=None, **_):
    """timm's attention with the head count read at run time, as Torch-Pruning's example
    re-implements it (timm's own reshapes to the input width, which pruning changes)."""
    B, N, _C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, -1)))


def torch_pruning_cut(vit, heads: int, mlp: int, criterion: str, batches, example):
    """A copy of ``vit`` cut by Torch-Pruning to ``heads`` heads and ``mlp`` MLP channels in
    every block; ``criterion`` ``magnitude`` (group L2) or ``taylor`` (gradients of the
    labels' cross-entropy accumulated over ``batches``)."""
    if tp is None:
        raise RuntimeError("Torch-Pruning is not installed: pip install -e '.[bench]'")
    model = copy.deepcopy(vit).eval()
    num_heads, ratios = {}, {}
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = _attention_forward.__get__(m, Attention)
            num_heads[m.qkv] = m.num_heads
    for blk in model.blocks:
        H, hidden = blk.attn.num_heads, blk.mlp.fc1.out_features
        if heads < H:
            ratios[blk.attn.qkv] = (H - heads) / H
        ratios[blk.mlp.fc1] = (hidden - mlp - 0.5) / hidden  # Torch-Pruning rounds down
    H = model.blocks[0].attn.num_heads
    imp = (
        tp.importance.GroupTaylorImportance()
        if criterion == "taylor"
        else tp.importance.GroupMagnitudeImportance(p=2)
    )
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=imp,
        pruning_ratio=0.0,
        pruning_ratio_dict=ratios,
        ignored_layers=[model.head],
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=(H - heads) / H,
        round_to=1,
    )
    if criterion == "taylor":
        model.zero_grad()
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
    for group in pruner.step(interactive=True):
        group.prune()
    model.zero_grad(set_to_none=True)
    for m in model.modules():
        if isinstance(m, Attention):
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
    got = {(b.attn.num_heads, b.mlp.fc1.out_features) for b in model.blocks}
    if got != {(heads, mlp)}:
        raise RuntimeError(f"Torch-Pruning cut to {got}, asked for {(heads, mlp)}")
    # the fine-tuning loop's interface, bound so that a deep copy calls its own model
    model.forward_exits = types.MethodType(lambda self, x: [self(x)], model)
    return model


def available() -> bool:
    return tp is not None
