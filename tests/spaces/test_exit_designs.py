"""Early-exit branch designs (linear, mlp, attention, conv): the compressed model computes
what the elastic one does, each design's cost is counted exactly, the candidate says which
exit runs which design, and what a design cannot do is refused with its reason."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.variants import images, make_variant
from vitpareto.errors import VitParetoError
from vitpareto.evaluators import ExitPath, count_macs, count_params, exit_head_macs, exit_macs
from vitpareto.spaces import EXIT_TYPES, Candidate, ElasticViT, JointSpace, describe, exit_key

VARIANTS = ["class_token", "avg_pool", "siglip_map", "rmsnorm", "registers"]


def _candidate(model, design: str) -> Candidate:
    """Block 0 cut, an exit of ``design`` after block 0 and one after block 1; tokens
    reduced at block 1, after a conv exit's grid and before a linear exit."""
    depth = describe(model).depth
    return Candidate.make(
        model, mlp={0: 40}, heads={1: 2}, keep={1: 0.5}, exits=(0, 1),
        exit_types=(design, "linear"), exit_threshold=0.5,
    ) if depth > 2 else Candidate.make(
        model, mlp={0: 40}, exits=(0,), exit_types=(design,), exit_threshold=0.5
    )  # fmt: skip


@pytest.mark.parametrize("design", EXIT_TYPES)
@pytest.mark.parametrize("key", VARIANTS)
def test_every_design_compresses_to_what_the_elastic_model_computes(key, design):
    model = make_variant(key)
    c = _candidate(model, design)
    elastic = ElasticViT(model, exit_types=EXIT_TYPES).eval()
    small = elastic.extract(c).eval()
    x = images(model)
    with torch.no_grad():
        for a, b in zip(elastic.forward_exits(x, c), small.forward_exits(x), strict=True):
            assert torch.allclose(a, b, atol=1e-5), (key, design)
    assert type(small.exit_heads[0]) is type(elastic.exit_heads[exit_key(0, design)])


@pytest.mark.parametrize("design", EXIT_TYPES)
@pytest.mark.parametrize("key", [*VARIANTS, "distilled", "qk_norm", "swiglu", "one_channel"])
def test_each_designs_cost_is_counted_exactly(key, design):
    """fvcore on the path a sample takes to the exit equals the formula."""
    model = make_variant(key)
    s = describe(model)
    c = _candidate(model, design)
    small = ElasticViT(model, exit_types=(design,)).extract(c).eval()
    assert count_macs(ExitPath(small, 0), s.img_size) == exit_macs(model, c)[0], (key, design)


def test_designs_cost_what_they_hold():
    model = make_variant("class_token")
    s = describe(model)
    costs = {t: exit_head_macs(s, 17, t, 0) for t in EXIT_TYPES}
    assert costs["linear"] < costs["mlp"] < costs["conv"] < costs["attention"]
    heads = ElasticViT(model, exit_blocks=(0,), exit_types=EXIT_TYPES).exit_heads
    params = {t: count_params(heads[exit_key(0, t)]) for t in EXIT_TYPES}
    assert params["linear"] < params["mlp"] < params["attention"]
    with pytest.raises(VitParetoError, match="pass tokens"):
        exit_head_macs(s, design="conv")


def test_heads_keep_one_order_however_they_were_added():
    """Training adds designs per block, loading per design: the same parameter order, so a
    resumed run's optimizer state lines up."""
    model = make_variant("class_token")
    trained = ElasticViT(model, "identity", exit_blocks=(0, 1))
    trained.hold(["mlp", "conv"], [0, 1])
    loaded = ElasticViT(model, "identity", exit_blocks=trained.exit_blocks)
    for design, blocks in reversed(trained.designs().items()):
        loaded.hold(design, blocks)  # one design, as a string
    assert list(loaded.exit_heads) == list(trained.exit_heads) == [
        "0", "0_mlp", "0_conv", "1", "1_mlp", "1_conv"
    ]  # fmt: skip
    with pytest.raises(VitParetoError, match="attention exit copies the block after it"):
        ElasticViT(model, exit_blocks=(2,), exit_types=("attention",))


def test_the_candidate_carries_a_design_per_exit():
    model = make_variant("class_token")
    c = Candidate.make(model, exits=(0, 1), exit_types=("conv", "mlp"), exit_threshold=0.8)
    assert Candidate.from_json(c.to_json()) == c
    assert c.replace(exits=(1,)).exit_types == ("mlp",)  # each kept exit keeps its design
    plain = Candidate.make(model, exits=(0,), exit_threshold=0.8)
    assert plain.exit_types == ("linear",) and "exit_types" not in plain.to_dict()
    assert Candidate.make(model, exits=(0, 1), exit_types="mlp").exit_types == ("mlp", "mlp")
    with pytest.raises(VitParetoError, match="one design per exit"):
        Candidate.make(model, exits=(0, 1), exit_types=("mlp",))
    with pytest.raises(VitParetoError, match=r"exit_types\[0\]='tree' is not an exit design"):
        Candidate.make(model, exits=(0,), exit_types=("tree",))


def test_what_a_design_cannot_do_is_refused_with_its_reason():
    model = make_variant("class_token")
    with pytest.raises(VitParetoError, match="reads the full token grid, but block 0 reduces"):
        Candidate.make(model, keep={0: 0.5}, exits=(1,), exit_types=("conv",))
    rope = make_variant("eva02")
    with pytest.raises(VitParetoError, match="rotary embeddings"):
        Candidate.make(rope, exits=(0,), exit_types=("attention",))
    with pytest.raises(VitParetoError, match="rotary embeddings"):
        ElasticViT(rope, exit_types=EXIT_TYPES)
    for design in ("mlp", "conv"):  # the other designs work on a rotary model
        c = Candidate.make(rope, exits=(0,), exit_types=(design,), exit_threshold=0.5)
        elastic = ElasticViT(rope, exit_types=(design,)).eval()
        x = images(rope)
        with torch.no_grad():
            got = elastic.extract(c).eval().forward_exits(x)
            for a, b in zip(elastic.forward_exits(x, c), got, strict=True):
                assert torch.allclose(a, b, atol=1e-5), design


def test_the_space_searches_a_design_per_exit():
    model = make_variant("class_token")
    space = JointSpace.from_dict(
        {
            "keep": {"blocks": [0], "choices": [0.5, 1.0]},
            "exits": {"blocks": [0, 1], "threshold": [0.9], "types": ["linear", "conv", "mlp"]},
        },
        model,
    )
    params = space.params()
    assert list(params["exit_type.b0"]) == ["linear", "conv", "mlp"]
    assert JointSpace.from_dict(space.to_dict(), model) == space
    on = {"keep.b0": 1.0, "exit.b0": True, "exit.b1": True, "exit_threshold": 0.9}
    c = space.decode({**on, "exit_type.b0": "conv", "exit_type.b1": "mlp"})
    assert c.exits == (0, 1) and c.exit_types == ("conv", "mlp")
    # a conv exit after a block that reduces tokens reads linear (the grid is gone)
    c = space.decode({**on, "keep.b0": 0.5, "exit_type.b0": "conv", "exit_type.b1": "conv"})
    assert c.exit_types == ("linear", "linear")
    assert space.smallest().exit_types == ("linear", "linear")
    with pytest.raises(VitParetoError, match="choice 'tree' is not allowed; choices are exit"):
        JointSpace.from_dict({"exits": {"blocks": [0], "threshold": [0.9], "types": ["tree"]}})
