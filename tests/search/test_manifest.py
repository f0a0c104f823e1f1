"""A model directory's manifest and schemas: every file's SHA-256 in manifest.json, and
config.json and metrics.json read through one schema each. A changed, swapped, added or
missing file, a config asking for an impossible model and a hostile metrics.json are each
refused in one line before anything is built or timed, and nothing in the directory
changes; ``--trust`` (``trust=True``) is the one way past the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vitpareto
from tests.helpers.hostile import digest, refused
from vitpareto.errors import VitParetoError
from vitpareto.search.cli import main
from vitpareto.search.outputs import check_dirs, model_files, write_model_dir

LISTED = {"config.json", "model.safetensors", "metrics.json", "candidate.json"}


@pytest.fixture
def exported(model_dir):
    return model_dir


@pytest.fixture
def d(model_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    return copy


def _edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_the_manifest_lists_every_file_and_the_card_holds_its_hash(d):
    manifest = json.loads((d / "manifest.json").read_text())
    assert set(manifest["files"]) == LISTED
    for name, sha in manifest["files"].items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == sha
    own = hashlib.sha256((d / "manifest.json").read_bytes()).hexdigest()
    assert own in (d / "README.md").read_text()
    assert vitpareto.load(d).candidate is not None


@pytest.mark.parametrize("name", sorted(LISTED))
def test_a_file_changed_after_export_is_named(capsys, d, name):
    blob = bytearray((d / name).read_bytes())
    blob[-2] ^= 0x01  # one bit, inside the file
    (d / name).write_bytes(bytes(blob))
    before = digest(d)
    with pytest.raises(VitParetoError, match=f"{name}' changed after export"):
        vitpareto.load(d)
    refused(capsys, ["bench", d], name, "changed after export", "--trust")
    assert digest(d) == before


def test_the_weights_hash_cannot_be_switched_off(d):
    """Deleting config.json's own hash of the weights, then changing them: the manifest
    still names what changed."""
    _edit_json(d / "config.json", lambda c: c.pop("weights_sha256"))
    blob = bytearray((d / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(VitParetoError, match="changed after export"):
        vitpareto.load(d)


def test_another_trials_onnx_copied_over_is_refused_before_any_timing(capsys, d, tmp_path):
    model = vitpareto.load(d)
    dirs = []
    for i in range(2):
        files = model_files(
            model, "test_vit", {"img_size": 32, "patch_size": 8}, list("0123456789"), {}
        )
        dirs.append(write_model_dir(tmp_path / f"t{i}", {**files, "model.onnx": f"graph {i}".encode()}))  # fmt: skip
    shutil.copy(dirs[1] / "model.onnx", dirs[0] / "model.onnx")
    refused(capsys, ["bench", *dirs], "t0/model.onnx", "changed after export")
    # a model.onnx added to a directory exported without one is not timed unchecked
    shutil.copy(dirs[1] / "model.onnx", d / "model.onnx")
    refused(capsys, ["bench", d], "model.onnx", "not in manifest.json")


def test_a_directory_without_a_manifest_is_used_only_when_trusted(capsys, d):
    (d / "manifest.json").unlink()
    with pytest.raises(VitParetoError, match="no manifest.json.*--trust"):
        vitpareto.load(d)
    assert vitpareto.load(d, trust=True) is not None
    refused(capsys, ["bench", d], "no manifest.json", "--trust")
    assert main(["bench", str(d), "--trust", "--repeats", "3", "--threads", "1"]) == 0
    assert "full model" in capsys.readouterr().out


def test_a_fifo_in_place_of_model_onnx_is_refused_not_opened(capsys, d):
    os.mkfifo(d / "model.onnx")
    refused(capsys, ["bench", d], "model.onnx", "not in manifest.json")
    refused(capsys, ["bench", d, "--trust"], "model.onnx", "not a regular file")


NESTED = '{"kind": ' + "[" * 200_000 + "]" * 200_000 + "}"


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c["model"]["kwargs"].update(depth=1_000_000), ["depth 1000000 is out of range"]),
        (lambda c: c["model"]["kwargs"].update(embed_dim=10_000_000), ["embed_dim 10000000"]),
        (lambda c: c["model"]["kwargs"].update(embed_dim=60_000, depth=200), ["GiB"]),
        (lambda c: c["model"]["kwargs"].update(num_heads=7), ["cannot be built"]),
        (lambda c: c.update(classes=[str(i) for i in range(100_000)]), ["100000 classes"]),
        (lambda c: c.update(classes="cat"), ["classes"]),
        (lambda c: c.update(weights_sha256="x" * 64), ["weights_sha256"]),
        (lambda c: c.update(format=2), ["format"]),
        (lambda c: c.pop("candidate"), ["candidate"]),
        (lambda c: c.update(model="vit_small"), ["model"]),
        (lambda c: c.update(candidate=[1]), ["candidate"]),
        (NESTED, ["nested too deeply"]),
    ],
)
def test_a_config_asking_for_the_impossible_is_refused_before_it_is_built(capsys, d, change, words):
    if isinstance(change, str):
        (d / "config.json").write_text(change)
    else:
        _edit_json(d / "config.json", change)
    before = digest(d)
    with pytest.raises(VitParetoError) as e:
        vitpareto.load(d, trust=True)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)
    refused(capsys, ["bench", d, "--trust"], *words)  # the command that reads it
    assert digest(d) == before


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", ["is not valid JSON"]),
        ("[1, 2]", ["not a valid metrics file"]),
        ('{"deployed_batch": -4}', ["deployed_batch"]),
        ('{"deployed_batch": "x"}', ["deployed_batch"]),
        ('{"deployed_batch": 10000000}', ["deployed_batch"]),
        ('{"deployed_batch": 2.5}', ["deployed_batch"]),
        ('{"latency_ms": 1e999}', ["latency_ms"]),
        ('{"deployed_runtime": "os.system"}', ["deployed_runtime"]),
        ('{"exit_fraction": [2.0]}', ["exit_fraction"]),
    ],
)
def test_a_hostile_metrics_file_is_refused_before_any_timing(capsys, d, text, words):
    (d / "metrics.json").write_text(text)
    before = digest(d)
    refused(capsys, ["bench", d, "--trust"], "metrics.json", *words)
    assert digest(d) == before


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)  # fmt: skip
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(value=JSON, where=st.sampled_from(["", "model", "kwargs", "candidate", "classes"]))
def test_any_json_in_config_is_refused_or_loaded(exported, d, value, where):
    """Random JSON as the whole config.json, or in place of one of its parts."""
    base = json.loads((exported / "config.json").read_text())
    if where == "":
        cfg = value
    elif where == "kwargs":
        cfg = {**base, "model": {**base["model"], "kwargs": value}}
    else:
        cfg = {**base, where: value}
    (d / "config.json").write_text(json.dumps(cfg))
    try:
        vitpareto.load(d, trust=True)
    except VitParetoError as e:
        assert "\n" not in str(e)


@FAST
@given(value=JSON, key=st.sampled_from(["", "deployed_batch", "batch_size", "runtime", "exit_fraction", "latency_ms"]))  # fmt: skip
def test_any_json_in_metrics_is_refused_or_read(d, value, key):
    (d / "metrics.json").write_text(json.dumps(value if key == "" else {key: value}))
    try:
        check_dirs([d], trust=True)
    except VitParetoError as e:
        assert "\n" not in str(e)


def _rehash(d, name) -> None:
    """Write ``name``'s new SHA-256 into the manifest, as one who edits both would."""
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((d / name).read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(manifest))


def test_a_manifest_rewritten_to_match_is_caught_by_its_card(capsys, d):
    _edit_json(d / "config.json", lambda c: c.update(classes=["cat"] * 10))
    _rehash(d, "config.json")
    refused(capsys, ["bench", d], "manifest.json' changed after export", "README.md")
    (d / "README.md").unlink()
    refused(capsys, ["bench", d], "README.md' is missing", "--trust")


@pytest.mark.parametrize(
    "name, text",
    [
        ("manifest.json", '{"kind": "vitpareto-manifest", "format": 1%s, "files": {}}' % ("1" * 5000)),
        ("manifest.json", '{"kind": "vitpareto-manifest", "format": 1.0, "files": {"a": "%s"}}' % ("0" * 64)),
        ("manifest.json", '{"kind": "vitpareto-manifest", "format": 1, "files": {"config.json\\n": "%s"}}' % ("0" * 64)),
        ("metrics.json", '{"batch_size": 1%s}' % ("1" * 5000)),
        ("config.json", '{"kind": "vitpareto-model", "format": 1%s}' % ("1" * 5000)),
    ],
)  # fmt: skip
def test_numbers_past_pythons_limit_and_odd_keys_are_one_line(capsys, d, name, text):
    (d / name).write_text(text)
    refused(capsys, ["bench", d] + (["--trust"] if name != "manifest.json" else []), name)


def test_a_file_named_like_the_model_but_not_listed_is_refused(capsys, d):
    (d / "model.onnx.data").write_bytes(b"external weights")
    refused(capsys, ["bench", d], "model.onnx.data", "not in manifest.json")


def test_bench_checks_every_directory_before_timing_any(capsys, exported, d, tmp_path):
    """A bad directory after a good one: refused before the good one is timed."""
    blob = bytearray((d / "model.safetensors").read_bytes())
    blob[200:260] = b"\xff" * 60  # the safetensors header, garbled
    (d / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(VitParetoError, match="model.safetensors"):
        check_dirs([exported, d], trust=True)  # what bench runs before it times any
    refused(capsys, ["bench", exported, d, "--trust"], "model.safetensors")
