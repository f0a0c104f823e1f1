"""bf16 and fp16 as searched precisions: the candidate's model computes in its precision
(weights and activations), its accuracy and latency are that model's, it ships as such
(weights and .pt2 in bf16; the .onnx files in float32 for any ONNX runtime) and loads
back; a device that does not compute the precision natively is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch

from tests.helpers.cli import vitpareto
from vitpareto import load
from vitpareto.evaluators import AccuracyEvaluator, native_half
from vitpareto.search import SearchConfig, load_supernet, search
from vitpareto.spaces import Candidate, VitParetoError

NATIVE_BF16 = native_half("bf16", "cpu") is None
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16")


def _mixed_exits(net, x):
    """The full candidate with two exits, the first's threshold at its median confidence."""
    cand = Candidate.full(net.elastic.spec).replace(exits=(1, 3), exit_threshold=0.5)
    with torch.no_grad():
        first = net.elastic.extract(cand.replace(precision="bf16")).forward_exits(x)[0]
    return cand.replace(exit_threshold=float(first.softmax(-1).amax(-1).median()))


def test_a_bf16_candidate_computes_in_bf16_and_answers_in_float32(small_net):
    net = load_supernet(small_net)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cand = _mixed_exits(net, x)
    fp32, bf16 = (net.elastic.extract(cand.replace(precision=p)).eval() for p in ("fp32", "bf16"))
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    with torch.no_grad():
        for a, b in zip(fp32.forward_exits(x), bf16.forward_exits(x), strict=True):
            assert b.dtype == torch.float32  # logits in float32, whatever ran
            assert not torch.equal(a, b)  # computed in bf16, not in float32
            torch.testing.assert_close(b, a, atol=0.15, rtol=0.05)
        logits, where = bf16.forward_dynamic(x)
        exits = bf16.forward_exits(x)
        # each sample leaves where the float32 logits it was given say it is confident
        confident = exits[0].softmax(-1).amax(-1) >= cand.exit_threshold
        assert torch.equal(where == 0, confident) and len(set(where.tolist())) > 1
        assert torch.equal(logits[confident], exits[0][confident])
        assert bf16(x).dtype == torch.float32


def test_a_half_precision_the_device_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(VitParetoError, match="no AVX512-BF16 or AMX instructions"):
        SearchConfig(precision=("fp32", "bf16"))
    assert native_half("bf16", "cuda") is None  # the target's GPU decides, where it runs
    with pytest.raises(VitParetoError, match="does not run under --runtime onnxruntime"):
        SearchConfig(precision=("bf16",), runtime="onnxruntime", device="cuda")


@needs_bf16
@pytest.mark.slow  # a search, an export, a process timing it again
def test_a_bf16_search_scores_ships_and_loads_its_bf16_model(small_net, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    net = load_supernet(small_net)
    config = SearchConfig(precision=("bf16",), max_batches=2, latency_repeats=3, threads=1)
    study = search(net, url, "h", 2, config, progress=False)
    trial = study.trials[0]
    cand = Candidate.from_dict(trial.user_attrs["candidate"])
    assert cand.precision == "bf16"
    val = AccuracyEvaluator(net.load_data(batch_size=128).val, max_batches=2, progress=False)
    assert trial.user_attrs["accuracy"] == val(net.elastic, cand)["accuracy"]
    out = vitpareto("export", "--storage", url, "--study", "h", "--trial", trial.number,
                    "--supernet", small_net, "--out", tmp_path / "m")  # fmt: skip
    assert out.returncode == 0, out.stderr
    d = tmp_path / "m" / f"trial_{trial.number}"
    assert "| precision | bf16 (the weights and .pt2 files" in (d / "README.md").read_text()
    assert json.loads((d / "metrics.json").read_text())["deployed_latency_ms"] > 0
    model = load(d)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = net.elastic.extract(cand).eval()(x)
        assert torch.equal(model(x), want)
        program = torch.export.load(str(d / "model.pt2"))
        assert torch.bfloat16 in {p.dtype for p in program.state_dict.values()}
        pt2 = program.module()(x)
        pt2 = pt2[0] if isinstance(pt2, tuple | list) else pt2
        assert torch.equal(pt2, want)
        float32 = model.float()(x)  # its bf16 weights, computed in float32
    session = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx = session.run(None, {"images": x.numpy()})[0]
    assert np.abs(onnx - float32.numpy()).max() < 1e-4  # the .onnx file computes in float32
    out = vitpareto("bench", d, "--runtime", "onnxruntime")
    assert out.returncode == 2 and "bf16" in out.stderr and "--runtime eager" in out.stderr
    assert optuna.load_study(study_name="h", storage=url).user_attrs["space"]["precision"] == [
        "bf16"
    ]
