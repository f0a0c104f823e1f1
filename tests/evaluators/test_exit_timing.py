"""An exit policy is timed on images whose routes follow the shares measured on the whole
validation set: timing the first few images instead made the latency the share of those
few that happened to leave early (a search's exit candidates then looked faster than
their exported files measured)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from hypothesis import given
from hypothesis import strategies as st

from vitpareto.evaluators import (
    IMAGES_PER_ROUND,
    apportion,
    prepare,
    representative,
    time_deployed,
)
from vitpareto.spaces import Candidate, ElasticViT


@given(
    fractions=st.lists(st.floats(0, 1), min_size=1, max_size=6).filter(lambda f: sum(f) > 0),
    n=st.integers(1, 64),
)
def test_apportion_splits_n_in_proportion(fractions, n):
    counts = apportion(fractions, n)
    assert sum(counts) == n and all(c >= 0 for c in counts)
    total = sum(fractions)
    assert all(abs(c - f / total * n) < 1 for c, f in zip(counts, fractions, strict=True))


@pytest.fixture(scope="module")
def policy():
    """A random test_vit with one exit whose threshold sends about half the pool out."""
    torch.manual_seed(0)
    elastic = ElasticViT(timm.create_model("test_vit", img_size=32, num_classes=10)).eval()
    pool = torch.randn(64, 3, 32, 32)
    model = elastic.extract(Candidate.make(elastic, exits=(1,), exit_threshold=1.0)).eval()
    with torch.no_grad():
        logits = model.exit_heads[0](model.vit.blocks[:1](model._stem(pool)))
    conf = logits.softmax(-1).amax(-1).sort().values
    threshold = float(conf[len(conf) // 2 - 1] + conf[len(conf) // 2]) / 2
    cand = Candidate.make(elastic, exits=(1,), exit_threshold=threshold)
    # the pool reordered so that its first images all leave early: the worst case for
    # timing the first images
    with torch.no_grad():
        where = elastic.extract(cand).eval().forward_dynamic(pool)[1]
    pool = pool[torch.argsort(where, stable=True)]
    return elastic.extract(cand).eval(), pool


def _routes(model, images) -> list[int]:
    with torch.no_grad():
        where = model.forward_dynamic(images)[1]
    return [int((where == r).sum()) for r in range(model.routes + 1)]


def test_the_timed_images_follow_the_measured_shares(policy):
    model, pool = policy
    everyone = _routes(model, pool)
    assert 0 < everyone[0] < len(pool)  # some leave early, some do not
    assert _routes(model, pool[:16]) == [16, 0]  # the first images all leave early
    fractions = [c / len(pool) for c in everyone]
    for n in (8, 16, 17):
        chosen = representative(model, pool, fractions, n)
        assert len(chosen) == n
        assert _routes(model, chosen) == apportion(fractions, n)
    assert torch.equal(representative(model, pool, None, 16), pool[:16])  # no shares known


def test_time_deployed_runs_the_policy_on_the_representative_images(policy):
    model, pool = policy
    fractions = [c / len(pool) for c in _routes(model, pool)]
    seen = []
    spy = copy.deepcopy(model)
    forward = spy.forward_dynamic

    def recorded(x):
        seen.append(x)
        return forward(x)

    spy.forward_dynamic = recorded
    full = prepare(model, pool[:1])  # any reference: only the images are checked here
    settings = dict(repeats=1, warmup=0, max_rel_iqr=10.0, max_attempts=1)
    out = time_deployed(spy, full, pool[:1], "eager", settings, pool, fractions)
    assert out["latency_method"] == "dynamic"
    timed = torch.cat(seen[-IMAGES_PER_ROUND:])  # the last round: one image per call
    assert _routes(model, timed) == apportion(fractions, IMAGES_PER_ROUND)
