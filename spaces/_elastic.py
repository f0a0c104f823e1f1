"""The elastic ViT: one set of shared weights that runs any Candidate (the supernet)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.layers.format import nchw_to
from timm.layers.patch_embed import PatchEmbedResamplerFixedOrigSize

from vitpareto.errors import VitParetoError
from vitpareto.spaces._adapters import adapt
from vitpareto.spaces._branches import EXIT_TYPES, check_design, exit_key, key_design, new_exit
from vitpareto.spaces._candidate import Candidate
from vitpareto.spaces._compress import CompressedViT, extract
from vitpareto.spaces._criteria import BlockScores
from vitpareto.spaces._eva import rope_table
from vitpareto.spaces._importance import CALIBRATION_BATCHES, Criterion, rank
from vitpareto.spaces._mlp import first_rows, mlp_forward
from vitpareto.spaces._ops import (
    attention,
    residual_block,
    slice_qkv,
    sliced_norm,
)
from vitpareto.spaces._rope import TokenRope, grid_positions
from vitpareto.spaces._spec import ViTSpec, describe
from vitpareto.spaces._tokens import TOKEN_MODES, reducer, reduces, scorer


class ElasticViT(nn.Module):
    """A timm VisionTransformer whose heads, channels, blocks, tokens, patch size and exits
    are chosen per forward pass by a ``Candidate``.

    Construction ranks the model's heads and channels by ``importance`` (permuting its
    weights in place: pass a copy to keep the original; the data-driven criteria read
    ``calibration_batches`` batches of ``data``, see ``importance_scores``) and adds an early-exit head
    after each block in ``exit_blocks`` (default: every block but the last), initialised
    from the model's own final norm and classifier.
    """

    def __init__(
        self,
        model: nn.Module,
        importance: str | Criterion | Sequence[BlockScores] = "magnitude",
        exit_blocks: Iterable[int] | None = None,
        data: Iterable | None = None,
        calibration_batches: int = CALIBRATION_BATCHES,
        exit_types: Iterable[str] = ("linear",),
    ):
        super().__init__()
        model = adapt(model)  # another architecture, mapped onto the model vitpareto cuts
        self.spec: ViTSpec = describe(model)
        self.vit = model
        self.orders = rank(model, importance, data, calibration_batches)
        s = self.spec
        blocks = range(s.depth - 1) if exit_blocks is None else sorted(set(exit_blocks))
        self.exit_types: tuple[str, ...] = ()  # the designs held, in EXIT_TYPES order
        self.exit_heads = nn.ModuleDict()
        self.hold(exit_types, blocks)
        self._scorers = {m: scorer(m, s.num_prefix_tokens, s.has_class_token) for m in TOKEN_MODES}
        # FlexiViT PI-resize with its pseudo-inverse cached per target size (training visits
        # the same few patch sizes thousands of times)
        self._resample = PatchEmbedResamplerFixedOrigSize((s.patch_size, s.patch_size))
        self._rope_tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per patch size

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, candidate: Candidate | None = None) -> torch.Tensor:
        """Final logits of ``candidate`` (default: the full model) on the shared weights."""
        return self.forward_exits(x, candidate, exits=False)[-1]

    def forward_exits(
        self,
        x: torch.Tensor,
        candidate: Candidate | None = None,
        exits: bool = True,
        every_design: bool = False,
    ) -> list[torch.Tensor]:
        """Logits of each cascade stage and every exit of ``candidate`` in order (the routes
        a sample can leave by), then the final logits;
        with ``every_design``, at each exit every design this model holds there (in
        ``exit_types`` order), as supernet training distils them all."""
        c = candidate if candidate is not None else Candidate.full(self.spec)
        if exits:
            self.check_exits(c)
        design = dict(zip(c.exits, c.exit_types, strict=True))
        # each cascade stage's final logits come first (its static model at that size)
        outs = [self.forward(x, c.stage(p)) for p in c.cascade] if exits else []
        x = self.embed(x, c.patch_size)
        size = None  # tokens' merge sizes, from the first merging block on
        npt = self.spec.num_prefix_tokens
        pos = (
            grid_positions(x.shape[0], npt, x.shape[1] - npt, x.device) if self.spec.rope else None
        )
        for i, blk in enumerate(self.vit.blocks):
            if not c.removed(i):
                x, size, pos = self._block(blk, x, c, i, size, pos)
            if exits and i in design:
                held = self.exit_types if every_design else (design[i],)
                keys = [k for t in held if (k := exit_key(i, t)) in self.exit_heads]
                outs += [self.exit_heads[k](x) for k in keys]
        outs.append(self.vit.forward_head(self.vit.norm(x)))
        return outs

    @property
    def exit_blocks(self) -> list[int]:
        return sorted({int(k.split("_")[0]) for k in self.exit_heads})

    def designs(self) -> dict[str, list[int]]:
        """The blocks holding an exit head of each design but ``linear`` (what a checkpoint
        records to rebuild them)."""
        out: dict[str, list[int]] = {}
        for key in self.exit_heads:
            if key_design(key) != "linear":
                out.setdefault(key_design(key), []).append(int(key.split("_")[0]))
        return out

    def hold(self, designs: Iterable[str], blocks: Iterable[int] | None = None) -> None:
        """Hold an exit head of each of ``designs`` (the ``linear`` one always) after each
        of ``blocks`` (default: the exit blocks already held), adding those missing."""
        designs = {"linear", *([designs] if isinstance(designs, str) else designs)}
        for t in sorted(designs):
            check_design(self.spec, t)
        self.exit_types = tuple(t for t in EXIT_TYPES if t in {*designs, *self.exit_types})
        for b in self.exit_blocks if blocks is None else blocks:
            for t in self.exit_types:
                if exit_key(b, t) not in self.exit_heads:
                    self.exit_heads[exit_key(b, t)] = new_exit(self.vit, self.spec, t, b)
        # one order (by block, then design) however the heads were added, so that a
        # resumed run's parameters line up with its optimizer state
        rank = {t: i for i, t in enumerate(EXIT_TYPES)}
        order = sorted(self.exit_heads, key=lambda k: (int(k.split("_")[0]), rank[key_design(k)]))
        self.exit_heads = nn.ModuleDict({k: self.exit_heads[k] for k in order})

    def check_exits(self, c: Candidate) -> None:
        """Refuse a candidate whose exits this model holds no head for."""
        missing = [
            f"{b} ({t})"
            for b, t in zip(c.exits, c.exit_types, strict=True)
            if exit_key(b, t) not in self.exit_heads
        ]
        if missing:
            blocks = self.exit_blocks
            raise VitParetoError(
                f"the candidate exits after block(s) {', '.join(missing)}, but this model has "
                f"{'/'.join(self.exit_types)} exit heads after {blocks} only; choose exits "
                "among them"
            )

    def patch_weight(self, patch_size: int) -> torch.Tensor:
        """The patch embedding's weight at ``patch_size`` (FlexiViT's PI-resize)."""
        w = self.vit.patch_embed.proj.weight
        return w if patch_size == self.spec.patch_size else self._resample(w, [patch_size] * 2)

    def embed(self, x: torch.Tensor, patch_size: int) -> torch.Tensor:
        """Patch and position embedding at any patch size (FlexiViT PI-resize)."""
        vit, s = self.vit, self.spec
        if patch_size == s.patch_size:
            x = vit._pos_embed(vit.patch_embed(x))
        else:
            pe = vit.patch_embed
            x = F.conv2d(x, self.patch_weight(patch_size), pe.proj.bias, stride=patch_size)
            grid = x.shape[-2:]
            x = x.flatten(2).transpose(1, 2) if pe.flatten else nchw_to(x, pe.output_fmt)
            x = pe.norm(x)
            if vit.pos_embed is None or vit.dynamic_img_size:
                x = vit._pos_embed(x)  # timm resamples the position embedding itself
            else:
                pos = resample_abs_pos_embed(
                    vit.pos_embed,
                    new_size=list(grid),
                    old_size=list(pe.grid_size),
                    num_prefix_tokens=0 if vit.no_embed_class else vit.num_prefix_tokens,
                )
                x = torch.func.functional_call(_PosEmbed(vit), {"vit.pos_embed": pos}, (x,))
        return vit.norm_pre(vit.patch_drop(x))

    def _block(self, blk: nn.Module, x: torch.Tensor, c: Candidate, i: int, size, pos):
        s = self.spec
        h, dq, m, r = c.heads[i], c.qk_dim[i], c.mlp[i], c.keep[i]
        mode = c.token_mode[i] if reduces(c, i) else None
        attn_fn = reduce = mlp_fn = None
        if h > 0:
            a = blk.attn

            rope = None
            if s.rope:  # each head's kept pairs, each at its own frequency
                if c.patch_size not in self._rope_tables:
                    self._rope_tables[c.patch_size] = rope_table(self.vit, c.patch_size)
                rope = TokenRope(*self._rope_tables[c.patch_size], a.rope_slots[:h, : dq // 2])

            def attn_fn(t, size, pos):
                out, scores = attention(
                    t,
                    *slice_qkv(a, h, dq),
                    heads=h,
                    qk_dim=dq,
                    head_dim=s.head_dim,
                    scale=a.scale,
                    q_norm=sliced_norm(a.q_norm, dq),
                    k_norm=sliced_norm(a.k_norm, dq),
                    dropout_p=a.attn_drop.p if self.training else 0.0,
                    scorer=self._scorers[mode] if mode else None,
                    size=size,
                    rope=rope,
                    pos=pos,
                )
                return a.proj_drop(out), scores

            reduce = reducer(mode, r, s.num_prefix_tokens) if mode else None
        if m > 0:
            mp = blk.mlp
            fc1_w, fc1_b = first_rows(mp, m)
            mlp_fn = partial(
                mlp_forward,
                mp,
                fc1_w=fc1_w,
                fc1_b=fc1_b,
                fc2_w=mp.fc2.weight[:, :m],
                fc2_b=mp.fc2.bias,
            )
        return residual_block(x, blk, attn_fn, mlp_fn, reduce, size, pos)

    # -- extraction ---------------------------------------------------------------------------
    def extract(self, candidate: Candidate) -> CompressedViT:
        """A standalone ``CompressedViT`` for ``candidate``: pruned parts physically removed."""
        return extract(self, candidate)


class _PosEmbed(nn.Module):
    """Calls timm's own ``_pos_embed`` so a resampled position embedding can be swapped in."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit._pos_embed(x)


def compress(
    model: nn.Module,
    candidate: Candidate,
    importance: str | Criterion | Sequence[BlockScores] = "magnitude",
    data: Iterable | None = None,
    calibration_batches: int = CALIBRATION_BATCHES,
) -> CompressedViT:
    """Return ``candidate`` cut out of ``model`` as a plain, physically smaller module.

    ``model`` is a timm VisionTransformer (left untouched; its heads and channels are
    ranked by ``importance`` on a copy, the data-driven criteria on the first
    ``calibration_batches`` (images, labels) batches of ``data``) or an ``ElasticViT``
    (its ranking and exit heads are used). Exit heads a plain timm model lacks start from its final norm and head.
    """
    if not isinstance(model, ElasticViT):
        describe(model)
        if not isinstance(candidate, Candidate):
            raise VitParetoError(f"compress needs a Candidate, got {type(candidate).__name__}")
        candidate.validate(model)
        model = ElasticViT(
            copy.deepcopy(model),
            importance,
            candidate.exits,
            data,
            calibration_batches,
            set(candidate.exit_types) or {"linear"},
        )
    return extract(model, candidate)
