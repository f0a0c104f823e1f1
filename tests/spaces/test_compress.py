"""Contract tests for the elastic model and ``compress``, run against every ViT variant."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from timm.layers import LayerScale, RmsNorm

from tests.helpers.variants import VARIANTS, images, make_variant, random_candidate
from vitpareto.errors import VitParetoError
from vitpareto.spaces import Candidate, ElasticViT, TokenSelect, canonical_eva, compress, describe

ATOL = 1e-5


def expected_params(model, c: Candidate) -> int:
    """Parameter count of a compressed model, from the original model's layer shapes (an
    Eva model's as its adapter maps it: one qkv layer, a k bias of zeros included)."""
    model = canonical_eva(model) if type(model).__name__ == "Eva" else model
    D, C = model.embed_dim, model.num_classes
    attn0 = model.blocks[0].attn
    hd = attn0.head_dim
    qkv_bias = attn0.qkv.bias is not None
    qk_norm = not isinstance(attn0.q_norm, torch.nn.Identity)
    ls = isinstance(model.blocks[0].ls1, LayerScale)
    rms = isinstance(model.blocks[0].norm1, RmsNorm)
    norm = D if rms else 2 * D  # a norm's scale (and a LayerNorm's bias)
    p = c.patch_size
    h_img, w_img = model.patch_embed.img_size
    grid = (h_img // p) * (w_img // p)
    prefix = model.num_prefix_tokens
    n = model.patch_embed.proj.in_channels * p * p * D + D  # patch embedding conv and bias
    if model.pos_embed is not None:  # RoPE ViTs have none
        n += (grid + (0 if model.no_embed_class else prefix)) * D
    n += prefix * D  # class / register / distillation tokens
    for i in range(len(model.blocks)):
        h, dq, m = c.heads[i], c.qk_dim[i], c.mlp[i]
        if h:
            width = h * (2 * dq + hd)
            n += norm + D * width + (width if qkv_bias else 0) + h * hd * D + D
            n += (2 if rms else 4) * dq if qk_norm else 0
            n += D if ls else 0
        if m:  # a gated MLP has two first-layer rows per channel
            rows = 2 * m if describe(model).gated_mlp else m
            bias = model.blocks[0].mlp.fc2.bias is not None
            n += norm + D * rows + (rows if bias else 0) + m * D + (D if bias else 0)
            n += D if ls else 0
    n += norm if not isinstance(model.norm, torch.nn.Identity) else 0
    n += norm if not isinstance(model.fc_norm, torch.nn.Identity) else 0
    pool = 0
    if model.attn_pool is not None:  # latent, q, kv, proj, norm, MLP: kept whole
        m = model.attn_pool.mlp.fc1.out_features
        pool = D + (D * D + D) + (2 * D * D + 2 * D) + (D * D + D) + norm + 2 * D * m + m + D
    n += pool + (D * C + C) * (2 if hasattr(model, "dist_token") else 1)
    n += len(c.exits) * (norm + pool + D * C + C)  # an exit copies the model's pool
    return n


def test_full_candidate_reproduces_the_model(variant):
    _, model = variant
    x = images(model)
    compressed = compress(model, Candidate.full(model)).eval()
    assert (compressed(x) - model(x)).abs().max() <= ATOL
    assert sum(p.numel() for p in compressed.parameters()) == expected_params(
        model, Candidate.full(model)
    )
    if type(model).__name__ != "Eva":  # Eva's k bias is a buffer of zeros, ours a parameter
        assert expected_params(model, Candidate.full(model)) == sum(
            p.numel() for p in model.parameters()
        )
    elastic = ElasticViT(copy.deepcopy(model)).eval()
    assert (elastic(x) - model(x)).abs().max() <= ATOL


def test_compress_leaves_the_model_untouched(variant):
    _, model = variant
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compress(model, Candidate.make(model, heads=1, mlp={0: 3}))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("seed", range(2))
def test_random_candidates_match_formula_and_elastic(variant, seed):
    _, model = variant
    rng = random.Random(seed)
    elastic = ElasticViT(copy.deepcopy(model)).eval()
    x = images(model)
    for _ in range(3):
        c = random_candidate(model, rng)
        compressed = elastic.extract(c).eval()
        assert sum(p.numel() for p in compressed.parameters()) == expected_params(model, c), c
        with torch.no_grad():
            ours, theirs = compressed.forward_exits(x), elastic.forward_exits(x, c)
            final = compressed(x)
        assert len(ours) == len(c.exits) + 1
        for a, b in zip(ours, theirs, strict=True):
            assert (a - b).abs().max() <= ATOL, c
        assert (final - ours[-1]).abs().max() <= ATOL


@pytest.mark.parametrize("key", ["class_token", "registers", "cls_registers_layerscale", "patch32"])
def test_patch_size_matches_timm_resize(key):
    model = make_variant(key)
    s = describe(model)
    x = images(model)
    for p in s.valid_patch_sizes():
        if p in (s.patch_size, s.img_size[0]) or not s.patch_size // 2 <= p <= 2 * s.patch_size:
            continue
        ref = copy.deepcopy(model)
        ref.set_input_size(patch_size=p)
        c = Candidate.make(model, patch_size=p)
        with torch.no_grad():
            expected = ref(x)
            assert (compress(model, c).eval()(x) - expected).abs().max() <= ATOL
            elastic = ElasticViT(copy.deepcopy(model)).eval()
            assert (elastic(x, c) - expected).abs().max() <= ATOL


def _manual_scores(model, block: int, x: torch.Tensor) -> torch.Tensor:
    """Class-token attention row (or mean-query row) of ``block``, from the full attention matrix."""
    captured = {}
    handle = model.blocks[block].register_forward_pre_hook(
        lambda m, a: captured.setdefault("x", a[0])
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    blk, npt = model.blocks[block], model.num_prefix_tokens
    attn = blk.attn
    B, N, _ = captured["x"].shape
    qkv = attn.qkv(blk.norm1(captured["x"])).reshape(B, N, 3, attn.num_heads, attn.head_dim)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    full = torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1)  # B, H, N, N
    if model.cls_token is not None:
        row = full[:, :, 0]
    else:  # documented fallback: the mean query over the non-prefix tokens
        row = torch.softmax(
            (q[:, :, npt:].mean(2, keepdim=True) @ k.transpose(-2, -1)) * attn.scale, -1
        )[:, :, 0]
    return captured["x"], row.mean(1)[:, npt:]


@pytest.mark.parametrize("key", ["class_token", "registers"])
@pytest.mark.parametrize("fuse", [False, True])
def test_tokens_pruned_by_class_attention(key, fuse):
    model = make_variant(key)
    s = describe(model)
    block, keep = 1, 0.4
    x = images(model)
    c = Candidate.make(model, keep={block: keep}, fuse=fuse)
    compressed = compress(model, c).eval()
    seen = {}
    select = [m for m in compressed.modules() if isinstance(m, TokenSelect)]
    assert len(select) == 1
    select[0].register_forward_hook(lambda m, a, out: seen.update(inp=a[0], out=out[0]))
    with torch.no_grad():
        compressed(x)
    _, scores = _manual_scores(model, block, x)
    npt, n = s.num_prefix_tokens, s.num_patches
    k = math.ceil(keep * n)
    assert seen["out"].shape[1] == npt + k + (1 if fuse else 0)
    top = scores.topk(k, dim=1).indices
    tokens = seen["inp"][:, npt:]
    kept = tokens.gather(1, top.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    assert torch.allclose(seen["out"][:, npt : npt + k], kept, atol=ATOL)
    assert torch.allclose(seen["out"][:, :npt], seen["inp"][:, :npt])
    if fuse:
        dropped = torch.ones_like(scores, dtype=torch.bool).scatter(1, top, False)
        fused = [
            (tokens[b][dropped[b]] * scores[b][dropped[b]].unsqueeze(-1)).sum(0)
            for b in range(len(x))
        ]
        assert torch.allclose(seen["out"][:, -1], torch.stack(fused), atol=ATOL)


def test_pruned_parts_are_physically_gone():
    model = make_variant("class_token")
    c = Candidate.make(model, heads={0: 1, 1: 0}, qk_dim=16, mlp={1: 0, 2: 100}, exits=(0,))
    compressed = compress(model, c)
    blocks = compressed.vit.blocks
    assert len(blocks) == 2  # block 1 lost both branches
    hd = model.blocks[0].attn.head_dim
    assert blocks[0].attn.qkv.weight.shape == (1 * (2 * 16 + hd), model.embed_dim)
    assert blocks[0].attn.proj.weight.shape == (model.embed_dim, hd)
    assert blocks[1].mlp.fc1.weight.shape == (100, model.embed_dim)
    assert len(compressed.exit_heads) == 1
    assert not any("mask" in n for n, _ in compressed.named_buffers())
    for name, _ in compressed.named_parameters():
        assert "exit_heads.1" not in name


def test_removed_block_keeps_exit_in_place():
    model = make_variant("class_token")
    c = Candidate.make(model, heads={1: 0}, mlp={1: 0}, exits=(0, 1))
    elastic = ElasticViT(copy.deepcopy(model)).eval()
    x = images(model)
    with torch.no_grad():
        ours, theirs = elastic.extract(c).eval().forward_exits(x), elastic.forward_exits(x, c)
    assert len(ours) == 3
    for a, b in zip(ours, theirs, strict=True):
        assert (a - b).abs().max() <= ATOL


def test_all_variants_are_covered():
    assert {
        "class_token", "avg_pool", "registers", "layerscale", "patch32", "distilled",
        "one_channel", "swiglu", "glu", "rmsnorm", "siglip_map", "eva02", "rope_vit",
        "rope_attention",
    } <= set(VARIANTS)  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("key", ["class_token", "registers", "distilled"])
def test_cuda_matches_cpu(key):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = make_variant(key)
    c = random_candidate(model, random.Random(3)).replace(
        patch_size=model.patch_embed.patch_size[0]
    )
    x = images(model)
    with torch.no_grad():
        cpu = compress(model, c).eval().forward_exits(x)
        gpu_model = copy.deepcopy(model).cuda()
        elastic = ElasticViT(gpu_model).eval()
        ours = elastic.extract(c).eval().forward_exits(x.cuda())
        theirs = elastic.forward_exits(x.cuda(), c)
    for a, b, ref in zip(ours, theirs, cpu, strict=True):
        assert (a - b).abs().max() <= 1e-4
        assert (a.cpu() - ref).abs().max() <= 1e-4


def test_an_exit_the_elastic_model_lacks_is_a_clear_error():
    model = make_variant("class_token")
    elastic = ElasticViT(model, exit_blocks=(0,))
    cand = Candidate.make(model, exits=(1,), exit_threshold=0.9)
    with pytest.raises(VitParetoError, match=r"exit heads after \[0\] only"):
        elastic.forward_exits(images(model), cand)
    with pytest.raises(VitParetoError, match=r"exit heads after \[0\] only"):
        elastic.extract(cand)
