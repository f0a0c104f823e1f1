"""Importance ranking: reorder heads and channels once so that keeping k is keeping a prefix.

A criterion (``vitpareto.spaces._criteria``: from the weights, or from calibration batches
of the user's data) scores a block's heads, its q/k channels within each head and its MLP
channels; ``rank`` then permutes the weights in place, most important first. The
permutation preserves the model's function, so the full candidate is unchanged, and
every candidate, in the elastic model and in the exported one, slices a prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import islice

import torch
import torch.nn as nn

from vitpareto.errors import VitParetoError
from vitpareto.spaces._criteria import (
    Batches,
    BlockScores,
    attention,
    identity,
    magnitude,
    similarity,
    taylor,
)
from vitpareto.spaces._mlp import permute_mlp

Criterion = Callable[[nn.Module], BlockScores]  # a block's scores from its weights alone

# name -> (scores of every block from the model and its calibration batches, needs data)
CRITERIA: dict[str, tuple[Callable[[nn.Module, Batches], list[BlockScores]], bool]] = {
    "magnitude": (lambda model, _b: [magnitude(blk) for blk in model.blocks], False),
    "identity": (lambda model, _b: [identity(blk) for blk in model.blocks], False),
    "taylor": (taylor, True),
    "similarity": (similarity, True),
    "attention": (attention, True),
}
CALIBRATION_BATCHES = 8  # default number of the user's batches a data-driven criterion sees


def needs_data(criterion: str | Criterion | Sequence[BlockScores]) -> bool:
    """Whether ``criterion`` is a data-driven one (it needs calibration batches)."""
    return isinstance(criterion, str) and _lookup(criterion)[1]


def _lookup(name: str):
    if name not in CRITERIA:
        raise VitParetoError(
            f"unknown importance criterion {name!r}; choose one of {', '.join(CRITERIA)}"
        )
    return CRITERIA[name]


def _calibration(model: nn.Module, data: Iterable | None, batches: int, name: str) -> Batches:
    """The first ``batches`` (images, labels) batches of ``data``, on the model's device."""
    if data is None:
        raise VitParetoError(
            f"importance {name!r} ranks on calibration data: pass data= (batches of images "
            "and labels, a DataLoader for example), or choose magnitude"
        )
    if not isinstance(batches, int) or batches < 1:
        raise VitParetoError(f"calibration batches must be a positive int, got {batches!r}")
    device = next(model.parameters()).device
    out = []
    for batch in islice(data, batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise VitParetoError(
                f"importance {name!r}: each calibration batch must be (images, labels)"
            )
        out.append((batch[0].to(device), batch[1].to(device)))
    if not out:
        raise VitParetoError(f"importance {name!r}: the calibration data holds no batch")
    return out


def importance_scores(
    model: nn.Module,
    criterion: str | Criterion = "magnitude",
    data: Iterable | None = None,
    batches: int = CALIBRATION_BATCHES,
) -> list[BlockScores]:
    """Scores of every block's heads, q/k channels and MLP channels of a timm ViT.

    ``criterion`` is a name of ``CRITERIA`` or a function of one block (its weights);
    the data-driven ones (taylor, similarity, attention) read the first ``batches`` of
    ``data`` (an iterable of (images, labels), labels in the model's classes). The model
    is left as it was (weights, gradients and train/eval mode).
    """
    if callable(criterion):
        return [criterion(blk) for blk in model.blocks]
    fn, calibrated = _lookup(criterion)
    if not calibrated:
        return fn(model, [])
    calib = _calibration(model, data, batches, criterion)
    was_training = model.training
    model.eval()
    try:
        return fn(model, calib)
    except (IndexError, RuntimeError) as e:
        if "Target" in str(e) or "out of bounds" in str(e):
            raise VitParetoError(
                f"importance {criterion!r}: the calibration labels do not fit the model's "
                f"{getattr(model, 'num_classes', '?')} classes; give the model's own dataset"
            ) from None
        raise
    finally:
        model.train(was_training)


def _order(scores: torch.Tensor) -> torch.Tensor:
    # stable, so equal scores keep the original order (identity stays identity)
    return torch.sort(scores.cpu(), descending=True, stable=True).indices


def rank(
    model: nn.Module,
    criterion: str | Criterion | Sequence[BlockScores] = "magnitude",
    data: Iterable | None = None,
    batches: int = CALIBRATION_BATCHES,
) -> list[dict[str, list]]:
    """Permute every block of a timm ViT in place, most important first.

    ``criterion``: see ``importance_scores``, or scores already computed (one
    ``BlockScores`` per block). Returns, per block, the original indices now at each
    position: ``heads`` ``[H]``, ``qk`` ``[H][head_dim]`` (per original head) and ``mlp``
    ``[hidden]``.
    """
    if isinstance(criterion, (str,)) or callable(criterion):
        scores = importance_scores(model, criterion, data, batches)
    else:
        scores = list(criterion)
    if len(scores) != len(model.blocks):
        raise VitParetoError(f"{len(scores)} block scores for {len(model.blocks)} blocks")
    orders = []
    with torch.no_grad():
        for blk, s in zip(model.blocks, scores, strict=True):
            attn = blk.attn
            H, hd = attn.num_heads, attn.head_dim
            head_order = _order(s.heads)
            if hasattr(attn, "rope_slots"):  # rotary pairs move whole, each with its frequency
                qk_order = _pair_orders(attn, s.qk, head_order)
            elif isinstance(attn.q_norm, nn.Identity):
                qk_order = torch.stack([_order(s.qk[h]) for h in range(H)])
            else:  # q/k norm weights are shared by all heads: one channel order for all
                qk_order = _order(s.qk.sum(0)).expand(H, hd)
            mlp_order = _order(s.mlp)
            _permute_attention(attn, head_order, qk_order)
            permute_mlp(blk.mlp, mlp_order)
            orders.append(
                {"heads": head_order.tolist(), "qk": qk_order.tolist(), "mlp": mlp_order.tolist()}
            )
    return orders


def _pair_orders(attn: nn.Module, qk: torch.Tensor, head_order: torch.Tensor) -> torch.Tensor:
    """Channel orders [H, head_dim] that keep rotary pairs together (pairs ranked by the sum
    of their two channels' scores), with ``rope_slots`` permuted to follow them."""
    H, hd = attn.num_heads, attn.head_dim
    if not isinstance(attn.q_norm, nn.Identity):  # shared norm weights: one order for all heads
        qk = qk.sum(0).expand(H, hd)
    pairs = torch.stack([_order(qk[h].view(-1, 2).sum(-1)) for h in range(H)])  # H, P
    slots = attn.rope_slots
    new = slots.gather(1, pairs.to(slots.device))[head_order.to(slots.device)]
    slots.copy_(new)
    return torch.stack([2 * pairs, 2 * pairs + 1], dim=-1).flatten(1)


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
