"""Early-exit branch designs (after Multi-Exit ViT, Bakhtiarnia et al. 2021): what an exit
runs on the tokens it reads, each a trade of its own between cost and accuracy.

- ``linear``: the model's own head (pool, norm, Linear); the default, and the only design
  of checkpoints and studies made before designs were a knob.
- ``mlp``: the same pooled vector through a hidden layer of the model's width (GELU).
- ``attention``: one transformer block (a copy of the block after the exit) over the
  tokens, with a class token of its own where the model pools its class token, then the
  model's head. Not offered for rotary models (the branch would need the positions).
- ``conv``: the patch tokens laid back on their grid, a depthwise 3x3 and a pointwise
  convolution (GELU after each), averaged, normalised, then a Linear. It reads the full
  grid, so it sits only at exits before any block reduces tokens.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from vitpareto.errors import VitParetoError
from vitpareto.spaces._ops import ExitHead

EXIT_TYPES = ("linear", "mlp", "attention", "conv")


def exit_key(block: int, design: str) -> str:
    """The name of the exit head of ``design`` after ``block`` in an elastic model (a
    ``linear`` head keeps the bare block number checkpoints have always used)."""
    return str(block) if design == "linear" else f"{block}_{design}"


def key_design(key: str) -> str:
    """The design of the exit head an elastic model names ``key`` (see ``exit_key``)."""
    return key.partition("_")[2] or "linear"


def check_design(spec, design: str) -> None:
    if design not in EXIT_TYPES:
        raise VitParetoError(
            f"exit type {design!r} is not an exit design; allowed: {', '.join(EXIT_TYPES)}"
        )
    if design == "attention" and spec.rope:
        raise VitParetoError(
            "the attention exit branch is not offered for a model with rotary embeddings "
            "(its block would need each token's position); choose linear, mlp or conv"
        )


def new_exit(vit: nn.Module, spec, design: str, block: int) -> ExitHead:
    """A fresh exit head of ``design`` after ``block`` of ``vit``, started from the model's
    own final norm and classifier (and, for ``attention``, its next block)."""
    check_design(spec, design)
    if design == "linear":
        return ExitHead.like(vit, spec)
    if design == "mlp":
        return MlpExit.like(vit, spec)
    if design == "attention":
        if block + 1 >= len(vit.blocks):
            raise VitParetoError(
                f"an attention exit copies the block after it; block {block} is the last"
            )
        return AttentionExit.like(vit, spec).start(vit, spec, block)
    return ConvExit.like(vit, spec, attn_pool=False).start(spec)


class MlpExit(ExitHead):
    """The model's pooled, normalised vector, then Linear (width to width), GELU, Linear."""

    def __init__(self, dim: int, *args, **kwargs):
        super().__init__(dim, *args, **kwargs)
        self.fc = nn.Linear(dim, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc(self.pooled(self.unpack(x)))))


class AttentionExit(ExitHead):
    """One transformer block of its own over the tokens (prepending its own class token
    where the model pools the class token), then the model's pooling, norm and Linear."""

    def start(self, vit: nn.Module, spec, block: int) -> AttentionExit:
        self.block = copy.deepcopy(vit.blocks[block + 1])
        self.cls_token = None
        if self.pool == "token":
            token = vit.cls_token.detach().clone()
            if vit.pos_embed is not None and not vit.no_embed_class:
                token = token + vit.pos_embed[:, :1].detach()
            self.cls_token = nn.Parameter(token)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.unpack(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return self.head(self.pooled(self.block(x)))


class ConvExit(ExitHead):
    """The patch tokens on their grid through a depthwise 3x3 and a pointwise convolution,
    averaged, normalised and classified."""

    def start(self, spec) -> ConvExit:
        dim = spec.embed_dim
        ref = self.head.weight
        self.img_size = tuple(spec.img_size)
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim).to(ref.device, ref.dtype)
        self.pw = nn.Conv2d(dim, dim, 1).to(ref.device, ref.dtype)
        self.act = nn.GELU()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.unpack(x)[:, self.num_prefix_tokens :]
        n, (height, width) = t.shape[1], self.img_size
        p = math.isqrt(height * width // n)  # the patch side: the grid is the image's
        g = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], height // p, width // p)
        g = self.act(self.pw(self.act(self.dw(g))))
        return self.head(self.norm(g.mean((2, 3))))
