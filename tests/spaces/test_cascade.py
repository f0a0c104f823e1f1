"""The input-adaptive patch-size cascade: each coarse stage is the candidate's model at a
coarser patch size (one set of blocks, a precomputed stem per stage), samples stop at the
first stage confident enough, and its cost is counted exactly."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.variants import images, make_variant
from vitpareto.errors import VitParetoError
from vitpareto.evaluators import ExitPath, count_macs, count_params, exit_macs
from vitpareto.spaces import Candidate, ElasticViT, JointSpace, describe

VARIANTS = ["class_token", "avg_pool", "registers", "siglip_map", "one_channel", "distilled"]


def _cascade(model, **extra) -> Candidate:
    """Patch size 8 with a coarse stage at 16 (and 32 where the image allows), heads and
    MLP cut, tokens pruned in block 1, an exit after block 0."""
    s = describe(model)
    stages = tuple(p for p in (32, 16) if s.img_size[0] % p == 0 and p < s.img_size[0])
    return Candidate.make(
        model, patch_size=8, mlp={0: 40}, keep={1: 0.5}, heads={1: 2}, exits=(0,),
        exit_threshold=0.6, cascade=stages, cascade_thresholds=(0.5,) * len(stages), **extra,
    )  # fmt: skip


@pytest.mark.parametrize("key", VARIANTS)
def test_the_compressed_cascade_computes_what_the_elastic_model_does(key):
    model = make_variant(key)
    c = _cascade(model)
    elastic = ElasticViT(model).eval()
    small = elastic.extract(c).eval()
    x = images(model)
    with torch.no_grad():
        got, want = small.forward_exits(x), elastic.forward_exits(x, c)
        assert len(got) == len(c.cascade) + 2
        for a, b in zip(want, got, strict=True):
            assert torch.allclose(a, b, atol=1e-5), key
        for k, p in enumerate(c.cascade):  # a stage is the candidate's static model there
            alone = ElasticViT(model).extract(c.stage(p)).eval()
            assert torch.allclose(small.stage(x, k), alone(x), atol=1e-5)
        # nobody confident enough: the final stage's stem (written for exported graphs)
        # gives what timm's gives
        top = c.replace(cascade_thresholds=(1.0,) * len(c.cascade), exit_threshold=1.0)
        logits, where = elastic.extract(top).eval().forward_dynamic(x)
        assert (where == c.routes).all() and torch.allclose(logits, got[-1], atol=1e-5)
    # one set of blocks: the stages add their stems only
    plain = elastic.extract(c.replace(cascade=())).eval()
    stems = sum(count_params(stem) for stem in small.stages)
    assert count_params(small) == count_params(plain) + stems


@pytest.mark.parametrize("key", VARIANTS)
def test_each_route_costs_what_fvcore_counts_on_its_path(key):
    model = make_variant(key)
    s = describe(model)
    c = _cascade(model)
    small = ElasticViT(model).extract(c).eval()
    macs = exit_macs(model, c)
    assert len(macs) == c.routes + 1
    for r in range(c.routes + 1):  # the last: every stage and exit, then the final head
        assert count_macs(ExitPath(small, r), s.img_size) == macs[r], (key, r)
    stages = macs[len(c.cascade) - 1]
    assert macs[-1] == stages + exit_macs(model, c.replace(cascade=()))[-1]


def test_the_policy_stops_where_the_confidence_says():
    """A two-stage cascade (patch 16, then 8 with an exit)."""
    model = make_variant("class_token")
    base = _cascade(model).replace(cascade=(16,))
    elastic = ElasticViT(model).eval()
    x = images(model, 8)
    with torch.no_grad():
        coarse = elastic.extract(base).eval().stage(x, 0)
        low = elastic.extract(base.replace(cascade_thresholds=(1e-6,))).eval()
        logits, where = low.forward_dynamic(x)
        assert (where == 0).all() and torch.allclose(logits, coarse, atol=1e-6)
        top = base.replace(cascade_thresholds=(1.0,), exit_threshold=1.0)
        logits, where = elastic.extract(top).eval().forward_dynamic(x)
        assert (where == top.routes).all()
        fine = elastic.extract(top.replace(cascade=(), exits=())).eval()
        assert torch.allclose(logits, fine(x), atol=1e-5)
        t = float(coarse.softmax(-1).amax(-1).median())
        mid = base.replace(cascade_thresholds=(t,), exit_threshold=1.0)
        _, where = elastic.extract(mid).eval().forward_dynamic(x)
        by_hand = coarse.softmax(-1).amax(-1) >= t
        assert torch.equal(where == 0, by_hand) and 0 < int(by_hand.sum()) < len(x)


def test_a_cascade_the_model_cannot_run_is_refused():
    model = make_variant("class_token")
    with pytest.raises(VitParetoError, match="coarser than patch_size=16"):
        Candidate.make(model, cascade=(8,), cascade_thresholds=(0.9,))
    with pytest.raises(VitParetoError, match="one threshold per cascade stage"):
        Candidate.make(model, patch_size=8, cascade=(16,))
    with pytest.raises(VitParetoError, match="does not divide the 64x64 image"):
        Candidate.make(model, patch_size=8, cascade=(24,), cascade_thresholds=(0.9,))
    with pytest.raises(VitParetoError, match=r"cascade_thresholds\[0\]=0.0 is out of range"):
        Candidate.make(model, patch_size=8, cascade=(16,), cascade_thresholds=(0.0,))
    with pytest.raises(VitParetoError, match="rotary embeddings"):
        Candidate.make(
            make_variant("eva02"), patch_size=7, cascade=(14,), cascade_thresholds=(0.9,)
        )
    for bad in (16, None, [[16]]):
        with pytest.raises(VitParetoError, match="cascade"):
            Candidate.full(model).replace(cascade=bad)
    with pytest.raises(VitParetoError, match="rotary embeddings: a cascade"):
        JointSpace.from_dict(
            {"cascade": {"patch_sizes": [14], "threshold": [0.9]}}, make_variant("eva02")
        )
    c = Candidate.make(model, patch_size=8, cascade=(32, 16), cascade_thresholds=(0.8, 0.9))
    assert Candidate.from_json(c.to_json()) == c
    assert c.replace(cascade=(16,)).cascade_thresholds == (0.9,)  # a stage keeps its own
    assert "cascade" not in Candidate.full(model).to_dict()  # studies before cascades


def test_the_space_searches_each_coarse_stage_and_its_threshold():
    model = make_variant("class_token")
    decl = {"patch_size": [8, 16], "cascade": {"patch_sizes": [32, 16], "threshold": [0.7, 0.9]}}
    space = JointSpace.from_dict(decl, model)
    assert JointSpace.from_dict(space.to_dict(), model) == space
    p = space.params()
    assert list(p["cascade.p16"]) == [False, True] and list(p["cascade_threshold.p32"]) == [
        0.7,
        0.9,
    ]
    on = {"cascade.p32": True, "cascade.p16": True, "cascade_threshold.p32": 0.7}
    c = space.decode({"patch_size": 8, **on, "cascade_threshold.p16": 0.9})
    assert c.cascade == (32, 16) and c.cascade_thresholds == (0.7, 0.9)
    c = space.decode({"patch_size": 16, **on, "cascade_threshold.p16": 0.9})
    assert c.cascade == (32,)  # only stages coarser than the candidate's own patch size
    assert space.smallest().cascade == ()
    with pytest.raises(VitParetoError, match="cascade_threshold: needs at least one choice"):
        JointSpace.from_dict({"cascade": {"patch_sizes": [16], "threshold": []}}, model)
    with pytest.raises(VitParetoError, match="cascade must look like"):
        JointSpace.from_dict({"cascade": [16]}, model)
    with pytest.raises(VitParetoError, match="cascade: 24 does not divide"):
        JointSpace.from_dict({"cascade": {"patch_sizes": [24], "threshold": [0.9]}}, model)
