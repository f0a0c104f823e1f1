"""Latency on the target hardware: sane statistics, ratios not wall-clock bounds, the predictor
within the error it states, and clear errors for devices that are not there."""

from __future__ import annotations

import copy
import statistics

import pytest
import timm
import torch

from vitpareto.evaluators import (
    ExitPath,
    LatencyEvaluator,
    LatencyPredictor,
    dynamic_latency,
    measure_candidates,
    prepare,
    sample_candidates,
    time_interleaved,
)
from vitpareto.spaces import Candidate, ElasticViT, JointSpace, VitParetoError, token_counts

pytestmark = pytest.mark.slow  # timing rounds, torch.compile


@pytest.fixture(scope="module")
def elastic():
    # 128 px at patch 16: 65 tokens, enough work per block for compute to show over overhead
    torch.manual_seed(0)
    model = timm.create_model("test_vit", img_size=128, num_classes=10)
    return ElasticViT(copy.deepcopy(model)).eval()


def test_statistics_are_sane(elastic):
    c = Candidate.make(elastic, heads=1, mlp=96)
    r = LatencyEvaluator(batch_size=2, repeats=8, warmup=2)(elastic, c)
    assert set(r) == set(LatencyEvaluator.keys)
    assert r["latency_ms"] > 0 and r["reference_ms"] > 0
    # a spread, finite and not negative (no bound against the median: on a busy machine
    # the middle half of eight timings can be wider than their median)
    assert 0 <= r["latency_iqr_ms"] < float("inf")
    assert r["latency_count"] == 8 and 1 <= r["latency_attempts"] <= 3
    fp = r["device_fingerprint"]
    assert fp["device"] == "cpu" and fp["torch"] == torch.__version__ and fp["threads"] >= 1


def test_a_small_fraction_of_the_macs_measures_faster(elastic):
    from vitpareto.evaluators import analytic_macs

    s = elastic.spec
    small = Candidate.make(
        elastic, patch_size=32, heads={b: 0 for b in range(3, 6)}, mlp={b: 0 for b in range(3, 6)}
    )
    assert analytic_macs(s, small) < 0.3 * analytic_macs(s)
    r = LatencyEvaluator(batch_size=4, repeats=10, warmup=2)(elastic, small)
    assert r["speedup"] > 1.0  # measured interleaved with the full model: a ratio


def test_expected_latency_weights_segments_by_exit_distribution(elastic):
    c = Candidate.make(elastic, exits=(1, 3), exit_threshold=0.5)
    ev = LatencyEvaluator(batch_size=2, repeats=6, warmup=1)
    r = ev(elastic, c, {"exit_fraction": [0.5, 0.25, 0.25]})
    seg = r["exit_latency_ms"]
    assert len(seg) == 3 and seg[0] < seg[2]
    assert r["latency_ms"] == pytest.approx(0.5 * seg[0] + 0.25 * seg[1] + 0.25 * seg[2])
    assert r["speedup"] == pytest.approx(r["reference_ms"] / r["latency_ms"])
    with pytest.raises(VitParetoError, match="exit_fraction has 2 entries, expected 3"):
        ev(elastic, c, {"exit_fraction": [0.5, 0.5]})


# a ratio of two timings: on the worker that holds the supernet trainings, never beside them
@pytest.mark.xdist_group("supernet")
def test_expected_latency_agrees_with_real_dynamic_inference(elastic):
    c = Candidate.make(elastic, exits=(1,), exit_threshold=0.1)  # 10 classes: everyone leaves
    model = elastic.extract(c).eval()
    images = torch.randn(12, 3, 128, 128)
    ms, fractions = dynamic_latency(model, images)
    assert fractions == [1.0, 0.0] and ms > 0
    r = LatencyEvaluator(batch_size=1, repeats=12, warmup=2)(
        elastic, c, {"exit_fraction": fractions}
    )
    assert r["latency_method"] == "derived"
    assert r["latency_ms"] == pytest.approx(r["exit_latency_ms"][0])  # all leave at the exit
    # the segment that estimate times, the real dynamic pass and the whole model, interleaved
    # call by call so that a busy machine slows all three alike (timed in turn, one stall
    # decided the ratio)
    x = images[:1]
    segment = prepare(ExitPath(model, 0), x, "eager")
    whole = prepare(elastic.extract(Candidate.full(elastic.spec)).eval(), x, "eager")
    calls = {"segment": segment, "dynamic": lambda b: model.forward_dynamic(b), "whole": whole}
    with torch.inference_mode():
        times = time_interleaved(calls, x, repeats=60, warmup=5)
    ms = {name: statistics.median(t) for name, t in times.items()}
    # the estimate is near the real pass, which adds its confidence check to the segment
    # (whose share of so small a pass swings with the load of the other core)
    assert 0.5 < ms["segment"] / ms["dynamic"] < 1.4, ms
    # and the check can tell a pass that did not leave: the one that left is well below it
    assert ms["dynamic"] < 0.75 * ms["whole"], ms


# timing claims need a quiet machine: run on the worker that holds the supernet trainings, so
# that they never run beside those (which keep the other core busy for minutes)
@pytest.mark.xdist_group("supernet")
def test_predictor_error_on_held_out_candidates_is_within_what_it_states(elastic, tmp_path):
    space = JointSpace.from_dict(
        {
            "patch_size": [16, 32],
            "heads": {"choices": [1, 2], "groups": "all"},
            "mlp": {"choices": [0.5, 1.0], "groups": [[0, 1, 2], [3, 4, 5]]},
            "keep": {"blocks": [2, 4], "choices": [0.5, 1.0]},
            "token_mode": ["prune", "merge"],
        },
        elastic,
    )
    pred = LatencyPredictor.cached(
        elastic,
        space,
        batch_size=4,
        cache_dir=tmp_path,
        repeats=8,
        calibrate=6,
        validate=8,
        progress=False,
    )
    # the bound is what the predictor states of itself, wider on a busy machine (0.6 to 1.0
    # with the rest of the suite beside it on 2 cores): the contract is that held-out
    # candidates fall inside it, whatever it is
    assert 0 < pred.mape <= pred.error
    # merging, and the sizes merged tokens carry into later blocks, are parts of their own
    assert pred.table["attn_merge"] and pred.table["attn_select_sized"]
    held_out = sample_candidates(space, 40, seed=123)[-8:]
    # the bound was measured minutes before, the held-out candidates now, on a shared
    # machine: a round disturbed by the rest of the suite is measured again (up to three
    # rounds); a wrong predictor misses in every round
    medians = []
    for _ in range(3):
        measured = measure_candidates(
            elastic, held_out, batch_size=4, repeats=8, reference_ms=pred.table["reference_ms"]
        )
        errors = sorted(
            abs(pred.predict(c) - t) / t for c, t in zip(held_out, measured, strict=True)
        )
        medians.append(errors[len(errors) // 2])
        if medians[-1] <= pred.error:
            break
    assert min(medians) <= pred.error, (medians, pred.error)  # the median held-out error
    # a second call on the same device, model, batch and space reuses the stored table
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    again = LatencyPredictor.cached(elastic, space, batch_size=4, cache_dir=tmp_path)
    assert again.table == pred.table
    assert LatencyPredictor.key(elastic, space, "cpu", 8) != files[0].stem


@pytest.mark.parametrize("runtime", ["onnxruntime", "compile"])
def test_runtimes_agree_with_eager(runtime):
    torch.manual_seed(0)
    model = timm.create_model("test_vit", img_size=32, num_classes=10)
    el = ElasticViT(copy.deepcopy(model)).eval()
    small = el.extract(Candidate.make(el, keep={2: 0.5}, heads=1, fuse=True)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = small(x)
        got = torch.as_tensor(prepare(small, x, runtime)(x))
    assert torch.allclose(got, expected, atol=1e-4)


def test_every_model_compiled_in_one_process_is_compiled():
    # dynamo keeps at most eight graphs per code object and every compressed model shares one
    # forward: a showcase of ten or a predictor's table must not run its ninth model eager
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    el = ElasticViT(timm.create_model("test_vit", img_size=32, num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    models = [el.extract(Candidate.make(el, mlp=32 + 8 * i)).eval() for i in range(10)]
    fns = [prepare(m, x, "compile") for m in models]
    before = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        for m, fn in zip(models, fns, strict=True):
            torch.testing.assert_close(fn(x), m(x), atol=1e-4, rtol=0)
        assert counters["stats"]["unique_graphs"] - before == 10
        for fn in fns:  # called again, interleaved as the timing loops do: nothing recompiles
            fn(x)
    assert counters["stats"]["unique_graphs"] - before == 10
    # a search under torch.compile compiles each trial's candidate, its reference only once
    ev = LatencyEvaluator(batch_size=1, repeats=2, warmup=1, runtime="compile")
    before = counters["stats"]["unique_graphs"]
    for i in range(2):
        ev(el, Candidate.make(el, mlp=40 + 8 * i))
    assert counters["stats"]["unique_graphs"] - before == 3  # two candidates, one reference


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(device="tpu"), "unknown device 'tpu'|unsupported device 'tpu'"),
        (dict(batch_size=0), "batch size must be at least 1"),
        (dict(threads=0), "threads must be at least 1"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(VitParetoError, match=message):
        LatencyEvaluator(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_where_there_is_none():
    with pytest.raises(VitParetoError, match="no CUDA GPU"):
        LatencyEvaluator(device="cuda")
    with pytest.raises(VitParetoError, match="no CUDA GPU"):
        LatencyEvaluator(device="cuda:1")


def test_unknown_or_unavailable_runtime():
    with pytest.raises(VitParetoError, match="unknown runtime 'openvino'"):
        LatencyEvaluator(runtime="openvino", repeats=2)
    if not torch.cuda.is_available():  # refused before any work, saying what is missing
        with pytest.raises(VitParetoError, match="cudagraphs.*CUDA GPUs only"):
            LatencyEvaluator(runtime="cudagraphs", repeats=2)
        with pytest.raises(VitParetoError, match="tensorrt"):
            LatencyEvaluator(runtime="tensorrt", repeats=2)


def test_an_attention_pool_exit_is_timed_by_the_tokens_it_sees(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(
        "test_vit", img_size=64, num_classes=10, class_token=False, global_pool="map"
    )
    pooled = ElasticViT(model).eval()
    space = JointSpace.from_dict(
        {
            "keep": {"blocks": [0], "choices": [0.3, 1.0]},
            "exits": {"blocks": [1], "threshold": [0.9]},
        },
        pooled,
    )
    pred = LatencyPredictor.cached(
        pooled, space, batch_size=2, cache_dir=tmp_path, repeats=3, calibrate=2, validate=2,
        progress=False,
    )  # fmt: skip
    assert len(pred.table["exit"]["head"]) > 1  # one point per token count on the grid
    # a known curve: the exit head's part of a segment is read at the exit's token count
    pred.table["exit"]["head"] = [[1, 0.0], [1000, 999.0]]
    pruned = Candidate.make(pooled, keep={0: 0.3}, exits=(1,), exit_threshold=0.9)
    static = pruned.replace(exits=())
    tokens = token_counts(pooled.spec, pruned)[1][1]
    exit_ms = pred.raw_segments(pruned)[-1] - pred.raw_segments(static)[-1]
    assert exit_ms == pytest.approx(tokens - 1.0)
