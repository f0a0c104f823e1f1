"""The latency on the front is the deployed model's: searched under the runtime that ships,
exits inside the exported files, every export timed again, `vitpareto bench`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from tests.helpers.exports import exports_equal_eager, midway
from tests.helpers.hostile import refused
from vitpareto import load
from vitpareto.errors import VitParetoError
from vitpareto.evaluators import LatencyEvaluator, deployed, export_onnx
from vitpareto.search import SearchConfig, load_supernet, search
from vitpareto.search.cli import main
from vitpareto.search.outputs import disagreement
from vitpareto.spaces import EXIT_TYPES, Candidate, ElasticViT

pytestmark = pytest.mark.slow  # exports, processes running them

CONFIG = dict(max_batches=1, latency_repeats=3, threads=1)


@pytest.fixture(scope="module")
def net(small_net):
    return load_supernet(small_net)


def _mixed(net, images, base: Candidate | None = None):
    """``base`` (default: the full model) with exits after blocks 2 and 3, its threshold
    midway between the two middle confidences at its first exit on ``images``: half the
    samples leave there, half go on, none so near the threshold that a runtime's rounding
    (1e-7 apart) could send it the other way."""
    base = base or Candidate.full(net.elastic.spec)
    cand = base.replace(exits=(2, 3), exit_threshold=0.5)
    with torch.no_grad():
        first = net.elastic.extract(cand).forward_exits(images)[0]
    return cand.replace(exit_threshold=midway(first))


def test_exported_exit_policy_equals_forward_dynamic(net, tmp_path):
    x8 = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model = net.elastic.extract(_mixed(net, x8)).eval()
    where = exports_equal_eager(net, model, tmp_path / "m", x8, static=True)
    assert len(set(where.tolist())) > 1  # a batch of mixed exits


CUT = dict(  # cuts that made the exported exit policy fail at batch 1 (see export_pt2)
    patch_size=4,
    heads=(2, 2, 2, 2, 2, 1),
    qk_dim=(8, 32, 16, 16, 32, 8),
    mlp=(192, 96, 192, 192, 192, 192),
    keep=(1.0, 0.7, 0.7, 0.7, 1.0, 0.5),
    token_mode=("prune",) * 5 + ("fuse",),
    exits=(0, 3),
    exit_types=("attention", "linear"),
)


@pytest.mark.parametrize("cascade", [False, True])
def test_a_cut_exit_model_runs_at_batch_one_in_plain_torch(net, tmp_path, cascade):
    """The exported exit policy of a cut candidate with two exits (and with a cascade in
    front), loaded with plain torch in a fresh process and called with gradients on: every
    image alone (a batch of one, by each route) and the batch give what eager gives."""
    x8 = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    vit = copy.deepcopy(net.elastic.vit)
    elastic = ElasticViT(vit, "identity", (0, 3), exit_types=EXIT_TYPES).eval()
    cand = Candidate.make(elastic.spec, **CUT)
    with torch.no_grad():
        cand = cand.replace(exit_threshold=midway(elastic.extract(cand).forward_exits(x8)[0]))
        if cascade:
            staged = cand.replace(cascade=(16,), cascade_thresholds=(1.0,))
            coarse = elastic.extract(staged).eval().stage(x8, 0)
            cand = staged.replace(cascade_thresholds=(midway(coarse),))
    model = elastic.extract(cand).eval()
    where = exports_equal_eager(net, model, tmp_path / "m", x8)
    assert len(set(where.tolist())) > 1  # images leave by more than one route


def _kernels_run(path, x: np.ndarray, tmp) -> dict[str, int]:
    """How many times each ONNX operator ran in one ONNX Runtime call of the graph at
    ``path`` on ``x`` (from the runtime's own profile)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling, opts.profile_file_prefix = True, str(tmp / "profile")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    session.run(None, {"images": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    ran: dict[str, int] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            ran[op] = ran.get(op, 0) + 1
    return ran


def test_once_every_sample_has_left_the_exported_graph_runs_no_later_block(net, tmp_path):
    """Behind an exit, the rest of the exported graph is skipped (an ONNX ``If``), not run
    on an empty batch: a batch of one that leaves at the first exit runs the matrix
    products of the blocks before it only, as many as the static model cut there."""
    full = Candidate.full(net.elastic.spec)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    runs = {}
    for name, threshold, route in (("leave", 0.01, 0), ("stay", 1.0, 1)):
        model = deployed(net.elastic.extract(full.replace(exits=(0,), exit_threshold=threshold)))
        assert int(model(x)[1]) == route
        export_onnx(model.eval(), x, tmp_path / f"{name}.onnx")
        runs[name] = _kernels_run(tmp_path / f"{name}.onnx", x.numpy(), tmp_path)
    first = net.elastic.extract(full)
    first.vit.blocks = first.vit.blocks[:1]  # the static model up to the exit after block 0
    export_onnx(first.eval(), x, tmp_path / "first.onnx")
    prefix = _kernels_run(tmp_path / "first.onnx", x.numpy(), tmp_path)

    def products(ran):
        return sum(n for op, n in ran.items() if "MatMul" in op or op == "Gemm")

    assert products(runs["stay"]) > products(runs["leave"])
    assert products(runs["leave"]) <= products(prefix) + 1  # + the exit head's one
    assert runs["leave"].get("If", 0) == 1


def test_a_merging_candidate_exports_and_runs_without_vitpareto(net, tmp_path):
    """Merged tokens carry their sizes between blocks and into the exits; the exported
    graphs (no scatter with mean: sums and counts) give what eager gives."""
    x8 = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    depth = net.elastic.spec.depth
    base = Candidate.make(
        net.elastic.spec,
        keep=(0.5, 0.7, 0.5) + (1.0,) * (depth - 3),
        token_mode=("merge", "prune", "merge") + ("prune",) * (depth - 3),
    )
    model = net.elastic.extract(_mixed(net, x8, base)).eval()
    exports_equal_eager(net, model, tmp_path / "m", x8)
    reloaded = load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(reloaded(x8), model(x8))


def test_every_exit_design_exports_and_reloads(net, tmp_path):
    """A candidate with an exit of each design (a conv exit reads the grid, an attention
    exit runs its own block): the files run what eager runs, and load back."""
    x8 = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    vit = copy.deepcopy(net.elastic.vit)
    elastic = ElasticViT(vit, "identity", (0, 1, 2, 3), exit_types=EXIT_TYPES).eval()
    cand = Candidate.full(elastic.spec).replace(
        exits=(0, 1, 2, 3), exit_types=("conv", "attention", "mlp", "linear")
    )
    with torch.no_grad():
        first = elastic.extract(cand).forward_exits(x8)[0]
    model = elastic.extract(cand.replace(exit_threshold=midway(first))).eval()
    where = exports_equal_eager(net, model, tmp_path / "m", x8)
    assert len(set(where.tolist())) > 1
    reloaded = load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(reloaded(x8), model(x8))
        assert torch.equal(reloaded.forward_dynamic(x8)[0], model.forward_dynamic(x8)[0])


def test_a_cascade_exports_and_reloads(net, tmp_path):
    """A two-stage cascade on the digits supernet (patch 16, then the candidate's 8 with
    its exits): the files run what eager runs, samples leave at every stage, and the
    model loads back."""
    images = next(iter(net.load_data(batch_size=64).val))[0][:8]
    base = _mixed(net, images).replace(cascade=(16,), cascade_thresholds=(1.0,))
    with torch.no_grad():
        coarse = net.elastic.extract(base).eval().stage(images, 0)
    model = net.elastic.extract(base.replace(cascade_thresholds=(midway(coarse),))).eval()
    where = exports_equal_eager(net, model, tmp_path / "m", images)
    assert (where == 0).any() and (where > 0).any()
    reloaded = load(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(reloaded.forward_dynamic(images)[1], where)


def test_a_two_stage_cascade_on_digits_stops_where_its_thresholds_say(net):
    """Patch 16, then 8: at a threshold near 0 every image stops at the coarse stage with
    its static model's logits; at 1 every image reaches the fine one with its logits; in
    between the coarse stage keeps exactly the images a hand count says."""
    x = next(iter(net.load_data(batch_size=64).val))[0][:32]
    base = Candidate.full(net.elastic.spec).replace(cascade=(16,), cascade_thresholds=(1.0,))
    with torch.no_grad():
        coarse = net.elastic.extract(base.stage(16)).eval()(x)
        logits, where = (
            net.elastic.extract(base.replace(cascade_thresholds=(1e-9,))).eval().forward_dynamic(x)
        )
        assert (where == 0).all() and torch.allclose(logits, coarse, atol=1e-5)
        logits, where = net.elastic.extract(base).eval().forward_dynamic(x)
        fine = net.elastic.extract(base.replace(cascade=())).eval()(x)
        assert (where == 1).all() and torch.allclose(logits, fine, atol=1e-5)
        confidence = coarse.softmax(-1).amax(-1)
        t = float(confidence.quantile(0.3))
        mid = net.elastic.extract(base.replace(cascade_thresholds=(t,))).eval()
        _, where = mid.forward_dynamic(x)
        assert torch.equal(where == 0, confidence >= t) and 0 < int((where == 0).sum()) < 32


def test_an_exit_candidate_is_timed_as_deployed_on_real_images(net):
    data = net.load_data(batch_size=64)
    images = next(iter(data.val))[0]
    cand = _mixed(net, images[:32])
    ev = LatencyEvaluator(batch_size=1, repeats=5, images=images[:32], runtime="onnxruntime")
    got = ev(net.elastic.eval(), cand)
    assert got["latency_method"] == "dynamic" and got["exit_latency_ms"] is None
    assert got["runtime"] == "onnxruntime" and got["artifact_seconds"] > 0
    derived = LatencyEvaluator(batch_size=1, repeats=5, runtime="compile")
    got = derived(net.elastic.eval(), cand, {"exit_fraction": [0.5, 0.25, 0.25]})
    assert got["latency_method"] == "derived" and len(got["exit_latency_ms"]) == 3
    seg = got["exit_latency_ms"]
    assert got["latency_ms"] == pytest.approx(0.5 * seg[0] + 0.25 * seg[1] + 0.25 * seg[2])


def test_a_search_under_onnxruntime_and_its_export_timed_again(net, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    config = SearchConfig(runtime="onnxruntime", **CONFIG)
    study = search(net, url, "o", 3, config, progress=False)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert all(t.user_attrs["runtime"] == "onnxruntime" for t in trials)
    assert all("artifact" in t.user_attrs["stage_seconds"] for t in trials)
    assert study.user_attrs["config"]["runtime"] == "onnxruntime"
    with pytest.raises(VitParetoError, match="runtime 'onnxruntime', not 'eager'"):
        search(net, url, "o", 4, SearchConfig(**CONFIG), progress=False)
    out = tmp_path / "models"
    args = ["export", "--storage", url, "--study", "o", "--pareto", "--out", out]
    assert main([str(a) for a in [*args, "--supernet", net.path]]) == 0
    dirs = sorted(out.iterdir())
    for d in dirs:
        m = json.loads((d / "metrics.json").read_text())
        assert m["deployed_runtime"] == "onnxruntime" and m["deployed_latency_ms"] > 0
        assert m["deployed_speedup"] > 0 and m["deployed_fingerprint"]["cpu"]
        assert "as deployed here" in (d / "README.md").read_text()
    capsys.readouterr()
    assert main(["bench", *map(str, dirs[:2]), "--repeats", "5"]) == 0
    table = capsys.readouterr().out
    assert "full model" in table and all(str(d) in table for d in dirs[:2])
    refused(capsys, ["bench", str(tmp_path)], "not an exported model directory")


def test_disagreement_compares_speedups_not_the_machines_mood():
    """Both figures are timed against the full model: a machine slower at export than
    during the search moves both alike and is no disagreement; a speedup that moved by
    more than the two measurements' spread is, and the line says by how much."""
    base = dict(runtime="eager", deployed_runtime="eager", latency_iqr_ms=0.05)
    slower = dict(latency_ms=1.5, speedup=1.37, deployed_latency_ms=2.15, deployed_speedup=1.37)
    assert disagreement({**base, **slower, "deployed_iqr_ms": 0.07}) is None
    moved = dict(latency_ms=1.5, speedup=1.6, deployed_latency_ms=1.5, deployed_speedup=1.2)
    why = disagreement({**base, **moved, "deployed_iqr_ms": 0.05})
    assert why and "1.60x" in why and "1.20x" in why
    noisy = {**base, **moved, "latency_iqr_ms": 0.4, "deployed_iqr_ms": 0.3}
    assert disagreement(noisy) is None  # within the spread of two noisy measurements
    other = {**base, **slower, "deployed_runtime": "onnxruntime", "deployed_iqr_ms": 0.07}
    assert "searched under eager, deployed under onnxruntime" in disagreement(other)
