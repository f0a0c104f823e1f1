"""Importance criteria: how much each head, q/k channel and MLP channel of a block matters.

Two from the weights alone (``magnitude``, ``identity``) and three from the model's
behaviour on calibration batches of the user's data, which is what a trained model's
ranking should rest on (magnitude is the weakest criterion there):

- ``taylor``: first-order Taylor estimate of the loss change when a part is removed,
  |weight x gradient| summed over the part's weights, summed over batches (Molchanov et al.,
  2019; what Torch-Pruning calls Taylor importance).
- ``similarity``: a part matters by what it adds that the parts kept before it do not
  already carry (the channel-pruning paper's idea, Lee & Hwang 2024): the parts are chosen
  greedily by the residual of their contribution once the chosen ones are projected out.
  A q/k channel's contribution is its term of the q.k logits, a head's and an MLP
  channel's their term of the block's output. The Gram matrix of q/k logit terms is
  exactly the element-wise product of the q and k Gram matrices, so no token-pair tensor
  is formed.
- ``attention``: what a part does to the class token (the pooled tokens where there is
  none): a head by the norm of what it writes into it, a q/k channel by its share of the
  class token's attention logits weighted by the attention, an MLP channel by its
  activation on it times its output weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitpareto.spaces._mlp import first_layer, hidden

Batches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class BlockScores:
    """Importance of one block's parts: heads [H], q/k channels [H, head_dim], MLP [hidden]."""

    heads: torch.Tensor
    qk: torch.Tensor
    mlp: torch.Tensor


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
    rows = torch.cat([w.detach() for w, _ in first_layer(mlp)], 1)  # gate and value rows
    mlp_s = rows.norm(dim=1) * mlp.fc2.weight.detach().norm(dim=0)
    return BlockScores(heads=heads, qk=qk, mlp=mlp_s)


def identity(block: nn.Module) -> BlockScores:
    """Keep the model's own order (heads and channels kept from the first)."""
    attn = block.attn
    H, hd = attn.num_heads, attn.head_dim
    n = hidden(block.mlp)
    return BlockScores(
        heads=-torch.arange(H, dtype=torch.float),
        qk=-torch.arange(hd, dtype=torch.float).expand(H, hd),
        mlp=-torch.arange(n, dtype=torch.float),
    )


# -- taylor ---------------------------------------------------------------------------------
def _wg(p: torch.Tensor | None) -> torch.Tensor | None:
    """|weight x gradient| of a parameter (None when it has none or no gradient)."""
    if p is None or p.grad is None:
        return None
    return (p.detach() * p.grad.detach()).abs().float()


def _taylor_block(block: nn.Module) -> BlockScores:
    attn, mlp = block.attn, block.mlp
    H, hd = attn.num_heads, attn.head_dim
    rows = _wg(attn.qkv.weight).sum(1)
    bias = _wg(attn.qkv.bias)
    if bias is not None:
        rows = rows + bias
    rows = rows.view(3, H, hd)
    proj = _wg(attn.proj.weight).sum(0).view(H, hd)
    fc1 = 0  # a gated MLP's gate and value rows together
    for w, b in first_layer(mlp, _wg):
        fc1 = fc1 + w.sum(1) + (0 if b is None else b)
    return BlockScores(
        heads=rows.sum((0, 2)) + proj.sum(1),
        qk=rows[0] + rows[1],
        mlp=fc1 + _wg(mlp.fc2.weight).sum(0),
    )


def taylor(model: nn.Module, batches: Batches) -> list[BlockScores]:
    """First-order Taylor importance of every block's parts, on the labels' cross-entropy."""
    params = list(model.parameters())
    saved = [(p.grad, p.requires_grad) for p in params]
    total: list[BlockScores] | None = None
    try:
        for p in params:
            p.requires_grad_(True)
        for x, y in batches:
            for p in params:
                p.grad = None
            with torch.enable_grad():
                F.cross_entropy(model(x), y).backward()
            scores = [_taylor_block(blk) for blk in model.blocks]
            total = (
                scores
                if total is None
                else [_add(a, b) for a, b in zip(total, scores, strict=True)]
            )
    finally:
        for p, (grad, req) in zip(params, saved, strict=True):
            p.grad = grad
            p.requires_grad_(req)
    return total


def _add(a: BlockScores, b: BlockScores) -> BlockScores:
    return BlockScores(a.heads + b.heads, a.qk + b.qk, a.mlp + b.mlp)


# -- what each block sees on calibration data ---------------------------------------------
class _Record:
    """Forward pre-hooks that keep each block's attention input, per-head attention output
    (the projection's input) and MLP hidden activations (fc2's input) of one batch."""

    def __init__(self, model: nn.Module):
        self.seen: list[dict[str, torch.Tensor]] = [{} for _ in model.blocks]
        self.handles = []
        for i, blk in enumerate(model.blocks):
            for name, module in (
                ("x", blk.attn.qkv),
                ("o", blk.attn.proj),
                ("a", blk.mlp.fc2),
            ):
                self.handles.append(module.register_forward_pre_hook(self._keep(i, name)))

    def _keep(self, i: int, name: str):
        def hook(_module, inputs):
            self.seen[i][name] = inputs[0].detach().float()

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _qkv(attn: nn.Module, x: torch.Tensor):
    """q and k (after any q/k norm) and the attention probabilities, per head [B, H, N, *]."""
    B, N, _ = x.shape
    H, hd = attn.num_heads, attn.head_dim
    w = attn.qkv.weight.float()
    b = None if attn.qkv.bias is None else attn.qkv.bias.float()
    q, k, _v = F.linear(x, w, b).view(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    probs = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)
    return q, k, probs


def _head_outputs(attn: nn.Module, o: torch.Tensor) -> torch.Tensor:
    """Each head's term of the attention output [H, B, N, D]: its slice through the projection."""
    B, N, _ = o.shape
    H, hd = attn.num_heads, attn.head_dim
    w = attn.proj.weight.float().view(-1, H, hd)
    return torch.einsum("bnhc,dhc->hbnd", o.view(B, N, H, hd), w)


def _calibrated(model: nn.Module, batches: Batches, score) -> list[BlockScores]:
    """Sum over batches of ``score(block, what the block saw)`` for every block."""
    record = _Record(model)
    total: list[BlockScores] | None = None
    try:
        with torch.no_grad():
            for x, _y in batches:
                model(x)
                scores = [score(b, s) for b, s in zip(model.blocks, record.seen, strict=True)]
                total = (
                    scores
                    if total is None
                    else [_add(a, c) for a, c in zip(total, scores, strict=True)]
                )
    finally:
        record.close()
    return total


# -- similarity -----------------------------------------------------------------------------
def greedy_scores(gram: torch.Tensor) -> torch.Tensor:
    """Scores whose descending order is the greedy choice on a Gram matrix: each next part
    the one whose contribution keeps the largest residual once the chosen parts' span is
    projected out (pivoted Cholesky). Parts left with no residual follow by their own
    energy."""
    g = gram.double()
    n = g.shape[0]
    diag = g.diagonal().clone()
    left = diag.clone()
    rows = torch.zeros(n, n, dtype=g.dtype)  # row i: the factor of the i-th part chosen
    taken = torch.zeros(n, dtype=torch.bool)
    chosen: list[int] = []
    floor = 1e-10 * float(diag.max().clamp_min(1e-300))
    for i in range(n):
        masked = left.masked_fill(taken, -torch.inf)
        j = int(masked.argmax())
        if masked[j] <= floor:
            break
        chosen.append(j)
        taken[j] = True
        rows[i] = (g[:, j] - rows[:i].T @ rows[:i, j]) / masked[j].sqrt()
        left = left - rows[i].pow(2)
    rest = [j for j in torch.argsort(diag, descending=True, stable=True).tolist() if not taken[j]]
    order = chosen + rest
    scores = torch.empty(n)
    scores[torch.tensor(order)] = torch.arange(n, 0, -1, dtype=torch.float)
    return scores


def _similarity_block(block: nn.Module, seen: dict[str, torch.Tensor]) -> BlockScores:
    attn, mlp = block.attn, block.mlp
    q, k, _ = _qkv(attn, seen["x"])
    qk_gram = torch.einsum("bhnc,bhnd->hcd", q, q) * torch.einsum("bhnc,bhnd->hcd", k, k)
    # <o_h W_h^T, o_g W_g^T> summed over tokens, from the (H hd)^2 second moments of the
    # per-head outputs and of the projection: no [H, tokens, D] tensor is formed
    o = seen["o"].flatten(0, -2)
    w = attn.proj.weight.float()
    H, hd = attn.num_heads, attn.head_dim
    heads = ((o.T @ o) * (w.T @ w)).view(H, hd, H, hd).sum((1, 3))
    a = seen["a"].flatten(0, -2)
    w2 = mlp.fc2.weight.float()
    return BlockScores(
        heads=heads,
        qk=qk_gram,
        mlp=(a.T @ a) * (w2.T @ w2),
    )


def similarity(model: nn.Module, batches: Batches) -> list[BlockScores]:
    """Redundancy-aware importance: Gram matrices summed over batches, then the greedy order."""
    grams = _calibrated(model, batches, _similarity_block)
    return [
        BlockScores(
            heads=greedy_scores(g.heads),
            qk=torch.stack([greedy_scores(h) for h in g.qk]),
            mlp=greedy_scores(g.mlp),
        )
        for g in grams
    ]


# -- attention ------------------------------------------------------------------------------
def _queries(t: torch.Tensor, dim: int, class_token: bool) -> torch.Tensor:
    """The class token's slice along ``dim`` (all tokens where there is none), averaged."""
    if class_token:
        return t.narrow(dim, 0, 1).mean(dim)
    return t.mean(dim)


def attention(model: nn.Module, batches: Batches) -> list[BlockScores]:
    """Importance by what each part does to the class token (the pooled tokens without one)."""
    cls = getattr(model, "cls_token", None) is not None

    def score(block: nn.Module, seen: dict[str, torch.Tensor]) -> BlockScores:
        attn, mlp = block.attn, block.mlp
        q, k, probs = _qkv(attn, seen["x"])
        o = seen["o"][:, :1] if cls else seen["o"]  # only what reaches the class token
        heads = _head_outputs(attn, o).norm(dim=-1).mean(2).sum(1)
        # |q_ic k_jc|, the channel's part of the logit of query i and key j, weighted by
        # the attention of i on j, for i the class token (every token where there is none)
        if cls:
            qk = torch.einsum("bhj,bhc,bhjc->hc", probs[:, :, 0], q[:, :, 0].abs(), k.abs())
        else:
            qk = torch.einsum("bhij,bhic,bhjc->hc", probs, q.abs(), k.abs()) / q.shape[2]
        act = _queries(seen["a"].abs(), 1, cls).sum(0)
        return BlockScores(heads=heads, qk=qk, mlp=act * mlp.fc2.weight.float().norm(dim=0))

    return _calibrated(model, batches, score)
