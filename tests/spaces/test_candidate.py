"""Candidate: normalisation, JSON round trip, and one clear error for every bad field."""

from __future__ import annotations

import math

import pytest

from tests.helpers.variants import make_variant
from vitpareto.spaces import Candidate, VitParetoError


@pytest.fixture(scope="module")
def model():
    return make_variant("class_token")  # depth 3, 3 heads of 64, MLP 768, 64 px, patch 16


def test_full_and_json_round_trip(model):
    full = Candidate.full(model)
    assert full.heads == (3, 3, 3) and full.qk_dim == (64,) * 3 and full.mlp == (768,) * 3
    assert full.keep == (1.0,) * 3 and full.exits == () and full.patch_size == 16
    c = Candidate.make(model, keep={1: 0.7}, heads=2, mlp=[768, 0, 384], exits=[0], fuse=True)
    assert Candidate.from_json(c.to_json()) == c
    assert hash(Candidate.from_dict(c.to_dict())) == hash(c)
    assert c.keep == (1.0, 0.7, 1.0) and c.heads == (2, 2, 2) and c.mlp == (768, 0, 384)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(patch_size=5), r"patch_size=5 does not divide the 64x64 image; allowed: 1, 2, 4, 8"),
        (dict(heads={2: 4}), r"heads\[2\]=4 is out of range for block 2; allowed: 0\.\.3"),
        (dict(qk_dim={0: 0}), r"qk_dim\[0\]=0 is out of range for block 0; allowed: 1\.\.64"),
        (dict(mlp={1: 769}), r"mlp\[1\]=769 is out of range for block 1; allowed: 0\.\.768"),
        (dict(keep={1: 0.0}), r"keep\[1\]=0\.0 is out of range; allowed: \(0, 1\]"),
        (dict(keep={2: 1.5}), r"keep\[2\]=1\.5 is out of range"),
        (dict(keep={0: math.nan}), r"keep\[0\]=nan is out of range"),
        (
            dict(heads={1: 0}, keep={1: 0.5}),
            r"keep\[1\]=0\.5 reduces tokens with block 1.s attention, but heads\[1\]=0",
        ),
        (dict(exits=(2,)), r"exits\[0\]=2 is out of range; allowed blocks: 0\.\.1"),
        (dict(exits=(1, 0)), r"exits=\[1, 0\] must be distinct and increasing"),
        (dict(exit_threshold=0.0), r"exit_threshold=0\.0 is out of range; allowed: \(0, 1\]"),
        (dict(heads=[3, 3]), r"one entry per block; got lengths heads=2, qk_dim=3"),
        (dict(heads={5: 1}), r"heads: block 5 is out of range; allowed: 0\.\.2"),
        (dict(heads="a"), r"heads must be a list with one value per block"),
        (dict(keep=[1, "x", 1]), r"keep\[1\] must be a number, got 'x'"),
        (dict(mlp=[1.5, 2, 3]), r"mlp\[0\] must be an integer, got 1\.5"),
        (dict(fuse="yes"), r"fuse must be true or false"),
        (dict(width=3), r"unknown candidate field\(s\): width"),
    ],
)
def test_every_bad_field_is_named(model, change, message):
    with pytest.raises(VitParetoError, match=message):
        Candidate.make(model, **change)


def test_depth_mismatch_and_bad_json(model):
    other = make_variant("registers")  # depth 4
    with pytest.raises(VitParetoError, match="candidate has 3 blocks but the model has 4"):
        Candidate.full(model).validate(other)
    with pytest.raises(VitParetoError, match="not valid JSON"):
        Candidate.from_json("{heads: 1")
    with pytest.raises(VitParetoError, match=r"missing field\(s\): heads, keep"):
        Candidate.from_dict({"patch_size": 16, "qk_dim": [1], "mlp": [1]})
    with pytest.raises(VitParetoError, match="must be a JSON object"):
        Candidate.from_json("[1, 2]")
