"""Exit designs and cascades as searched knobs: the supernet trains a head of every design
the space searches at every exit block (and its cascade stages), its checkpoint holds them,
a search decides the design per exit and the cascade (timed by the latency table), stores
each trial's shares and expected MACs, and the front exports and loads."""

from __future__ import annotations

import optuna
import pytest
import torch

from tests.helpers.backbone import exported_front, trained_and_searched
from vitpareto.evaluators import exit_macs
from vitpareto.search import SupernetTrainer, TrainConfig, load_supernet
from vitpareto.search.outputs import load_trials
from vitpareto.spaces import EXIT_TYPES, Candidate, JointSpace, exit_key

pytestmark = pytest.mark.slow  # training, a search, exports

SPACE = {
    "mlp": {"choices": [0.5, 1.0], "groups": "all"},
    "keep": {"blocks": [1], "choices": [0.5, 1.0]},
    "exits": {"blocks": [0, 2], "threshold": [0.5, 0.8], "types": list(EXIT_TYPES)},
    "cascade": {"patch_sizes": [16], "threshold": [0.5, 0.8]},
}
KWARGS = dict(img_size=32, patch_size=8)


def test_one_training_step_reaches_every_design_at_every_exit():
    trainer = SupernetTrainer.create(
        "test_vit", "digits", TrainConfig(epochs=1, batch_size=32),
        space=JointSpace.from_dict(SPACE), model_kwargs=KWARGS,
    )  # fmt: skip
    heads = trainer.elastic.exit_heads
    assert {exit_key(b, t) for b in (0, 2) for t in EXIT_TYPES} <= set(heads)
    assert trainer.elastic.designs() == {t: [0, 2] for t in EXIT_TYPES[1:]}
    before = {k: [p.detach().clone() for p in h.parameters()] for k, h in heads.items()}
    x, y = next(iter(trainer.data.train))
    trainer.train_step(x, y)
    for key, head in heads.items():
        moved = [not torch.equal(a, b) for a, b in zip(before[key], head.parameters(), strict=True)]
        assert all(moved), key  # every parameter of every design's head was trained


def test_a_search_decides_the_design_of_each_exit_and_its_front_exports(tmp_path):
    url = trained_and_searched(tmp_path, KWARGS, trials=12, space=JointSpace.from_dict(SPACE))
    net = load_supernet(tmp_path / "net.pt")  # the checkpoint holds every design
    assert net.elastic.exit_types == EXIT_TYPES
    study = optuna.load_study(study_name="s", storage=url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 12
    seen = set()
    for t in done:
        c = Candidate.from_dict(t.user_attrs["candidate"])
        seen |= set(c.exit_types)
        if c.exits:  # the expected MACs are those of the designs the candidate holds
            shares, macs = t.user_attrs["exit_fraction"], exit_macs(net.elastic.spec, c)
            expected = sum(f * m for f, m in zip(shares, macs, strict=True))
            assert t.user_attrs["expected_macs"] == pytest.approx(expected)
    assert len(seen) > 1  # the search tried more than one design
    rows = load_trials(url, "s")
    staged = rows[rows["candidate"].str.contains('"cascade": \\[16\\]')]
    assert len(staged) and staged["share_stage_p16"].notna().all()  # the shares, as columns
    shares = staged.filter(like="share_").sum(axis=1)
    assert ((shares - 1).abs() < 1e-9).all()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    exported_front(url, tmp_path / "front", x)
