"""count_macs equals independent counts to the integer; the analytic formula equals count_macs."""

from __future__ import annotations

import math
import random

import pytest
import timm
import torch

from tests.helpers.variants import make_variant, random_candidate
from vitpareto.evaluators import analytic_macs, count_macs, count_params, mac_profile
from vitpareto.spaces import Candidate, compress, describe, merge_macs


@pytest.fixture(scope="module")
def deit_small():
    return timm.create_model("deit_small_patch16_224").eval()


def test_published_deit_macs(deit_small):
    # independent counts (REFERENCES.md); published 1.3 G and 4.6 G
    assert count_macs(timm.create_model("deit_tiny_patch16_224"), 224) == 1_258_411_200
    assert count_macs(deit_small, 224) == 4_608_338_304
    assert count_params(deit_small) == 22_050_664


def test_evit_keep_07_at_blocks_3_6_9(deit_small):
    evit = {3: 0.7, 6: 0.7, 9: 0.7}
    fused = compress(deit_small, Candidate.make(deit_small, keep=evit, fuse=True))
    dropped = compress(deit_small, Candidate.make(deit_small, keep=evit, fuse=False))
    assert count_macs(fused, 224) == 3_035_522_688  # EViT publishes 3.0 G
    assert count_macs(dropped, 224) == 3_003_167_616
    # the class-attention row, ranking and fusing are real work, counted only when asked
    assert count_macs(fused, 224, include_selection=True) > count_macs(fused, 224)


def test_plain_fvcore_misses_the_attention_matmuls(deit_small):
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(deit_small, torch.zeros(1, 3, 224, 224))
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert fca.total() == 4_250_674_560  # 7.8% short of 4,608,338,304


@pytest.mark.parametrize(
    "key",
    [
        "class_token",
        "avg_pool",
        "registers",
        "layerscale",
        "distilled",
        "qk_norm",
        "one_channel",
        "swiglu",
        "glu",
        "rmsnorm",
        "siglip_map",
        "map_class_token",
        "eva02",
        "rope_vit",
        "rope_attention",
    ],  # fmt: skip
)
def test_analytic_formula_equals_fvcore(key):
    model = make_variant(key)
    rng = random.Random(7)
    size = model.patch_embed.img_size
    assert analytic_macs(model) == count_macs(model, size)
    for _ in range(3):
        c = random_candidate(model, rng)
        assert analytic_macs(model, c) == count_macs(compress(model, c), size), c


def test_mac_profile_is_cumulative():
    model = make_variant("class_token")
    c = Candidate.make(model, keep={1: 0.5}, mlp={2: 0})
    profile = mac_profile(model, c)
    assert len(profile) == 4 and profile == sorted(profile)
    assert profile[-1] == analytic_macs(model, c)


# 16 patches: 0.7 keeps 12 (one round, 8 tokens against 8); 0.3 keeps 5 (8 against 8 takes
# 16 to 8, then 4 against 4 merges 3 more)
@pytest.mark.parametrize("keep,pairs", [(0.7, 8 * 8), (0.3, 8 * 8 + 4 * 4)])
def test_merging_counts_its_matching(keep, pairs):
    model = make_variant("registers")
    s = describe(model)
    assert s.num_patches == 16
    size = model.patch_embed.img_size
    prune = Candidate.make(model, keep={1: keep})
    merge = prune.replace(token_mode=("prune", "merge", "prune", "prune"))
    assert count_macs(compress(model, merge), size) == analytic_macs(model, merge)
    # the same tokens leave block 1 in both modes; merging adds only the cosine matching
    assert analytic_macs(model, merge) - analytic_macs(model, prune) == pairs * s.head_dim
    assert merge_macs(16, math.ceil(keep * 16), s.head_dim) == pairs * s.head_dim
