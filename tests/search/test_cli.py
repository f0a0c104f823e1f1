"""The command line: help, working commands, and one clear line with exit 2 for mistakes."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers.cli import SMALL, vitpareto, vitpareto_process


@pytest.mark.slow  # a process of its own
def test_help_lists_commands():
    out = vitpareto_process("--help")
    assert out.returncode == 0
    for command in ("demo", "showcase", "space", "cost", "search", "export", "report"):
        assert command in out.stdout
    assert vitpareto("showcase", "--help").returncode == 0


def test_showcase_prints_a_measured_table():
    out = vitpareto("showcase", *SMALL, "--batch", "2", "--repeats", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("candidate"))
    rows = [
        line
        for line in lines[header + 2 :]
        if line.strip() and not line.startswith(("MAC", "measured"))
    ]
    names = [r.split("  ")[0] for r in rows]
    assert names[:2] == ["original (timm)", "full"] and any(n.startswith("tokens") for n in names)
    assert rows[0].split()[-1] == "1.00x"  # the reference against itself


def test_cost_of_a_candidate(tmp_path):
    cand = {
        "patch_size": 16,
        "heads": [1] * 6,
        "qk_dim": [32] * 6,
        "mlp": [96] * 6,
        "keep": [1.0] * 6,
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cand))
    out = vitpareto("cost", *SMALL, "--candidate", str(path))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["params"] < report["full_params"] and report["macs"] < report["full_macs"]


def test_latency_measured_and_predicted(tmp_path):
    out = vitpareto(
        "latency",
        *SMALL,
        "--candidate",
        '{"patch_size": 32, "heads": [1,1,1,1,1,1], '
        '"qk_dim": [32,32,32,32,32,32], "mlp": [96,96,96,96,96,96], "keep": [1,1,1,1,1,1]}',
        "--batch",
        "2",
        "--repeats",
        "5",
        "--predict",
        "--tables",
        str(tmp_path / "tables"),
    )
    assert out.returncode == 0, out.stderr
    assert "speedup" in out.stdout and "predicted" in out.stdout
    assert len(list((tmp_path / "tables").glob("*.json"))) == 1


def test_latency_of_a_candidate_with_exit_designs(tmp_path):
    """Each exit's design is timed (measured as deployed, and predicted from its curve)."""
    cand = {"patch_size": 16, "heads": [2] * 6, "qk_dim": [32] * 6, "mlp": [96] * 6,
            "keep": [1.0] * 6, "exits": [1, 3], "exit_types": ["conv", "mlp"],
            "exit_threshold": 0.5}  # fmt: skip
    args = ["--batch", "2", "--repeats", "5", "--predict", "--tables", str(tmp_path / "t")]
    out = vitpareto("latency", *SMALL, "--candidate", json.dumps(cand), *args)
    assert out.returncode == 0, out.stderr
    assert "speedup" in out.stdout and "predicted" in out.stdout


def test_space_written_and_read_back(tmp_path):
    out = vitpareto("space", *SMALL, "--out", str(tmp_path / "space.yaml"))
    assert out.returncode == 0, out.stderr
    from vitpareto.spaces import JointSpace, create_model

    space = JointSpace.load(tmp_path / "space.yaml").bind(create_model("test_vit", img_size=32))
    assert space.size() > 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["cost", "--model", "vit_nosuch"], "unknown timm model 'vit_nosuch'"),
        (["cost", "--model", "resnet18"], "unsupported model ResNet"),
        (["cost", *SMALL, "--candidate", "{bad json"], "candidate is not valid JSON"),
        (["cost", *SMALL, "--candidate", "missing.json"], "neither JSON nor an existing file"),
        (
            [
                "cost",
                *SMALL,
                "--candidate",
                '{"patch_size": 5, "heads": [2,2,2,2,2,2], '
                '"qk_dim": [32,32,32,32,32,32], "mlp": [192,192,192,192,192,192], "keep": [1,1,1,1,1,1]}',
            ],
            "patch_size=5 does not divide the 32x32 image",
        ),
        (
            ["cost", *SMALL, "--checkpoint", "nowhere.pth"],
            "checkpoint 'nowhere.pth' does not exist",
        ),
        (["space", *SMALL, "--out", "space.txt"], "must end in .yaml, .yml or .json"),
        (
            ["showcase", *SMALL, "--batch", "0"],
            "--batch must be a whole number of images per forward pass from 1 to",
        ),
        (["showcase", *SMALL, "--device", "cuda:0"], "no CUDA GPU"),
        (["showcase", *SMALL, "--device", "tpu"], "device 'tpu'"),
        (["latency", *SMALL, "--device", "cuda"], "no CUDA GPU"),
        (
            ["latency", *SMALL, "--batch", "0"],
            "--batch must be a whole number of images per forward pass from 1 to",
        ),
        (["latency", *SMALL, "--predict", "--space", "nospace.yaml"], "nospace.yaml"),
        # zero is a value, not "not given"
        (["cost", "--model", "test_vit", "--img-size", "0"], "--img-size must be a whole number"),
        (
            ["cost", "--model", "test_vit", "--num-classes", "0"],
            "--num-classes must be a whole number of classes from 1",
        ),
        (
            ["search", "--supernet", "x.pt", "--study", "s", "--finetune-lr", "0"],
            "--finetune-lr must be a finite number (the peak learning rate) above 0",
        ),
        (
            ["search", "--supernet", "x.pt", "--study", "s", "--finetune-lr", "nan"],
            "--finetune-lr must be a finite number",
        ),
        (
            [
                "train",
                "--model",
                "test_vit",
                "--dataset",
                "digits",
                "--out",
                "n.pt",
                "--img-size",
                "0",
            ],
            "--img-size must be a whole number of pixels per image side from 1",
        ),
    ],
)
def test_mistakes_exit_2_with_one_line(args, message, tmp_path):
    if any(a.startswith("cuda") for a in args):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    one_line_and_exit_2(vitpareto(*args, cwd=tmp_path), message)


def one_line_and_exit_2(out: subprocess.CompletedProcess, message: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], out.stderr
    assert "Traceback" not in out.stderr


def test_usage_errors_exit_2():
    assert vitpareto("frobnicate").returncode == 2
    assert vitpareto("cost").returncode == 2  # --model is required


@pytest.mark.slow  # a process of its own
def test_a_mistake_in_a_process_of_its_own_is_one_line_and_exit_2(tmp_path):
    """What a user's shell sees: nothing else on stderr (no warning, no traceback)."""
    out = vitpareto_process("cost", *SMALL, "--candidate", "{bad json", cwd=tmp_path)
    one_line_and_exit_2(out, "candidate is not valid JSON")
