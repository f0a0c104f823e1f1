"""Cost of a model: multiply-accumulates (fvcore, attention included) and parameters.

Convention (the papers' GMACs, which they call GFLOPs): one multiply-add is one MAC; a
LayerNorm counts 5 x its elements, as fvcore counts it; the attention matmuls are counted (fvcore skips
``aten::scaled_dot_product_attention`` unless given the handle below); token selection
(the class-attention row, ranking, gathering, fusing) is bookkeeping and left out, which
reproduces EViT's published MACs; token merging's matching (the cosine similarities of one
half of the tokens against the other, ToMe) is counted.
"""

from __future__ import annotations

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
    Candidate,
    ClassAttention,
    TokenSelect,
    describe,
    merge_macs,
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fca = FlopCountAnalysis(model, x)
            fca.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            fca.tracer_warnings("none")
            total = fca.total()
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


def count_params(model: nn.Module) -> int:
    """Number of parameters (every one of a compressed model is really there)."""
    return sum(p.numel() for p in model.parameters())


def analytic_macs(model, candidate: Candidate | None = None) -> int:
    """MACs of ``candidate`` on ``model`` from the shapes alone, without running anything.

    The same convention as ``count_macs``, with which it agrees exactly for LayerNorm
    models: per block ``5 N D + N D (2 h d_qk + h d_v) + N^2 h (d_qk + d_v) + N h d_v D``
    for the attention (N tokens in) and ``5 N' D + 2 N' D m`` for the MLP (N' tokens
    after pruning; ``3 N' D m`` for a gated one, SwiGLU or GLU), plus the patch embedding, the norms and the head(s); a merging block
    adds its matching, ``a b d_qk`` per round of a tokens against b.
    """
    return mac_profile(model, candidate)[-1]


def mac_profile(model, candidate: Candidate | None = None) -> list[int]:
    """Cumulative MACs through each block's end, then the total with the head(s).

    Entry i is the cost of the stem and blocks 0..i (an early exit after block i adds
    ``exit_head_macs``); the last entry equals ``analytic_macs``.
    """
    s = describe(model)
    c = (candidate or Candidate.full(s)).validate(s)
    D, hd, npt, p = s.embed_dim, s.head_dim, s.num_prefix_tokens, c.patch_size
    n = (s.img_size[0] // p) * (s.img_size[1] // p)  # non-prefix tokens
    total = n * s.in_chans * p * p * D
    if s.norm_pre:
        total += 5 * (n + npt) * D
    profile = []
    counts = token_counts(s, c)
    for i, (n_attn, n_mlp) in enumerate(counts):
        h, dq, m = c.heads[i], c.qk_dim[i], c.mlp[i]
        if h > 0:
            N = n_attn
            total += 5 * N * D + N * D * h * (2 * dq + hd) + N * N * h * (dq + hd) + N * h * hd * D
            if s.qk_norm:
                total += 2 * 5 * N * h * dq
            if c.token_mode[i] == "merge":
                total += merge_macs(N - npt, n_mlp - npt, dq)
        if m > 0:
            total += 5 * n_mlp * D + (3 if s.gated_mlp else 2) * n_mlp * D * m
        profile.append(total)
    N = counts[-1][1]
    total += (5 * N * D if s.final_norm else 0) + (5 * D if s.fc_norm else 0)
    total += D * s.num_classes * (2 if s.distilled else 1)
    profile.append(total)
    return profile


def exit_head_macs(model) -> int:
    """MACs of one early-exit head (pooled LayerNorm and Linear)."""
    s = describe(model)
    return 5 * s.embed_dim + s.embed_dim * s.num_classes


def exit_macs(model, candidate: Candidate) -> list[int]:
    """MACs spent on a sample that leaves at each exit, then on one that reaches the final
    head; every exit head the sample passed through is counted."""
    profile, head = mac_profile(model, candidate), exit_head_macs(model)
    out = [profile[b] + (j + 1) * head for j, b in enumerate(candidate.exits)]
    return out + [profile[-1] + len(candidate.exits) * head]
