"""Accuracy under the early-exit policy: hand-checked metrics, the policy against the
dynamic forward, and determinism on digits with a tiny model trained here."""

from __future__ import annotations

import copy
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from vitpareto.evaluators import AccuracyEvaluator, exit_macs, exit_metrics, load_data
from vitpareto.spaces import Candidate, ElasticViT, VitParetoError, exit_assignment


def _log(probs) -> torch.Tensor:
    """Logits whose softmax is exactly ``probs`` (up to float rounding)."""
    return torch.tensor(probs, dtype=torch.float32).log()


# -- exit_metrics, by hand ---------------------------------------------------------------------
def test_exit_metrics_by_hand():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    exit0 = _log(
        [
            [0.90, 0.05, 0.05],  # conf 0.90 >= 0.8: leaves, predicts 0, right
            [0.85, 0.10, 0.05],  # conf 0.85: leaves, predicts 0, wrong
            [0.02, 0.03, 0.95],  # conf 0.95: leaves, predicts 2, right
            [0.50, 0.30, 0.20],  # conf 0.50 < 0.8: goes on (exit would predict 0, right)
            [0.60, 0.30, 0.10],  # conf 0.60: goes on (exit would predict 0, wrong)
            [0.20, 0.70, 0.10],  # conf 0.70: goes on (exit would predict 1, wrong)
        ]
    )
    final = _log(
        [
            [0.1, 0.8, 0.1],  # predicts 1, wrong (ignored: the sample left at exit 0)
            [0.1, 0.8, 0.1],  # predicts 1, right (ignored)
            [0.8, 0.1, 0.1],  # predicts 0, wrong (ignored)
            [0.8, 0.1, 0.1],  # predicts 0, right: counts
            [0.1, 0.8, 0.1],  # predicts 1, right: counts
            [0.1, 0.1, 0.8],  # predicts 2, right: counts
        ]
    )
    m = exit_metrics([exit0, final], labels, threshold=0.8, macs=[100, 250])
    assert m["accuracy"] == 5 / 6  # exit 0: right, wrong, right; final: right x3 -> 5 of 6
    assert m["top5"] is None  # only 3 classes
    assert m["final_accuracy"] == 4 / 6  # wrong, right, wrong, right, right, right
    assert m["exit_accuracy"] == [3 / 6, 4 / 6]  # exit 0: samples 0, 2, 3 right
    assert m["exit_fraction"] == [3 / 6, 3 / 6]  # samples 0-2 leave early, 3-5 reach the end
    assert m["expected_macs"] == 175.0  # 0.5 x 100 + 0.5 x 250
    assert m["samples"] == 6
    assert all(type(m[k]) is float for k in ("accuracy", "final_accuracy", "expected_macs"))
    assert json.loads(json.dumps(m)) == m


def test_exit_metrics_two_exits_and_top5():
    # 7 classes: top-5 counts; the label's rank in the chosen logits decides it
    labels = torch.tensor([6, 6, 0, 3])
    p = [0.4, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02]  # conf 0.4; ranks: class 0 first, class 6 last
    low = _log([p] * 4)
    exit0 = low.clone()
    exit0[0] = _log([0.01] * 6 + [0.94])  # sample 0 leaves at exit 0, predicts 6: right
    exit1 = low.clone()
    exit1[1] = _log([0.94, 0.02, 0.015, 0.01, 0.008, 0.005, 0.002])  # leaves, predicts 0: wrong
    final = low.clone()  # samples 2 and 3 reach the final head, predicting class 0
    m = exit_metrics([exit0, exit1, final], labels, 0.9, [10, 20, 40])
    assert m["exit_fraction"] == [0.25, 0.25, 0.5]
    assert m["accuracy"] == 2 / 4  # sample 0 right, 1 wrong, 2 right (0), 3 wrong (3)
    # top-5: sample 0 (rank 1) yes; 1: class 6 is 7th of exit 1's logits, no; 2 yes; 3 (rank 4) yes
    assert m["top5"] == 3 / 4
    assert m["exit_accuracy"] == [2 / 4, 1 / 4, 1 / 4]  # exit 0: samples 0, 2; exit 1: 2; final: 2
    assert m["expected_macs"] == 27.5  # 0.25 x 10 + 0.25 x 20 + 0.5 x 40


def test_exit_metrics_rejects_mismatches():
    logits = [torch.zeros(3, 4), torch.zeros(3, 4)]
    with pytest.raises(VitParetoError, match="MAC counts"):
        exit_metrics(logits, torch.zeros(3, dtype=torch.long), 0.5, [1])
    with pytest.raises(VitParetoError, match="shape"):
        exit_metrics(logits, torch.zeros(2, dtype=torch.long), 0.5, [1, 2])
    with pytest.raises(VitParetoError, match="no samples"):
        exit_metrics([torch.zeros(0, 4)], torch.zeros(0, dtype=torch.long), 0.5, [1])


# -- the policy against the dynamic forward ----------------------------------------------------
def test_policy_matches_forward_dynamic():
    torch.manual_seed(0)
    model = timm.create_model("test_vit", img_size=32, num_classes=10).eval()
    elastic = ElasticViT(copy.deepcopy(model), exit_blocks=(1, 3))
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base = Candidate.make(elastic, exits=(1, 3), mlp={2: 100}, keep={4: 0.5}, heads={5: 1})
    with torch.no_grad():
        outs = elastic.extract(base).eval().forward_exits(x)
        # threshold halfway between the two middle confidences of exit 0: half leave there
        conf = outs[0].softmax(-1).amax(-1).sort().values
        t = float(conf[15] + conf[16]) / 2
        c = base.replace(exit_threshold=t)
        model_c = elastic.extract(c).eval()
        logits, where = model_c.forward_dynamic(x)
        outs = model_c.forward_exits(x)
    assigned = exit_assignment(outs, t)
    assert torch.equal(where, assigned)
    assert int((where == 0).sum()) == 16 and len(set(where.tolist())) > 1
    chosen = torch.stack(outs)[where, torch.arange(len(x))]
    torch.testing.assert_close(logits, chosen, atol=1e-5, rtol=0)

    # the evaluator (batches from a plain list) counts the same exits as the dynamic forward
    labels = torch.arange(32) % 10
    loader = [(x[:20], labels[:20]), [x[20:], labels[20:]]]
    m = AccuracyEvaluator(loader)(elastic, c)
    assert m["exit_fraction"] == (torch.bincount(where, minlength=3) / 32).tolist()
    assert m["accuracy"] == float((logits.argmax(-1) == labels).float().mean())


def test_an_eager_dynamic_run_stops_when_every_sample_left():
    # the expected latency times an exit's prefix alone; an eager run must cost the same,
    # not dispatch the later blocks on no rows (the dynamo-exported graphs skip them too,
    # behind an If: test_deployed; only the TorchScript tracer keeps them)
    torch.manual_seed(0)
    elastic = ElasticViT(timm.create_model("test_vit", img_size=32, num_classes=10).eval())
    ran = []
    for threshold in (0.05, 1.0):  # 10 classes: everyone leaves after block 1; nobody does
        model = elastic.extract(Candidate.make(elastic, exits=(1,), exit_threshold=threshold))
        for i, blk in enumerate(model.eval().vit.blocks):
            blk.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
        ran.clear()
        with torch.no_grad():
            logits, where = model.forward_dynamic(torch.randn(4, 3, 32, 32))
        if threshold < 1:
            assert ran == [0, 1] and where.tolist() == [0] * 4  # blocks 0 and 1, no more
        else:
            assert ran == list(range(6)) and where.tolist() == [1] * 4


# -- a tiny model trained on digits ------------------------------------------------------------
def _train_digits(seed: int = 0) -> torch.nn.Module:
    """A 3-block test_vit trained 2 epochs on the digits train split (about 4 s on one core)."""
    data = load_data("digits", img_size=32, batch_size=64, seed=0)  # fresh, seeded order
    torch.manual_seed(seed)
    model = timm.create_model("test_vit", img_size=32, num_classes=10, depth=3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(2):
        for x, y in data.train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", img_size=32, batch_size=64, seed=0)


@pytest.fixture(scope="module")
def trained():
    return _train_digits()


def test_trained_digits_deterministic(trained, digits):
    elastic = ElasticViT(copy.deepcopy(trained), exit_blocks=(1,))
    c = Candidate.make(elastic, exits=(1,), exit_threshold=0.8)
    ev = AccuracyEvaluator(digits.val)
    first = ev(elastic, c)
    assert first == ev(elastic, c)
    assert first["final_accuracy"] > 0.5  # chance is 0.1
    assert first["samples"] == 360
    assert len(first["exit_accuracy"]) == len(first["exit_fraction"]) == 2
    assert math.isclose(sum(first["exit_fraction"]), 1.0)
    macs = exit_macs(elastic.spec, c)
    assert macs[0] <= first["expected_macs"] <= macs[1]
    assert 0.0 <= first["accuracy"] <= 1.0 and first["top5"] >= first["accuracy"]

    # per-batch counting equals the metrics of all logits at once
    model = elastic.extract(c).eval()
    with torch.inference_mode():
        outs = [model.forward_exits(x) for x, _ in digits.val]
    logits = [torch.cat(o) for o in zip(*outs, strict=True)]
    labels = torch.cat([y for _, y in digits.val])
    assert exit_metrics(logits, labels, 0.8, macs) == first

    # training again from the same seed gives the same model, hence the same metrics
    again = ElasticViT(copy.deepcopy(_train_digits()), exit_blocks=(1,))
    assert ev(again, c) == first

    # a threshold every softmax reaches (>= 1/10): everyone leaves at the exit
    m = ev(elastic, c.replace(exit_threshold=1e-6))
    assert m["exit_fraction"] == [1.0, 0.0]
    assert m["accuracy"] == m["exit_accuracy"][0] and m["expected_macs"] == macs[0]


def test_nobody_leaves_when_the_exit_cannot_be_confident(trained, digits):
    elastic = ElasticViT(copy.deepcopy(trained), exit_blocks=(1,))
    with torch.no_grad():  # a zero exit classifier: softmax is exactly 1/10 for every sample
        elastic.exit_heads["1"].head.weight.zero_()
        elastic.exit_heads["1"].head.bias.zero_()
    c = Candidate.make(elastic, exits=(1,), exit_threshold=0.5)
    m = AccuracyEvaluator(digits.val)(elastic, c)
    assert m["exit_fraction"] == [0.0, 1.0]
    assert m["accuracy"] == m["final_accuracy"] > 0.5
    assert m["expected_macs"] == exit_macs(elastic.spec, c)[1]
    # without exits the final head alone decides, at the same accuracy
    plain = AccuracyEvaluator(digits.val)(elastic, Candidate.full(elastic))
    assert plain["exit_fraction"] == [1.0] and plain["accuracy"] == m["accuracy"]


# -- the generic evaluator interface -----------------------------------------------------------
def test_generic_interface(trained, digits, capsys):
    elastic = ElasticViT(copy.deepcopy(trained), exit_blocks=(0, 1))
    c = Candidate.make(elastic, exits=(0, 1), exit_threshold=0.9, mlp=64)
    ev = AccuracyEvaluator(digits.val, max_batches=2, progress=True)
    assert ev.name == "accuracy"
    m = ev(elastic, c)
    assert tuple(m) == AccuracyEvaluator.keys
    assert m["samples"] == 128  # 2 batches of 64
    assert json.loads(json.dumps(m)) == m
    assert "accuracy" in capsys.readouterr().err  # the forced progress bar
    AccuracyEvaluator(digits.val, max_batches=1)(elastic, c)  # 1 batch: no bar by default
    assert capsys.readouterr().err == ""


def test_bad_loaders_and_settings(trained):
    elastic = ElasticViT(copy.deepcopy(trained), exit_blocks=(1,))
    c = Candidate.full(elastic)
    with pytest.raises(VitParetoError, match="no samples"):
        AccuracyEvaluator([])(elastic, c)
    with pytest.raises(VitParetoError, match=r"\(images, labels\) pairs"):
        AccuracyEvaluator([torch.zeros(2, 3, 32, 32)])(elastic, c)
    with pytest.raises(VitParetoError, match="max_batches"):
        AccuracyEvaluator([], max_batches=0)
