"""Importance ranking: reorder heads and channels once so that keeping k is keeping a prefix.

A criterion scores a block's heads, its q/k channels within each head and its MLP
channels; ``rank`` then permutes the weights in place, most important first. The
permutation preserves the model's function, so the full candidate is unchanged, and
every candidate, in the elastic model and in the exported one, slices a prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from vitpareto.errors import VitParetoError


@dataclass
class BlockScores:
    """Importance of one block's parts: heads [H], q/k channels [H, head_dim], MLP [hidden]."""

    heads: torch.Tensor
    qk: torch.Tensor
    mlp: torch.Tensor


Criterion = Callable[[nn.Module], BlockScores]


def magnitude(block: nn.Module) -> BlockScores:
    """L2 weight magnitude: a head by its q/k/v rows and projection columns, a q/k channel
    by the product of its q and k row norms (its share of the q.k logit), an MLP channel
    by the product of its fc1 row and fc2 column norms."""
    attn, mlp = block.attn, block.mlp
    H, hd = attn.num_heads, attn.head_dim
    w = attn.qkv.weight.detach().view(3, H, hd, -1)
    proj = attn.proj.weight.detach().view(-1, H, hd)
    heads = (w.pow(2).sum((0, 2, 3)) + proj.pow(2).sum((0, 2))).sqrt()
    qk = w[0].norm(dim=-1) * w[1].norm(dim=-1)
    mlp_s = mlp.fc1.weight.detach().norm(dim=1) * mlp.fc2.weight.detach().norm(dim=0)
    return BlockScores(heads=heads, qk=qk, mlp=mlp_s)


def identity(block: nn.Module) -> BlockScores:
    """Keep the model's own order (heads and channels kept from the first)."""
    attn = block.attn
    H, hd = attn.num_heads, attn.head_dim
    n = block.mlp.fc1.out_features
    return BlockScores(
        heads=-torch.arange(H, dtype=torch.float),
        qk=-torch.arange(hd, dtype=torch.float).expand(H, hd),
        mlp=-torch.arange(n, dtype=torch.float),
    )


CRITERIA: dict[str, Criterion] = {"magnitude": magnitude, "identity": identity}


def get_criterion(criterion: str | Criterion) -> Criterion:
    if callable(criterion):
        return criterion
    if criterion not in CRITERIA:
        raise VitParetoError(
            f"unknown importance criterion {criterion!r}; choose one of {', '.join(CRITERIA)}"
        )
    return CRITERIA[criterion]


def _order(scores: torch.Tensor) -> torch.Tensor:
    # stable, so equal scores keep the original order (identity stays identity)
    return torch.sort(scores, descending=True, stable=True).indices


@torch.no_grad()
def rank(model: nn.Module, criterion: str | Criterion = "magnitude") -> list[dict[str, list]]:
    """Permute every block of a timm ViT in place, most important first.

    Returns, per block, the original indices now at each position: ``heads`` [H],
    ``qk`` [H][head_dim] (per original head) and ``mlp`` [hidden].
    """
    crit = get_criterion(criterion)
    orders = []
    for blk in model.blocks:
        s = crit(blk)
        attn = blk.attn
        H, hd = attn.num_heads, attn.head_dim
        head_order = _order(s.heads)
        if isinstance(attn.q_norm, nn.Identity):
            qk_order = torch.stack([_order(s.qk[h]) for h in range(H)])
        else:  # q/k norm weights are shared by all heads: one channel order for all
            qk_order = _order(s.qk.sum(0)).expand(H, hd)
        mlp_order = _order(s.mlp)
        _permute_attention(attn, head_order, qk_order)
        _permute_mlp(blk.mlp, mlp_order)
        orders.append(
            {"heads": head_order.tolist(), "qk": qk_order.tolist(), "mlp": mlp_order.tolist()}
        )
    return orders


def _permute_attention(attn: nn.Module, head_order: torch.Tensor, qk_order: torch.Tensor) -> None:
    H, hd = attn.num_heads, attn.head_dim
    dev = attn.qkv.weight.device
    head_order, qk_order = head_order.to(dev), qk_order.to(dev)
    base = (torch.arange(H, device=dev) * hd).unsqueeze(1)
    qk_rows = (base + qk_order)[head_order].flatten()  # new (head, channel) <- old row
    v_rows = (base + torch.arange(hd, device=dev))[head_order].flatten()
    rows = torch.cat([qk_rows, H * hd + qk_rows, 2 * H * hd + v_rows])
    attn.qkv.weight.copy_(attn.qkv.weight[rows])
    if attn.qkv.bias is not None:
        attn.qkv.bias.copy_(attn.qkv.bias[rows])
    attn.proj.weight.copy_(attn.proj.weight[:, v_rows])
    if not isinstance(attn.q_norm, nn.Identity):
        channel = qk_order[0]
        for norm in (attn.q_norm, attn.k_norm):
            for p in (norm.weight, getattr(norm, "bias", None)):
                if p is not None:
                    p.copy_(p[channel])


def _permute_mlp(mlp: nn.Module, order: torch.Tensor) -> None:
    order = order.to(mlp.fc1.weight.device)
    mlp.fc1.weight.copy_(mlp.fc1.weight[order])
    if mlp.fc1.bias is not None:
        mlp.fc1.bias.copy_(mlp.fc1.bias[order])
    mlp.fc2.weight.copy_(mlp.fc2.weight[:, order])
