"""`search --model`: a model the user trained normally, searched without a supernet (ranked
by importance, no early exits) and its front repaired by fine-tuning from the original."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.helpers.cli import vitpareto
from tests.helpers.exports import exports_equal_eager
from tests.helpers.searches import stored
from vitpareto.search import load_supernet
from vitpareto.spaces import EXIT_TYPES, Candidate, exit_key

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
        *("--importance", "taylor", "--calibration-batches", "2", "--exit-images", "0"),
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
    assert all(t.user_attrs["candidate"]["exits"] == [] for t in done)  # --exit-images 0
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


def test_exits_are_built_on_a_model_trained_normally(weights, tmp_path):
    """Exit branches of every design distilled on the user's model (backbone frozen, on
    training images), a trial with exits, and its exported files running the exit policy
    as eager ``forward_dynamic`` does."""
    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    args = [
        "search",
        *("--model", "test_vit", "--img-size", "32", "--patch-size", "8"),
        *("--dataset", "digits", "--checkpoint", str(weights), "--num-classes", "10"),
        *("--exit-images", "640", "--study", "ex", "--storage", url),
        *("--front-rounds", "0", "--no-progress"),
    ]
    out = vitpareto(*args, "--trials", "1")
    assert out.returncode == 0, out.stderr
    assert "exit branches distilled on 640 training images" in out.stderr
    net = load_supernet(tmp_path / "artifacts" / "ex.model.pt")
    before = torch.load(weights, weights_only=True)
    backbone = net.elastic.vit.state_dict()
    assert all(torch.equal(backbone[k], v) for k, v in before.items() if "blocks" not in k)
    record = net.meta["exit_training"]
    assert record["images"] == 640 and record["seconds"] > 0
    assert set(net.space.exit_types) == set(EXIT_TYPES) and net.space.exits
    for b in net.space.exits:
        for t in EXIT_TYPES:
            # twice chance on 640 images (the randomly initialised designs start at chance)
            assert record["accuracy"][exit_key(b, t)] > 0.2, record["accuracy"]
    # a trial whose every exit is on, by each design
    study = optuna.load_study(study_name="ex", storage=url)
    params = dict(study.trials[0].params)
    for b, t in zip(net.space.exits, ("attention", "conv", "mlp"), strict=False):
        params[f"exit.b{b}"], params[f"exit_type.b{b}"] = True, t
    study.enqueue_trial(params)
    out = vitpareto(*args, "--trials", "2", "--sampler", "gp")
    assert out.returncode == 0, out.stderr
    trial = study.get_trials(states=(TrialState.COMPLETE,))[1]
    cand = Candidate.from_dict(trial.user_attrs["candidate"])
    assert cand.exits == net.space.exits and trial.user_attrs["exit_fraction"]
    model = net.elastic.extract(cand).eval()
    x8 = torch.cat([x for x, _ in net.load_data(batch_size=8).val][:1])
    exports_equal_eager(net, model, tmp_path / "m", x8)


def test_a_resumed_study_refuses_a_model_ranked_from_other_settings(weights, tmp_path):
    """The ranked model is reused only for the weights, options and ranking it was built
    from: other weights or another image size name what changed, and change nothing."""
    db = tmp_path / "r.db"
    args = ["search", "--model", "test_vit", "--patch-size", "8", "--dataset", "digits",
            "--num-classes", "10", "--exit-images", "0", "--study", "s", "--storage",
            f"sqlite:///{db}", "--trials", "1", "--front-rounds", "0", "--no-progress"]  # fmt: skip
    out = vitpareto(*args, "--img-size", "32", "--checkpoint", weights)
    assert out.returncode == 0, out.stderr
    other = tmp_path / "other.pth"
    state = torch.load(weights, weights_only=True)
    torch.save({k: v + 0.01 for k, v in state.items()}, other)
    ranked = tmp_path / "artifacts" / "s.model.pt"
    before = ranked.read_bytes(), stored(db)
    for extra, words in (
        (["--img-size", "32", "--checkpoint", other], "weights: sha256"),
        (["--img-size", "48", "--checkpoint", weights], "options"),
        (["--img-size", "32", "--checkpoint", weights, "--exit-images", "64"], "exit images"),
    ):
        out = vitpareto(*args, *extra)
        assert out.returncode == 2 and words in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert (ranked.read_bytes(), stored(db)) == before
