"""JointSpace: one declaration gives the same candidates through Optuna and through Ray Tune."""

import itertools
import json

import optuna
import pytest
import timm

from vitpareto.errors import VitParetoError
from vitpareto.search.explore import tune_space
from vitpareto.spaces import Candidate, JointSpace, Knob

optuna.logging.set_verbosity(optuna.logging.WARNING)

# test_vit at 32px: depth 6, 2 heads of width 32, MLP 192, patch 16 (sides dividing 32 allowed).
SMALL = {
    "patch_size": [16, 32],
    "heads": {"choices": [0, 2], "groups": [[0, 1], [2, 3]]},
    "qk_dim": {"choices": [0.5, 1.0], "groups": "all"},
    "mlp": {"choices": [0.0], "blocks": [5]},
    "keep": {"blocks": [1, 3], "choices": [0.5, 1.0]},
    "exits": {"blocks": [2], "threshold": [0.8, 0.9]},
    "fuse": [True],  # fixed: a searched bool is exit.b2; 256 grid trials keep the test fast
}


@pytest.fixture(scope="module")
def vit():
    return timm.create_model("test_vit", img_size=32, num_classes=10)


@pytest.fixture(scope="module")
def deit():
    return timm.create_model("deit_tiny_patch16_224")


@pytest.fixture(scope="module")
def small(vit):
    return JointSpace.from_dict(SMALL, vit)


def combos(params):
    names = list(params)
    for values in itertools.product(*params.values()):
        yield dict(zip(names, values, strict=True))


def test_parameter_names(small):
    assert small.params() == {
        "patch_size": [16, 32],
        "heads.g0": [0, 2],
        "heads.g1": [0, 2],
        "qk_dim": [0.5, 1.0],
        "keep.b1": [0.5, 1.0],
        "keep.b3": [0.5, 1.0],
        "exit.b2": [False, True],
        "exit_threshold": [0.8, 0.9],
    }
    assert small.size() == 2**8


def test_optuna_and_tune_reach_the_same_candidates(small, vit):
    by_optuna = {small.suggest(optuna.trial.FixedTrial(p)) for p in combos(small.params())}
    domains = tune_space(small)
    assert list(domains) == list(small.params())
    categories = {name: d.categories for name, d in domains.items()}
    by_tune = {small.decode(c) for c in combos(categories)}
    assert by_optuna == by_tune
    # Duplicates collapse: heads 0 forces keep 1.0 (3 heads/keep cases per group, not 4);
    # no exit forces threshold 1.0 (3 exit cases, not 4).
    assert len(by_optuna) == 2 * 3 * 3 * 2 * 3  # patch, g0/keep.b1, g1/keep.b3, qk, exit
    for _ in range(200):
        assert small.decode({n: d.sample() for n, d in domains.items()}) in by_optuna
    for c in by_optuna:
        c.validate(vit)
        assert c.mlp == (192,) * 5 + (0,)
        assert c.heads[4:] == (2, 2)
        assert all(k == 1.0 for h, k in zip(c.heads, c.keep, strict=True) if h == 0)
        assert c.exit_threshold in ((0.8, 0.9) if c.exits else (1.0,))
        # heads 0 leaves no q/k channels to count; with no token pruned there is nothing to fuse
        assert len({q for h, q in zip(c.heads, c.qk_dim, strict=True) if h}) == 1
        assert all(q == 32 for h, q in zip(c.heads, c.qk_dim, strict=True) if h == 0)
        assert c.fuse == any(k < 1 for k in c.keep)

    study = optuna.create_study(sampler=optuna.samplers.GridSampler(small.params()))
    seen = set()
    study.optimize(lambda t: seen.add(small.suggest(t)) or 0.0, n_trials=small.size())
    assert seen == by_optuna


def test_decode_values(small):
    params = {n: c[-1] for n, c in small.params().items()}
    params.update({"heads.g0": 0, "qk_dim": 0.5, "exit.b2": False, "lr": 0.1})  # extra key
    assert small.decode({**params, "exit.b2": True}).exits == (2,)
    c = small.decode(params)
    assert c == Candidate(
        patch_size=32,
        heads=(0, 0, 2, 2, 2, 2),
        qk_dim=(32, 32, 16, 16, 16, 16),  # no heads: the q/k width is moot, stored as full
        mlp=(192,) * 5 + (0,),
        keep=(1.0,) * 6,
        exits=(),
        exit_threshold=1.0,
        fuse=False,  # nothing pruned: nothing to fuse
    )
    with pytest.raises(VitParetoError, match="missing parameter 'keep.b3'"):
        small.decode({k: v for k, v in params.items() if k != "keep.b3"})
    with pytest.raises(VitParetoError, match=r"config\['qk_dim'\]=0.75 is not one of"):
        small.decode({**params, "qk_dim": 0.75})


def test_per_block_default_and_fractions(vit):
    space = JointSpace(qk_dim=[0.01, 1.0], mlp=[0.0, 0.5]).bind(vit)
    assert list(space.params())[:2] == ["qk_dim.b0", "qk_dim.b1"]
    assert space.size() == 2**12
    c = space.decode({n: ch[0] for n, ch in space.params().items()})
    assert c.qk_dim == (1,) * 6 and c.mlp == (0,) * 6  # qk_dim clamped to >= 1 channel


def test_fixed_and_empty_spaces(vit):
    full = JointSpace().bind(vit)
    assert full.params() == {} and full.size() == 1
    assert full.decode({}) == Candidate.full(vit)
    assert full.suggest(optuna.trial.FixedTrial({})) == Candidate.full(vit)
    assert JointSpace(fuse=[False, True]).bind(vit).params() == {"fuse": [False, True]}
    fixed = JointSpace(heads=1, keep=0.5, fuse=[True]).bind(vit)
    assert fixed.params() == {}
    expected = Candidate.full(vit).replace(heads=(1,) * 6, keep=(0.5,) * 6, fuse=True)
    assert fixed.decode({}) == expected


@pytest.mark.parametrize("name", ["vit", "deit"])
def test_default_space_candidates_validate(name, request):
    model = request.getfixturevalue(name)
    space = JointSpace.default(model)
    domains = tune_space(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(150):
        space.decode({n: d.sample() for n, d in domains.items()}).validate(model)
        space.suggest(study.ask()).validate(model)


def test_default_space_shape(vit, deit):
    d = JointSpace.default(deit)
    assert d.patch_size == (16, 28, 32)
    assert d.heads.choices == (2, 3)
    assert d.keep.blocks == (3, 6, 9)
    assert d.exits == (5, 8) and d.exit_threshold == (0.8, 0.9, 0.95)
    assert d.fuse == (False,) and "fuse" not in d.params()
    v = JointSpace.default(vit)
    assert v.patch_size == (16, 32) and v.heads.choices == (1, 2)
    assert v.keep.blocks == (2, 3, 4) and v.exits == (2, 3)


@pytest.mark.parametrize("ext", ["yaml", "yml", "json"])
def test_round_trip(tmp_path, vit, small, ext):
    path = tmp_path / f"space.{ext}"
    small.save(path)
    loaded = JointSpace.load(path, vit)
    assert loaded == small and loaded.to_dict() == small.to_dict()
    assert loaded.params() == small.params()
    assert JointSpace.from_dict(small.to_dict()) == small
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    default = JointSpace.default(vit)
    default.save(path)
    assert JointSpace.load(path) == default


def test_yaml_short_form(tmp_path, vit):
    path = tmp_path / "s.yaml"
    path.write_text(
        "heads: {choices: [1, 2], groups: all}\n"
        "keep: {blocks: [3, 1], choices: [0.5, 1]}\n"
        "exits: {blocks: [3], threshold: [0.9]}\n"
    )
    space = JointSpace.load(path, vit)
    assert space.keep == Knob(choices=(0.5, 1.0), blocks=(1, 3))
    assert list(space.params()) == ["heads", "keep.b1", "keep.b3", "exit.b3"]
    assert json.loads(json.dumps(space.to_dict()))["exits"] == {"blocks": [3], "threshold": [0.9]}


BAD = [
    ({"head": [1]}, "unknown knob.*head"),
    ({"keep": {"blocks": [3], "choices": [0.0, 1.0]}}, r"keep: choice 0.0 .*\(0, 1\]"),
    ({"keep": {"blocks": [3], "choices": [1.5]}}, r"keep: choice 1.5 .*\(0, 1\]"),
    ({"qk_dim": [0.5, 2]}, r"qk_dim: choice 2 .*fractions of head_dim"),
    ({"mlp": [-0.5]}, r"mlp: choice -0.5"),
    ({"heads": [-1]}, r"heads: choice -1"),
    ({"heads": {"choices": [1], "shared": True}}, "heads: unknown key.*shared"),
    ({"heads": {"choices": [1], "groups": "blocks"}}, "heads: groups='blocks'"),
    ({"heads": {"choices": [1], "groups": [[0, 1], [1]]}}, "heads: a block is in more than one"),
    ({"heads": {"choices": [1, 1]}}, "heads: choice 1 is listed twice"),
    ({"heads": {"choices": []}}, "heads: needs at least one choice"),
    ({"heads": {"groups": "all"}}, "heads: choices are missing"),
    ({"keep": {"blocks": [-1], "choices": [0.5]}}, "keep: block -1"),
    ({"exits": [5]}, "exits must look like"),
    ({"exits": {"blocks": [5]}}, "exits need threshold"),
    ({"exits": {"blocks": [5], "threshold": [0]}}, r"exit_threshold: choice 0 .*\(0, 1\]"),
    ({"fuse": [1]}, "fuse: choice 1 .*true or false"),
    ({"patch_size": "16"}, "patch_size: expected a list"),
    ([1, 2], "a space must be a mapping"),
]


@pytest.mark.parametrize(("data", "match"), BAD)
def test_bad_declarations(data, match):
    with pytest.raises(VitParetoError, match=match):
        JointSpace.from_dict(data)


BAD_FOR_MODEL = [
    ({"patch_size": [16, 15]}, "patch_size: 15 does not divide the 32x32 image; allowed: 1, 2"),
    ({"heads": [1, 3]}, "heads: choice 3 is above the model's 2 heads; allowed: 0..2"),
    ({"mlp": {"choices": [0.5], "blocks": [6]}}, r"mlp: block 6 is out of range; allowed: 0..5"),
    ({"keep": {"choices": [0.5], "groups": [[2, 9]]}}, "keep: block 9 is out of range"),
    ({"exits": {"blocks": [5], "threshold": [0.9]}}, r"exits: block 5 .* allowed: 0..4"),
]


@pytest.mark.parametrize(("data", "match"), BAD_FOR_MODEL)
def test_bad_for_the_model(vit, data, match):
    space = JointSpace.from_dict(data)
    with pytest.raises(VitParetoError, match=match):
        space.validate(vit)
    with pytest.raises(VitParetoError, match=match):
        JointSpace.from_dict(data, vit)


def test_unbound_space_says_how_to_bind():
    with pytest.raises(VitParetoError, match=r"space.bind\(model\)"):
        JointSpace(heads=[1, 2]).params()


def test_bad_files(tmp_path):
    with pytest.raises(VitParetoError, match="does not exist"):
        JointSpace.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("heads: {choices: [1, 2\n")
    with pytest.raises(VitParetoError, match="bad.yaml is not valid YAML"):
        JointSpace.load(bad)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(VitParetoError, match="bad.json is not valid JSON"):
        JointSpace.load(tmp_path / "bad.json")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(VitParetoError, match="must hold a mapping"):
        JointSpace.load(tmp_path / "list.yaml")
    with pytest.raises(VitParetoError, match=r"must end in .yaml, .yml or .json"):
        JointSpace().save(tmp_path / "space.txt")


def test_sample_and_smallest(vit, small):
    """Samples are valid candidates that reach every choice; the smallest costs the least."""
    import random

    from vitpareto.evaluators import analytic_macs
    from vitpareto.spaces import describe

    spec = describe(vit)
    default = JointSpace.default(vit)
    rng = random.Random(0)
    samples = [default.sample(rng) for _ in range(200)]
    for c in samples:
        c.validate(spec)
    assert {c.patch_size for c in samples} == set(default.patch_size)
    assert {h for c in samples for h in c.heads} == set(default.heads.choices)
    smallest = default.smallest()
    assert smallest.patch_size == max(default.patch_size)
    assert set(smallest.exits) == set(default.exits)  # every exit head gets trained
    # the least expected compute: the most samples leave at the first exit
    assert smallest.exit_threshold == min(default.exit_threshold)
    cheapest = analytic_macs(spec, smallest.replace(exits=()))
    assert all(cheapest <= analytic_macs(spec, c.replace(exits=())) for c in samples)
    assert default.sample(random.Random(3)) == default.sample(random.Random(3))
    assert small.smallest().heads == (0, 0, 0, 0, 2, 2)  # blocks 4, 5 are not searched in SMALL
