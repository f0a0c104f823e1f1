"""`vitpareto train` and `vitpareto finetune` from the command line, mistakes included."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from tests.helpers.cli import vitpareto
from vitpareto.search import SearchConfig, load_supernet, search
from vitpareto.search.supernet import read_checkpoint

pytestmark = pytest.mark.slow  # training

TRAIN = [
    "train",
    "--model",
    "test_vit",
    "--img-size",
    "32",
    "--patch-size",
    "16",
    "--dataset",
    "digits",
    "--batch-size",
    "128",
    "--random-candidates",
    "1",
    "--threads",
    "1",
]
CANDIDATE = {
    "patch_size": 16,
    "heads": [1] * 6,
    "qk_dim": [16] * 6,
    "mlp": [96] * 6,
    "keep": [1.0] * 6,
    "exits": [],
    "exit_threshold": 0.9,
    "fuse": False,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch run."""
    path = tmp_path_factory.mktemp("cli") / "net.pt"
    out = vitpareto(*TRAIN, "--epochs", "1", "--out", str(path))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["epochs"] == 1 and report["sha256"] == read_checkpoint(path)["sha256"]
    return path


def test_train_resume_and_finetune(trained, tmp_path):
    # a finished run has nothing left to resume
    out = vitpareto("train", "--out", str(trained), "--resume")
    assert out.returncode == 0 and "nothing to resume" in out.stdout

    cand = tmp_path / "cand.json"
    cand.write_text(json.dumps(CANDIDATE))
    model_dir = tmp_path / "small"
    args = ["finetune", "--supernet", str(trained), "--candidate", str(cand), "--steps", "20"]
    out = vitpareto(*args, "--out", str(model_dir), "--threads", "1")
    assert out.returncode == 0, out.stderr
    assert "after 20 steps" in out.stdout
    assert {p.name for p in model_dir.iterdir()} == {
        "config.json",
        "metrics.json",
        "model.safetensors",
        "manifest.json",
        "README.md",
    }
    before = (model_dir / "model.safetensors").read_bytes()
    again = vitpareto(*args, "--out", str(model_dir))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert (model_dir / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--resume", "--lr", "0.1"], "--resume takes every setting from the checkpoint"),
        ([], "already exists; pass --resume"),
    ],
)
def test_train_refuses_to_lose_a_checkpoint(trained, extra, message):
    before = trained.read_bytes()
    args = ["train", "--out", str(trained), *extra] if extra else [*TRAIN, "--out", str(trained)]
    out = vitpareto(*args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert trained.read_bytes() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--distill", "2"], "distill"),
        (["--epochs", "0"], "epochs"),
        (["--dataset", "mnist"], "unknown dataset spec"),
        (["--model", "vit_tiny_patch16_2244"], "unknown timm model"),
        (["--model", "missing.yaml"], "does not exist"),
        (["--patch-size", "7"], "patch size 7 does not divide the 32x32 image"),
    ],
)
def test_train_mistakes_exit_2(tmp_path, args, message):
    out = vitpareto(*TRAIN, "--out", str(tmp_path / "x.pt"), *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "x.pt").exists()


def test_resume_of_a_broken_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    out = vitpareto("train", "--out", str(bad), "--resume")
    assert out.returncode == 2 and "corrupted or not a torch file" in out.stderr
    assert bad.read_bytes() == b"not a checkpoint"


def test_finetune_mistakes_exit_2(trained, tmp_path):
    bad = dict(CANDIDATE, patch_size=7)
    out = vitpareto(
        "finetune",
        "--supernet",
        str(trained),
        "--candidate",
        json.dumps(bad),
        "--out",
        str(tmp_path / "m"),
    )
    assert out.returncode == 2 and "patch" in out.stderr and "Traceback" not in out.stderr
    out = vitpareto(
        "finetune", "--supernet", str(tmp_path / "nope.pt"), "--candidate", "{}", "--out", "m2"
    )
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_trained_weights_ranked_by_a_data_driven_criterion(tmp_path):
    """`train --checkpoint --importance taylor` ranks the given weights on training
    batches; the checkpoint and every study of it record the criterion."""
    torch.manual_seed(0)
    weights = tmp_path / "trained.pth"
    vit = timm.create_model("test_vit", img_size=32, patch_size=16, num_classes=10)
    torch.save(vit.state_dict(), weights)
    path = tmp_path / "net.pt"
    args = [*TRAIN, "--epochs", "1", "--checkpoint", str(weights), "--num-classes", "10"]
    out = vitpareto(
        *args, "--importance", "taylor", "--calibration-batches", "2", "--out", str(path)
    )
    assert out.returncode == 0, out.stderr
    ranked = {"criterion": "taylor", "calibration_batches": 2}
    assert read_checkpoint(path)["importance"] == ranked
    net = load_supernet(path)
    assert net.importance == ranked
    identity = list(range(net.elastic.spec.mlp_hidden[0]))
    assert net.elastic.orders[0]["mlp"] != identity  # the weights were permuted
    study = search(net, f"sqlite:///{tmp_path / 'r.db'}", "s", 1, SearchConfig(), progress=False)
    assert study.user_attrs["importance"] == ranked


@pytest.mark.parametrize(
    "args, message",
    [
        (["--importance", "taylor"], "random ones need no ranking"),
        (["--calibration-batches", "3"], "is for --importance taylor, similarity or attention"),
        (["--calibration-batches", "0"], "--calibration-batches must be a whole number"),
        (["--importance", "fisher"], "invalid choice: 'fisher'"),
    ],
)
def test_importance_mistakes_exit_2(tmp_path, args, message):
    out = vitpareto(*TRAIN, "--out", str(tmp_path / "x.pt"), *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "x.pt").exists()
