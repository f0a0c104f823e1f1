"""``compress``: a standalone ViT in which every pruned part is physically gone."""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn as nn

from vitpareto.spaces._branches import exit_key
from vitpareto.spaces._candidate import Candidate
from vitpareto.spaces._cascade import stage_stems, stem_tokens
from vitpareto.spaces._eva import rope_table
from vitpareto.spaces._mlp import cut_mlp, linear_from
from vitpareto.spaces._ops import attention, residual_block, slice_qkv, sliced_norm_module
from vitpareto.spaces._rope import TokenRope, grid_positions
from vitpareto.spaces._spec import ViTSpec
from vitpareto.spaces._tokens import reducer, reduces, scorer, sized_blocks

FLOATS = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the half precisions' dtypes


def _eager() -> bool:
    """Whether this forward runs as plain Python, not captured into a graph (torch.export,
    torch.compile, TorchScript tracing), where a branch on the data would be baked in."""
    return not (
        torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
    )


class PrunedAttention(nn.Module):
    """Self-attention with ``heads`` heads, ``qk_dim`` q/k channels and ``head_dim`` value
    channels per head; the fused attention kernel does the work."""

    def __init__(
        self,
        attn: nn.Module,
        heads: int,
        qk_dim: int,
        scorer: nn.Module | None,
        rope_table: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        super().__init__()
        self.heads, self.qk_dim, self.head_dim = heads, qk_dim, attn.head_dim
        self.scale = attn.scale
        qkv_w, qkv_b, proj_w, proj_b = (
            t.detach() if t is not None else None for t in slice_qkv(attn, heads, qk_dim)
        )
        self.qkv = linear_from(qkv_w, qkv_b)
        self.q_norm = sliced_norm_module(attn.q_norm, qk_dim)
        self.k_norm = sliced_norm_module(attn.k_norm, qk_dim)
        self.attn_drop_p = attn.attn_drop.p
        self.proj = linear_from(proj_w, proj_b)
        self.proj_drop = copy.deepcopy(attn.proj_drop)
        self.scorer = scorer
        self.rope = None
        if rope_table is not None:  # the kept pairs of the kept heads, at their frequencies
            self.rope = TokenRope(*rope_table, attn.rope_slots[:heads, : qk_dim // 2].cpu())

    def forward(
        self, x: torch.Tensor, size=None, pos=None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, scores = attention(
            x,
            self.qkv.weight,
            self.qkv.bias,
            self.proj.weight,
            self.proj.bias,
            heads=self.heads,
            qk_dim=self.qk_dim,
            head_dim=self.head_dim,
            scale=self.scale,
            q_norm=self.q_norm,
            k_norm=self.k_norm,
            dropout_p=self.attn_drop_p if self.training else 0.0,
            scorer=self.scorer,
            size=size,
            rope=self.rope,
            pos=pos,
        )
        return self.proj_drop(out), scores


class PrunedBlock(nn.Module):
    """A timm pre-norm block cut to a candidate: sliced attention and MLP, optional token
    reduction between them. timm's own norm, LayerScale, drop-path and Mlp modules are reused.

    Once a block has merged tokens, their sizes travel to the next block as one extra
    channel of the tokens (``size_in`` / ``size_out``), so the model stays a chain of
    blocks that each take and return one tensor, as timm's own forward runs them. In a
    model with rotary embeddings each token's position travels the same way, after the
    size (``pos_in`` / ``pos_out``); the first block starts from the grid's.
    """

    def __init__(
        self,
        blk: nn.Module,
        c: Candidate,
        i: int,
        spec: ViTSpec,
        size_in: bool = False,
        size_out: bool = False,
        rope_table: tuple[torch.Tensor, torch.Tensor] | None = None,
        pos_in: bool = False,
        pos_out: bool = False,
    ):
        super().__init__()
        self.rope_on, self.pos_in, self.pos_out = rope_table is not None, pos_in, pos_out
        self.num_prefix_tokens = spec.num_prefix_tokens
        h, dq, m, r = c.heads[i], c.qk_dim[i], c.mlp[i], c.keep[i]
        self.heads, self.qk_dim, self.mlp_dim, self.keep = h, dq, m, r
        self.token_mode = c.token_mode[i] if reduces(c, i) else None
        self.size_in, self.size_out = size_in, size_out
        self.select = None
        if h > 0:
            npt = spec.num_prefix_tokens
            mode = self.token_mode
            score = scorer(mode, npt, spec.has_class_token) if mode else None
            self.norm1, self.ls1, self.drop_path1 = blk.norm1, blk.ls1, blk.drop_path1
            self.attn = PrunedAttention(blk.attn, h, dq, score, rope_table)
            self.select = reducer(mode, r, npt) if mode else None
        if m > 0:
            self.norm2, self.ls2, self.drop_path2 = blk.norm2, blk.ls2, blk.drop_path2
            self.mlp = cut_mlp(blk.mlp, m)

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        size = pos = None
        if self.pos_in:
            x, pos = x[..., :-1], x[..., -1].long()
        elif self.rope_on:
            npt = self.num_prefix_tokens
            pos = grid_positions(x.shape[0], npt, x.shape[1] - npt, x.device)
        if self.size_in:
            x, size = x[..., :-1], x[..., -1:]
        attn = self.attn if self.heads > 0 else None
        mlp = self.mlp if self.mlp_dim > 0 else None
        x, size, pos = residual_block(x, self, attn, mlp, self.select, size, pos)
        if self.size_out:
            x = torch.cat([x, size.to(x.dtype)], dim=-1)
        if self.pos_out:
            x = torch.cat([x, pos.unsqueeze(-1).to(x.dtype)], dim=-1)
        return x

    def extra_repr(self) -> str:
        mode = f", token_mode={self.token_mode}" if self.token_mode else ""
        return (
            f"heads={self.heads}, qk_dim={self.qk_dim}, mlp={self.mlp_dim}, keep={self.keep}{mode}"
        )


class CompressedViT(nn.Module):
    """A compressed timm ViT: ``forward`` is timm's own forward on the cut model and returns
    the final logits; ``forward_exits`` returns each cascade stage's and every early exit's
    logits, then the final; ``forward_dynamic`` runs the policy. ``stages`` holds a
    ``StageStem`` per coarse cascade stage (the blocks are shared)."""

    def __init__(
        self,
        vit: nn.Module,
        exit_heads: nn.ModuleList,
        exit_after: list[int],
        candidate: Candidate,
        stages: nn.ModuleList | None = None,
    ):
        super().__init__()
        self.vit = vit
        self.exit_heads = exit_heads
        self.exit_after = list(exit_after)  # number of kept blocks before each exit
        self.candidate = candidate
        self.stages = stages if stages is not None else nn.ModuleList()

    @property
    def routes(self) -> int:
        """Where a sample can leave before the final head: each stage, then each exit."""
        return len(self.stages) + len(self.exit_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(self.vit(self._in(x)))

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        """The images in the model's own precision (a bf16 or fp16 candidate's weights);
        float32 logits come out (``_out``), so callers never see the difference."""
        dtype = self.vit.patch_embed.proj.weight.dtype
        return x if x.dtype == dtype else x.to(dtype)

    @staticmethod
    def _out(t: torch.Tensor) -> torch.Tensor:
        return t if t.dtype == torch.float32 else t.float()

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))

    def stage(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The final logits of cascade stage ``k`` (its stem, every block, the head)."""
        x = self.vit.blocks(self.stages[k](self._in(x), self.vit))
        return self._out(self.vit.forward_head(self.vit.norm(x)))

    def forward_dynamic(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dynamic inference: each sample leaves at the first cascade stage, then the first
        exit, whose softmax confidence reaches its threshold, and what follows runs only on
        the samples still in. Returns the logits and the route each sample left by (stages
        first, then exits; ``routes`` for the final head).

        Written with gathers and scatters of the rows still in, so that ``torch.export``
        and ONNX export it as it runs; what follows a route sits behind a conditional
        (``torch.cond``, an ONNX ``If``) that skips it once no sample is left, so a batch
        of one that leaves early costs what its route costs in the exported graphs too,
        as the segment timings of the expected latency assume. (The TorchScript tracer
        has no conditional: its graph runs the later blocks on no rows.)"""
        n, x = x.shape[0], self._in(x)
        logits = x.new_zeros(n, self.vit.num_classes, dtype=torch.float32)
        where = torch.full((n,), self.routes, dtype=torch.long, device=x.device)
        return self._route(0, x, torch.arange(n, device=x.device), logits, where)

    def _route(self, r: int, x, alive, logits, where) -> tuple[torch.Tensor, torch.Tensor]:
        """Route ``r`` (stage, exit, or the final head at ``routes``) and every later one,
        on the rows ``alive`` still in (``x``: their images before the fine stem, their
        tokens after it)."""
        c, stages, blocks = self.candidate, len(self.stages), self.vit.blocks
        if r < stages:
            out, threshold = self.stage(x, r), c.cascade_thresholds[r]
        else:
            if r == stages:
                x = stem_tokens(x, self.vit) if stages else self._stem(x)
            e, ends = r - stages, [0, *self.exit_after, len(blocks)]
            for blk in blocks[ends[e] : ends[e + 1]]:
                x = blk(x)
            if e == len(self.exit_heads):
                out = self.vit.forward_head(self.vit.norm(x))
                # a copy of ``where``: a conditional's branch may not return its input
                return logits.index_put((alive,), out.to(logits.dtype)), where.clone()
            out, threshold = self.exit_heads[e](x), c.exit_threshold
        logits, where, stay = _leave(out, threshold, r, logits, where, alive)
        state = (x.index_select(0, stay), alive.index_select(0, stay), logits, where)
        if _eager():
            return self._route(r + 1, *state) if len(stay) else (logits, where)
        if torch.jit.is_tracing():  # the tracer has no conditional
            return self._route(r + 1, *state)
        return torch.cond(
            stay.numel() > 0, functools.partial(self._route, r + 1), _unchanged, state
        )

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        vit, x = self.vit, self._in(x)
        outs = [self.stage(x, k) for k in range(len(self.stages))]
        x = self._stem(x)
        outs += [
            head(x) for head, at in zip(self.exit_heads, self.exit_after, strict=True) if at == 0
        ]
        for j, blk in enumerate(vit.blocks, start=1):
            x = blk(x)
            outs += [
                head(x)
                for head, at in zip(self.exit_heads, self.exit_after, strict=True)
                if at == j
            ]
        outs.append(vit.forward_head(vit.norm(x)))
        return [self._out(o) for o in outs]


def _unchanged(x, alive, logits, where) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditional's other branch: every sample has left, nothing more runs."""
    return logits.clone(), where.clone()


def _leave(out, threshold, route, logits, where, alive):
    """``logits`` and ``where`` with the rows of ``out`` confident enough to leave by
    ``route`` recorded, and the indices (into ``out``) of the rows that stay."""
    out = CompressedViT._out(out)  # confidences as float32 logits give them, any precision
    leave = out.softmax(-1).amax(-1) >= threshold
    gone = leave.nonzero().squeeze(1)
    rows = alive.index_select(0, gone)
    logits = logits.index_put((rows,), out.index_select(0, gone).to(logits.dtype))
    where = where.index_put((rows,), torch.full_like(gone, route))
    return logits, where, (~leave).nonzero().squeeze(1)


@torch.no_grad()
def extract(elastic, candidate: Candidate) -> CompressedViT:
    """Cut ``candidate`` out of an ``ElasticViT`` as a standalone ``CompressedViT``."""
    spec = elastic.spec
    candidate.validate(spec)
    elastic.check_exits(candidate)
    vit = copy.deepcopy(elastic.vit)
    if candidate.patch_size != spec.patch_size:
        vit.set_input_size(patch_size=candidate.patch_size)
    kept = [i for i in range(spec.depth) if not candidate.removed(i)]
    # sizes leave a block when they exist after it and another block follows to read them
    sized = sized_blocks(candidate)
    packed = [sized[i] and j < len(kept) - 1 for j, i in enumerate(kept)]
    table = rope_table(vit, candidate.patch_size) if spec.rope else None
    # positions leave a block once tokens have been reduced (before that they are the grid,
    # which each block rebuilds) and another block follows to read them
    moved = [any(reduces(candidate, k) for k in kept[: j + 1]) for j in range(len(kept))]
    placed = [table is not None and moved[j] and j < len(kept) - 1 for j in range(len(kept))]
    vit.blocks = nn.Sequential(
        *(
            PrunedBlock(
                vit.blocks[i],
                candidate,
                i,
                spec,
                j > 0 and packed[j - 1],
                packed[j],
                table,
                j > 0 and placed[j - 1],
                placed[j],
            )  # fmt: skip
            for j, i in enumerate(kept)
        )
    )
    exit_after = [sum(1 for i in kept if i <= b) for b in candidate.exits]
    heads = nn.ModuleList(
        copy.deepcopy(elastic.exit_heads[exit_key(b, t)])
        for b, t in zip(candidate.exits, candidate.exit_types, strict=True)
    )
    for head, at in zip(heads, exit_after, strict=True):
        head.packed = int(at > 0 and packed[at - 1]) + int(at > 0 and placed[at - 1])
    out = CompressedViT(vit, heads, exit_after, candidate, stage_stems(elastic, candidate.cascade))
    out.train(elastic.training)
    return out.to(FLOATS.get(candidate.precision, torch.float32))


class DeployedViT(nn.Module):
    """What ships for a candidate with early exits: its forward is the exit policy
    (``CompressedViT.forward_dynamic``), returning the logits and each sample's exit."""

    def __init__(self, model: CompressedViT):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_dynamic(x)
