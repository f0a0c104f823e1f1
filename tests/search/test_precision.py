"""Precision as a searched knob, applied in the deployed artifact: an int8 candidate's
exported model.onnx holds quantized operators, its recorded accuracy is that file's on the
validation images (recomputed here without vitpareto), its card names the precision, and
a precision the runtime cannot run is refused before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch

from tests.helpers.cli import vitpareto
from vitpareto.evaluators import (
    AccuracyEvaluator,
    calibration_images,
    check_precision,
    kept_graph,
    prepare,
)
from vitpareto.search import SearchConfig, load_supernet, search
from vitpareto.spaces import Candidate, JointSpace, VitParetoError

QUANTIZED = {  # operators only a quantized graph holds
    "int8-dynamic": {"DynamicQuantizeLinear", "MatMulInteger"},
    "int8-static": {"QuantizeLinear", "DequantizeLinear"},
}

# the file's accuracy on the saved validation images, by ONNX Runtime alone
ACCURACY = """
import sys, numpy as np, onnxruntime as ort
d = sys.argv[1]
x, y = np.load(d + "/val_x.npy"), np.load(d + "/val_y.npy")
s = ort.InferenceSession(d + "/model.onnx", providers=["CPUExecutionProvider"])
hits = sum(int((s.run(None, {"images": x[i:i + 128]})[0].argmax(-1) == y[i:i + 128]).sum())
           for i in range(0, len(x), 128))
assert "vitpareto" not in sys.modules
print(hits / len(x))
"""


def test_precision_is_a_knob_of_the_candidate_and_the_space(small_net):
    net = load_supernet(small_net)
    full = Candidate.full(net.elastic.spec)
    assert "precision" not in full.to_dict()  # float32: candidates read as before
    q = full.replace(precision="int8-static")
    assert Candidate.from_dict(q.to_dict()) == q and q != full
    with pytest.raises(VitParetoError, match="precision 'int4' is not one of"):
        full.replace(precision="int4")
    space = JointSpace(patch_size=[16], precision=["fp32", "int8-dynamic"]).bind(net.elastic)
    assert space.params()["precision"] == ["fp32", "int8-dynamic"]
    assert JointSpace.from_dict(space.to_dict(), net.elastic) == space
    assert {space.decode({"precision": p}).precision for p in space.params()["precision"]} == {"fp32", "int8-dynamic"}  # fmt: skip


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--precision", "int8-dynamic"], "does not run under --runtime eager"),
        (["--precision", "fp16", "--runtime", "onnxruntime"], "does not run under --runtime onnx"),
        (["--precision", "bf16", "--runtime", "onnxruntime"], "use --runtime eager, compile"),
        (["--precision", "fp16"], "no AMX-FP16 instructions; search it on a CUDA device"),
        (["--precision", "fp8"], "unknown precision 'fp8'"),
        (["--precision", "fp32,fp32"], "distinct precisions"),
        (
            ["--precision", "int8-static", "--runtime", "onnxruntime", "--latency", "predicted"],
            "use --latency measured",
        ),  # fmt: skip
    ],
)
def test_a_precision_the_runtime_cannot_run_is_refused(small_net, tmp_path, extra, words):
    db = tmp_path / "r.db"
    out = vitpareto("search", "--supernet", small_net, "--storage", f"sqlite:///{db}",
                    "--study", "s", "--trials", "2", *extra)  # fmt: skip
    assert out.returncode == 2 and words in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not db.exists()
    assert check_precision("fp32,int8-dynamic", "onnxruntime") == ("fp32", "int8-dynamic")


@pytest.mark.slow  # a search under ONNX Runtime, quantized exports
@pytest.mark.parametrize("precision", ["int8-dynamic", "int8-static"])
def test_an_int8_candidate_ships_quantized_and_is_scored_on_its_file(
    trained_net, tmp_path, precision
):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    net = load_supernet(trained_net)
    config = SearchConfig(runtime="onnxruntime", precision=(precision,), latency_repeats=3)
    study = search(net, url, "q", 1, config, progress=False)
    trial = study.trials[0]
    assert trial.user_attrs["candidate"]["precision"] == precision
    assert "fp32_accuracy" in trial.user_attrs
    timed = precision == "int8-dynamic"  # export times what it writes (once is enough here)
    out = vitpareto("export", "--storage", url, "--study", "q", "--trial", trial.number,
                    "--supernet", trained_net, "--out", tmp_path / "m",
                    *([] if timed else ["--no-measure"]))  # fmt: skip
    assert out.returncode == 0, out.stderr
    d = tmp_path / "m" / f"trial_{trial.number}"
    ops = {n.op_type for n in onnx.load(d / "model.onnx").graph.node}
    assert QUANTIZED[precision] <= ops
    metrics = json.loads((d / "metrics.json").read_text())
    if timed:
        assert metrics["deployed_runtime"] == "onnxruntime" and metrics["deployed_latency_ms"] > 0
        # bench times the quantized file as written, and only where it runs
        out = vitpareto("bench", d, "--repeats", "3")
        assert out.returncode == 0 and str(d) in out.stdout, out.stderr
        out = vitpareto("bench", d, "--runtime", "eager")
        assert out.returncode == 2 and "runs under --runtime onnxruntime" in out.stderr
    assert f"| precision | {precision}" in (d / "README.md").read_text()
    images, labels = zip(*load_supernet(trained_net).load_data(batch_size=128).val, strict=True)
    np.save(d / "val_x.npy", torch.cat(images).numpy())
    np.save(d / "val_y.npy", torch.cat(labels).numpy())
    run = subprocess.run([sys.executable, "-c", ACCURACY, str(d)], capture_output=True,
                         text=True, env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert float(run.stdout) == pytest.approx(trial.user_attrs["accuracy"], abs=1e-12)
    loaded = optuna.load_study(study_name="q", storage=url)
    assert loaded.user_attrs["space"]["precision"] == [precision]


@pytest.mark.slow  # ONNX exports and quantization
def test_an_int8_candidates_latency_times_the_graph_its_accuracy_was_measured_on(small_net):
    """One export and quantization per trial: the latency that follows the accuracy times
    that very graph. An int8-static graph calibrated on the training images (the
    accuracy's) gives other outputs than one calibrated on the timing's input, so outputs
    that change once the accuracy was measured, to the kept graph's, show it was reused."""
    net = load_supernet(small_net)
    cand = Candidate.full(net.elastic.spec).replace(precision="int8-static")
    model = net.elastic.extract(cand).eval()
    data = net.load_data(batch_size=16)
    x = next(iter(data.val))[0]
    noise = torch.randn(1, *x.shape[1:]) * 5

    def outputs(m):  # the graph prepare() times for ``m``, on x
        return np.asarray(prepare(m, noise, "onnxruntime")(x))

    assert kept_graph(model) is None
    before = outputs(model)  # exported and calibrated on the timing's input
    calibration = calibration_images(data.train)
    AccuracyEvaluator(data.val, max_batches=1, calibration=calibration).score(
        model, net.elastic.spec
    )
    kept = ort.InferenceSession(kept_graph(model), providers=["CPUExecutionProvider"])
    after = outputs(model)
    assert np.array_equal(after, kept.run(None, {"images": x.numpy()})[0])
    assert not np.array_equal(after, before)
    with torch.no_grad():
        model.vit.head.bias.add_(1e-3)
    assert kept_graph(model) is None  # other weights: another graph
