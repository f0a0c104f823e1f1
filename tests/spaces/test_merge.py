"""Token merging (ToMe) as a per-block token mode: exact token counts, proportional
attention, elastic equals compressed, and the earlier ``fuse`` flag still loading."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.helpers.variants import VARIANTS, images, make_variant
from vitpareto.errors import VitParetoError
from vitpareto.spaces import (
    Candidate,
    ElasticViT,
    JointSpace,
    PrunedBlock,
    TokenMerge,
    compress,
    describe,
    merge_tokens,
    token_counts,
)

ATOL = 1e-5


def _tokens_after_each_block(model, x) -> list[int]:
    seen = []
    for blk in model.modules():
        if isinstance(blk, PrunedBlock):
            blk.register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    with torch.no_grad():
        model(x)
    return seen


@pytest.mark.parametrize("key", ["class_token", "avg_pool", "registers", "distilled"])
@pytest.mark.parametrize("keep", [0.9, 0.5, 0.3, 0.1])
def test_merge_reduces_to_ceil_r_n_plus_prefix(key, keep):
    model = make_variant(key)
    s = describe(model)
    blocks = {0: keep, s.depth - 2: keep}
    c = Candidate.make(model, keep=blocks, token_mode="merge")
    n, npt = s.num_patches, s.num_prefix_tokens
    first = math.ceil(keep * n)
    expected = [npt + first] * (s.depth - 2) + [npt + math.ceil(keep * first)] * 2
    assert _tokens_after_each_block(compress(model, c).eval(), images(model)) == expected
    assert [after for _, after in token_counts(s, c)] == expected


def test_merging_keeps_every_patch_and_the_prefix():
    """Sizes count the patches each token stands for: they always sum to n, prefix tokens
    keep size 1 and their values, and a merged token is the size-weighted mean."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2 + 21, 8, generator=g)  # two prefix tokens, 21 patches
    metric = torch.randn(3, 21, 4, generator=g)
    out, size, _ = merge_tokens(x, metric, keep=0.2, num_prefix_tokens=2)
    assert out.shape == (3, 2 + math.ceil(0.2 * 21), 8)
    assert torch.equal(out[:, :2], x[:, :2]) and torch.equal(size[:, :2], torch.ones(3, 2, 1))
    assert torch.allclose(size[:, 2:].sum(1), torch.full((3, 1), 21.0))
    # the size-weighted sum of the tokens is unchanged by merging
    assert torch.allclose((out[:, 2:] * size[:, 2:]).sum(1), x[:, 2:].sum(1), atol=1e-5)


@pytest.mark.parametrize("key", ["class_token", "avg_pool", "registers"])
def test_merging_duplicate_patches_changes_nothing(key):
    """Proportional attention is exact: where the patches come in identical pairs, merging
    each pair into one token of size 2 leaves every later block's output as it was."""
    model = make_variant(key)
    with torch.no_grad():
        model.pos_embed.zero_()  # identical patches, identical tokens
    s = describe(model)
    x = images(model)
    p = s.patch_size
    for j in range(0, s.img_size[1] // p, 2):  # columns 2j and 2j+1 alike: raster neighbours
        x[..., (j + 1) * p : (j + 2) * p] = x[..., j * p : (j + 1) * p]
    c = Candidate.make(model, keep={0: 0.5}, token_mode="merge")
    compressed = compress(model, c).eval()
    with torch.no_grad():
        assert (
            _tokens_after_each_block(compressed, x)[0] == s.num_prefix_tokens + s.num_patches // 2
        )
        assert (compressed(x) - model(x)).abs().max() <= 1e-4
        # without proportional attention the pairs would weigh half: the outputs would differ
        pruned = compress(model, c.replace(token_mode="prune")).eval()
        assert (pruned(x) - model(x)).abs().max() > 1e-3


@pytest.mark.parametrize("key", list(VARIANTS))
def test_elastic_and_compressed_agree_with_merging(key):
    """Merging, then pruning and fusing, then merging again, with exits between them: the
    sizes travel between the compressed model's blocks and reach the exits right."""
    model = make_variant(key)
    s = describe(model)
    d = s.depth
    modes = (["merge", "fuse", "prune", "merge"] * d)[:d]
    c = Candidate.make(
        model,
        keep=[0.6] * d,
        token_mode=modes,
        qk_dim={0: max(1, s.head_dim // 2)},
        exits=tuple(range(d - 1)),
    )
    elastic = ElasticViT(copy.deepcopy(model)).eval()
    compressed = elastic.extract(c).eval()
    x = images(model)
    with torch.no_grad():
        a, b = elastic.forward_exits(x, c), compressed.forward_exits(x)
        assert len(a) == len(b) == d
        for u, v in zip(a, b, strict=True):
            assert (u - v).abs().max() <= ATOL
        assert (compressed(x) - b[-1]).abs().max() <= ATOL
        assert [m for m in compressed.modules() if isinstance(m, TokenMerge)]


def test_token_mode_is_per_block_and_fuse_still_loads():
    model = make_variant("class_token")
    c = Candidate.make(model, keep={1: 0.5, 2: 0.5}, token_mode={1: "merge"})
    assert c.token_mode == ("prune", "merge", "prune")
    assert not c.fuse  # fuse reads true only when every block that reduces tokens fuses
    assert not Candidate.make(model, keep={1: 0.5}).fuse
    assert not c.replace(token_mode=("prune", "fuse", "prune")).fuse  # block 2 prunes
    # a block that reduces nothing has no mode: one candidate per computation
    assert Candidate.make(model, token_mode="merge") == Candidate.full(model)
    legacy = Candidate.from_dict(_legacy(model))
    assert legacy.token_mode == ("prune", "fuse", "fuse") and legacy.fuse
    assert Candidate.from_dict(legacy.to_dict()) == legacy
    assert "fuse" not in legacy.to_dict()
    with pytest.raises(VitParetoError, match=r"token_mode\[1\]='tome' is not a token mode"):
        Candidate.make(model, keep={1: 0.5}, token_mode={1: "tome"})


def _legacy(model) -> dict:
    """A candidate as studies and exports stored it before token modes: a global fuse."""
    d = Candidate.full(model).to_dict()
    del d["token_mode"]
    return {**d, "keep": [1.0, 0.5, 0.5], "fuse": True}


def test_token_mode_is_searched_in_the_blocks_that_reduce():
    model = make_variant("registers")
    space = JointSpace(
        keep={"blocks": [1, 2], "choices": [0.5, 1.0]}, token_mode=["prune", "merge"]
    )
    space = space.bind(model)
    params = space.params()
    assert params["token_mode.b1"] == ["prune", "merge"] and "token_mode.b0" not in params
    c = space.decode(
        {"keep.b1": 0.5, "keep.b2": 1.0, "token_mode.b1": "merge", "token_mode.b2": "merge"}
    )
    assert c.token_mode == ("prune", "merge", "prune", "prune")
    assert JointSpace.from_dict(space.to_dict(), model) == space
    with pytest.raises(VitParetoError, match="both fuse and token_mode"):
        JointSpace(keep=[0.5], fuse=[True], token_mode=["merge"])
    with pytest.raises(VitParetoError, match="token_mode: choice 'tome' is not allowed"):
        JointSpace(keep=[0.5], token_mode=["tome"])
    with pytest.raises(VitParetoError, match="the space has no keep"):
        JointSpace(heads=[1, 2], token_mode=["merge"])
    legacy = JointSpace(keep={"blocks": [1], "choices": [0.5]}, fuse=[True]).bind(model)
    assert legacy.smallest().token_mode == ("prune", "fuse", "prune", "prune")


def test_a_merging_candidate_trains():
    """The supernet trains merging candidates: gradients reach every block through the
    merged tokens and the proportional attention, finite."""
    model = make_variant("registers")
    elastic = ElasticViT(copy.deepcopy(model)).train()
    c = Candidate.make(model, keep={0: 0.3, 2: 0.5}, token_mode="merge", exits=(1,))
    outs = elastic.forward_exits(images(model, n=4), c)
    sum(o.logsumexp(-1).sum() for o in outs).backward()
    for i, blk in enumerate(elastic.vit.blocks):
        g = blk.attn.qkv.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, i
