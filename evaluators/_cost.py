"""Cost of a model: multiply-accumulates (fvcore, attention included) and parameters.

Convention (the papers' GMACs, which they call GFLOPs): one multiply-add is one MAC; a
LayerNorm counts 5 x its elements, as fvcore counts it, and an RMSNorm 3 (the same less
the mean and its subtraction; fvcore sees only its elementwise ops and counts nothing); the attention matmuls are counted (fvcore skips
``aten::scaled_dot_product_attention`` unless given the handle below); token selection
(the class-attention row, ranking, gathering, fusing) is bookkeeping and left out, which
reproduces EViT's published MACs; token merging's matching (the cosine similarities of one
half of the tokens against the other, ToMe) is counted.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn

with warnings.catch_warnings():  # fvcore calls torch.jit.script on import, which warns
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

from vitpareto.errors import VitParetoError
from vitpareto.spaces import (
    NORM_MACS,
    Candidate,
    ClassAttention,
    TokenSelect,
    describe,
    merge_macs,
    norm_kind,
    token_counts,
)


def _sdpa_macs(inputs, outputs) -> int:
    """q [.., N, d] k [.., S, d] v [.., S, dv]: q.k^T then attn.v."""

    q, k, v = (get_shape(t) for t in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def _in_chans(model: nn.Module) -> int:
    """The input channels of a ViT (the first convolution's, for another model)."""
    try:
        return describe(model).in_chans
    except VitParetoError:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        return 3 if conv is None else conv.in_channels


def _image_shape(input_size: int | Sequence[int], channels: int) -> tuple[int, int, int]:
    if isinstance(input_size, int):
        return channels, input_size, input_size
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        return (channels, *size)
    if len(size) == 3:
        return size
    raise VitParetoError(f"input_size must be S, (H, W) or (C, H, W); got {input_size!r}")


def count_macs(
    model: nn.Module, input_size: int | Sequence[int], include_selection: bool = False
) -> int:
    """Multiply-accumulates of ``model(x)`` for one image of ``input_size`` (``(H, W)`` or
    a side takes the model's own number of input channels).

    ``include_selection`` also counts the token-selection bookkeeping that EViT's
    convention leaves out.
    """

    param = next(model.parameters())
    x = torch.zeros(
        1, *_image_shape(input_size, _in_chans(model)), device=param.device, dtype=param.dtype
    )
    was_training = model.training
    model.eval()
    rms = _RmsCount(model)
    try:
        with warnings.catch_warnings(), rms:
            warnings.simplefilter("ignore")
            fca = FlopCountAnalysis(model, x)
            fca.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            fca.tracer_warnings("none")
            total = fca.total() + rms.macs
            if not include_selection:
                by_module = fca.by_module()
                total -= sum(
                    by_module.get(name, 0)
                    for name, mod in model.named_modules()
                    if isinstance(mod, ClassAttention | TokenSelect)
                )
    finally:
        model.train(was_training)
    return int(total)


class _RmsCount:
    """Counts the RMSNorms' MACs while fvcore traces the model (their elementwise ops are
    invisible to it): each call's input elements times ``NORM_MACS['rmsnorm']``."""

    def __init__(self, model: nn.Module):
        self.norms = [m for m in model.modules() if norm_kind(m) == "rmsnorm"]
        self.macs, self.hooks = 0, []

    def _hook(self, module, args, output) -> None:
        self.macs += args[0].numel() * NORM_MACS["rmsnorm"]

    def __enter__(self):
        self.hooks = [m.register_forward_hook(self._hook) for m in self.norms]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.hooks:
            h.remove()


def count_params(model: nn.Module) -> int:
    """Number of parameters (every one of a compressed model is really there)."""
    return sum(p.numel() for p in model.parameters())


def analytic_macs(model, candidate: Candidate | None = None) -> int:
    """MACs of ``candidate`` on ``model`` from the shapes alone, without running anything.

    The same convention as ``count_macs``, with which it agrees exactly. Per block, with
    ``c`` a norm's cost per element (5 for a LayerNorm, 3 for an RMSNorm):
    ``c N D + N D (2 h d_qk + h d_v) + N^2 h (d_qk + d_v) + N h d_v D`` for the attention
    (N tokens in) and ``c N' D + 2 N' D m`` for the MLP (N' tokens after pruning;
    ``3 N' D m`` for a gated one, SwiGLU or GLU), plus the patch embedding, the norms and
    the head(s); a merging block adds its matching, ``a b d_qk`` per round of a tokens
    against b; an attention pool ('map') ``attn_pool_macs``.
    """
    return mac_profile(model, candidate)[-1]


def attn_pool_macs(model, tokens: int) -> int:
    """MACs of the model's attention pool ('map') over ``tokens`` patch tokens: the latent
    queries' projection, the keys and values of every token, the attention, the output
    projection, the norm and the MLP (timm's ``AttentionPoolLatent``)."""
    s = describe(model)
    if not s.attn_pool:
        raise VitParetoError("the model has no attention pool (global_pool='map')")
    latents, _, m = s.attn_pool
    D = s.embed_dim
    proj = 2 * latents * D * D + 2 * tokens * D * D  # q and proj; k and v
    return proj + 2 * latents * tokens * D + latents * D * (s.norm_macs + 2 * m)


def _head_macs(s, tokens: int) -> int:
    """The final head after the last block, on ``tokens`` tokens (prefix included)."""
    D, c = s.embed_dim, s.norm_macs
    total = (c * tokens * D if s.final_norm else 0) + (c * D if s.fc_norm else 0)
    if s.attn_pool:
        total += attn_pool_macs(s, tokens - (0 if s.pool_prefix else s.num_prefix_tokens))
    return total + D * s.num_classes * (2 if s.distilled else 1)


def mac_profile(model, candidate: Candidate | None = None) -> list[int]:
    """Cumulative MACs through each block's end, then the total with the head(s).

    Entry i is the cost of the stem and blocks 0..i (an early exit after block i adds
    ``exit_head_macs``); the last entry equals ``analytic_macs``.
    """
    s = describe(model)
    c = (candidate or Candidate.full(s)).validate(s)
    D, hd, npt, p, cn = s.embed_dim, s.head_dim, s.num_prefix_tokens, c.patch_size, s.norm_macs
    n = (s.img_size[0] // p) * (s.img_size[1] // p)  # non-prefix tokens
    total = n * s.in_chans * p * p * D
    if s.embed_norm:
        total += cn * n * D
    if s.norm_pre:
        total += cn * (n + npt) * D
    profile = []
    counts = token_counts(s, c)
    for i, (n_attn, n_mlp) in enumerate(counts):
        h, dq, m = c.heads[i], c.qk_dim[i], c.mlp[i]
        if h > 0:
            N = n_attn
            total += cn * N * D + N * D * h * (2 * dq + hd) + N * N * h * (dq + hd) + N * h * hd * D
            if s.qk_norm:
                total += 2 * cn * N * h * dq
            if c.token_mode[i] == "merge":
                total += merge_macs(N - npt, n_mlp - npt, dq)
        if m > 0:
            total += cn * n_mlp * D + (3 if s.gated_mlp else 2) * n_mlp * D * m
        profile.append(total)
    profile.append(total + _head_macs(s, counts[-1][1]))
    return profile


def exit_head_macs(
    model, tokens: int | None = None, design: str = "linear", block: int | None = None
) -> int:
    """MACs of one early-exit head of ``design`` after ``block`` on ``tokens`` tokens
    (prefix included): a ``linear`` head's norm and Linear (an attention-pool model's
    exit runs its own pool too), an ``mlp`` head's hidden layer besides, an ``attention``
    head's block (a copy of block ``block + 1``, over its own class token too), a
    ``conv`` head's convolutions on the grid. ``tokens`` is needed but for a ``linear``
    or ``mlp`` head on a model that pools without attention."""
    s = describe(model)
    D, cn = s.embed_dim, s.norm_macs
    if (design not in ("linear", "mlp") or s.attn_pool) and tokens is None:
        raise VitParetoError(f"this exit head ({design}) costs by its tokens: pass tokens")
    if design == "attention":
        if block is None:
            raise VitParetoError("an attention exit head copies the next block: pass block")
        t = tokens + int(s.global_pool == "token")  # its own class token
        return _full_block_macs(s, t, s.mlp_hidden[block + 1]) + exit_head_macs(s, t)
    if design == "conv":
        n = tokens - s.num_prefix_tokens
        return n * D * 9 + n * D * D + cn * D + D * s.num_classes
    head = _head_macs(s, tokens) if s.attn_pool else cn * D + D * s.num_classes
    return head + (D * D if design == "mlp" else 0)


def _full_block_macs(s, tokens: int, mlp: int) -> int:
    """One whole block (every head and q/k channel, ``mlp`` hidden channels) on ``tokens``."""
    N, D, H, hd, cn = tokens, s.embed_dim, s.num_heads, s.head_dim, s.norm_macs
    attn = cn * N * D + N * D * H * 3 * hd + N * N * H * 2 * hd + N * H * hd * D
    if s.qk_norm:
        attn += 2 * cn * N * H * hd
    return attn + cn * N * D + (3 if s.gated_mlp else 2) * N * D * mlp


def exit_macs(model, candidate: Candidate) -> list[int]:
    """MACs spent on a sample that leaves by each route (each cascade stage, then each
    exit), then on one that reaches the final head; every stage and exit head the sample
    passed through is counted."""
    s = describe(model)
    profile, counts = mac_profile(s, candidate), token_counts(s, candidate)
    heads = [
        exit_head_macs(s, counts[b][1], t, b)
        for b, t in zip(candidate.exits, candidate.exit_types, strict=True)
    ]
    out = [profile[b] + sum(heads[: j + 1]) for j, b in enumerate(candidate.exits)]
    # a sample at the last stage of a cascade has run every coarser stage first
    stages = list(
        itertools.accumulate(analytic_macs(s, candidate.stage(p)) for p in candidate.cascade)
    )
    before = stages[-1] if stages else 0
    return stages + [before + m for m in [*out, profile[-1] + sum(heads)]]
