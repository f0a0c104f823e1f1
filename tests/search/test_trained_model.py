"""`search --model`: a model the user trained normally, searched without a supernet (ranked
by importance, no early exits) and its front repaired by fine-tuning from the original."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.helpers.cli import vitpareto
from vitpareto.search import load_supernet

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("supernet")]  # training, searches


@pytest.fixture(scope="module")
def weights(tmp_path_factory, plain_net):
    """test_vit trained normally on digits, saved as a plain state dict."""
    path = tmp_path_factory.mktemp("trained") / "mine.pth"
    torch.save(load_supernet(plain_net).elastic.vit.state_dict(), path)
    return path


def _args(weights, db):
    return [
        "search",
        *("--model", "test_vit", "--img-size", "32", "--patch-size", "8"),
        *("--dataset", "digits", "--checkpoint", str(weights), "--num-classes", "10"),
        *("--importance", "taylor", "--calibration-batches", "2"),
        *("--study", "mine", "--trials", "12", "--storage", f"sqlite:///{db}"),
        *("--finetune-front", "20", "--front-rounds", "5", "--no-progress"),
    ]


def test_a_trained_model_is_searched_without_a_supernet(weights, tmp_path):
    db = tmp_path / "r.db"
    out = vitpareto(*_args(weights, db))
    assert out.returncode == 0, out.stderr
    assert "ranked test_vit by taylor" in out.stderr
    study = optuna.load_study(study_name="mine", storage=f"sqlite:///{db}")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 12
    assert all(t.user_attrs["candidate"]["exits"] == [] for t in done)
    # merging tokens needs no training (ToMe): searched beside pruning
    assert {v for t in done for k, v in t.params.items() if k.startswith("token_mode")} == {
        "prune",
        "merge",
    }
    assert study.user_attrs["importance"] == {"criterion": "taylor", "calibration_batches": 2}
    front = optuna.load_study(study_name="mine/front", storage=f"sqlite:///{db}")
    assert front.trials and all(t.user_attrs["fidelity"] == "finetuned" for t in front.trials)
    assert all(t.user_attrs["finetune"]["steps"] == 20 for t in front.trials)
    # run again: the ranked model is reused (same weights, so the study resumes)
    again = vitpareto(*_args(weights, db))
    assert again.returncode == 0, again.stderr
    assert "ranked" not in again.stderr
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 12


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "test_vit", "--dataset", "digits"], "needs trained weights"),
        (["--model", "test_vit", "--pretrained"], "--model needs --dataset"),
        (["--supernet", "x.pt", "--model", "test_vit"], "--supernet brings its own model"),
        (["--supernet", "x.pt", "--importance", "taylor"], "drop --importance"),
        ([], "search needs --supernet CKPT"),
    ],
)
def test_trained_model_mistakes_exit_2(tmp_path, extra, message):
    out = vitpareto("search", "--study", "s", "--storage", f"sqlite:///{tmp_path / 'r.db'}", *extra)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize("spelling", ["model", "checkpoint"])
def test_a_checkpoint_vitpareto_wrote_is_searched(plain_net, tmp_path, spelling):
    """A checkpoint `train --plain` wrote, as --model itself (it names its model, options
    and dataset) or as --checkpoint beside the model's name and options: its own trained
    weights are searched (the full model's accuracy far above chance, and equal both ways)."""
    db = tmp_path / "r.db"
    given = (
        ["--model", plain_net]
        if spelling == "model"
        else ["--model", "test_vit", "--img-size", "32", "--patch-size", "8",
              "--num-classes", "10", "--dataset", "digits", "--checkpoint", plain_net]
    )  # fmt: skip
    out = vitpareto("search", *given, "--study", "p", "--trials", "2", "--storage",
                    f"sqlite:///{db}", "--front-rounds", "0", "--no-progress")  # fmt: skip
    assert out.returncode == 0, out.stderr
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{db}")
    net = load_supernet(plain_net)
    assert study.user_attrs["dataset"] == net.data["spec"]
    assert study.user_attrs["full"]["accuracy"] > 0.8  # the trained weights, not random ones
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pretrained"], "brings its own weights"),
        (["--checkpoint", "{net}"], "brings its own weights"),
    ],
)
def test_a_vitpareto_checkpoint_as_model_refuses_other_weights(plain_net, tmp_path, extra, message):
    extra = [e.format(net=plain_net) for e in extra]
    out = vitpareto("search", "--model", plain_net, *extra, "--study", "s", "--storage",
                    f"sqlite:///{tmp_path / 'r.db'}")  # fmt: skip
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r.db").exists()


def test_a_vitpareto_checkpoint_of_another_model_is_named(plain_net, tmp_path):
    out = vitpareto("search", "--model", "vit_tiny_patch16_224", "--dataset", "digits",
                    "--checkpoint", plain_net, "--study", "s", "--storage",
                    f"sqlite:///{tmp_path / 'r.db'}")  # fmt: skip
    assert out.returncode == 2 and "holds test_vit" in out.stderr, out.stderr
    assert not (tmp_path / "r.db").exists()
