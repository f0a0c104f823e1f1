"""The MLPs vitpareto cuts: timm's ``Mlp`` and the gated ones (``SwiGLU``, as in AIMv2 and
EVA-02, and ``GluMlp``, as in DINOv2-giant). Either is a set of hidden channels, each
owning one row of every first-layer projection (a gated MLP's gate and value rows go
together) and one column of ``fc2``: the unit that is ranked, permuted and cut."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import GluMlp, Mlp, SwiGLU

MLPS = (Mlp, SwiGLU, GluMlp)


def gated(mlp: nn.Module) -> bool:
    return isinstance(mlp, SwiGLU | GluMlp)


def hidden(mlp: nn.Module) -> int:
    """Hidden channels: what the MLP knob counts."""
    return mlp.fc2.in_features


def first_layer(mlp: nn.Module, get=None) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The first layer's (weight, bias) per role, a row per hidden channel: one pair for
    ``Mlp``, the gate's then the value's for a gated MLP (views of the parameters, or of
    what ``get`` makes of each, such as its |weight x gradient|; None stays None)."""

    def g(p):
        return p if p is None or get is None else get(p)

    if isinstance(mlp, SwiGLU):
        return [(g(mlp.fc1_g.weight), g(mlp.fc1_g.bias)), (g(mlp.fc1_x.weight), g(mlp.fc1_x.bias))]
    w, b = g(mlp.fc1.weight), g(mlp.fc1.bias)
    if isinstance(mlp, GluMlp):  # one layer, chunked in two halves
        n = hidden(mlp)
        halves = [(w[:n], None if b is None else b[:n]), (w[n:], None if b is None else b[n:])]
        return halves[::-1] if mlp.gate_last else halves
    return [(w, b)]


def first_rows(mlp: nn.Module, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first layer cut to ``m`` channels as one weight and bias (gate rows then value
    rows for a gated MLP), differentiable: the elastic model's weights."""
    pieces = first_layer(mlp)
    ws = [w[:m] for w, _ in pieces]
    bs = [b[:m] for _, b in pieces if b is not None]
    w = ws[0] if len(ws) == 1 else torch.cat(ws)
    b = None if not bs else bs[0] if len(bs) == 1 else torch.cat(bs)
    return w, b


def mlp_forward(mlp: nn.Module, x: torch.Tensor, fc1_w, fc1_b, fc2_w, fc2_b) -> torch.Tensor:
    """timm's MLP computation with given (possibly sliced) weights, ``first_rows``' layout."""
    h = F.linear(x, fc1_w, fc1_b)
    if gated(mlp):
        gate, value = h.chunk(2, dim=-1)
        h = mlp.act(gate) * value
    else:
        h = mlp.act(h)
    return mlp.drop2(F.linear(mlp.norm(mlp.drop1(h)), fc2_w, fc2_b))


@torch.no_grad()
def permute_mlp(mlp: nn.Module, order: torch.Tensor) -> None:
    """Reorder the hidden channels (the function is unchanged)."""
    order = order.to(mlp.fc2.weight.device)
    for w, b in first_layer(mlp):
        w.copy_(w[order])
        if b is not None:
            b.copy_(b[order])
    mlp.fc2.weight.copy_(mlp.fc2.weight[:, order])


def linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A new ``nn.Linear`` holding copies of ``weight`` and ``bias``."""
    lin = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
        dtype=weight.dtype,
    )  # fmt: skip
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def cut_mlp(mlp: nn.Module, m: int) -> nn.Module:
    """``mlp`` (a copy the caller owns) with its first ``m`` channels only, physically:
    timm's own module with smaller layers, so its forward is timm's."""
    if isinstance(mlp, SwiGLU):
        for name in ("fc1_g", "fc1_x"):
            layer = getattr(mlp, name)
            bias = None if layer.bias is None else layer.bias.detach()[:m]
            setattr(mlp, name, linear_from(layer.weight.detach()[:m], bias))
    else:  # Mlp, or GluMlp's one layer: each half cut in place, in its own order
        n = hidden(mlp)
        rows = torch.arange(m)
        if isinstance(mlp, GluMlp):
            rows = torch.cat([rows, n + rows])
        rows = rows.to(mlp.fc1.weight.device)
        bias = None if mlp.fc1.bias is None else mlp.fc1.bias.detach()[rows]
        mlp.fc1 = linear_from(mlp.fc1.weight.detach()[rows], bias)
    bias = None if mlp.fc2.bias is None else mlp.fc2.bias.detach()
    mlp.fc2 = linear_from(mlp.fc2.weight.detach()[:, :m], bias)
    return mlp
