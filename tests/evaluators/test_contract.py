"""One contract, run against every evaluator: a candidate in, exactly the declared metrics out."""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch

from vitpareto.evaluators import (
    AccuracyEvaluator,
    CostEvaluator,
    Evaluator,
    LatencyEvaluator,
    LatencyPredictor,
    PredictedLatencyEvaluator,
    load_data,
)
from vitpareto.spaces import Candidate, ElasticViT, JointSpace, VitParetoError


@pytest.fixture(scope="module")
def elastic():
    torch.manual_seed(0)
    return ElasticViT(copy.deepcopy(timm.create_model("test_vit", img_size=32, num_classes=10)))


def _predicted(elastic):
    space = JointSpace.from_dict({"heads": [1, 2], "keep": {"blocks": [2], "choices": [0.5, 1.0]}})
    return PredictedLatencyEvaluator(
        LatencyPredictor.build(
            elastic, space, batch_size=2, repeats=3, calibrate=2, validate=2, progress=False
        )
    )


FACTORIES = {
    "cost": lambda el: CostEvaluator(),
    "cost_fvcore": lambda el: CostEvaluator(fvcore=True),
    "accuracy": lambda el: AccuracyEvaluator(load_data("digits", 32, batch_size=128).val),
    "latency": lambda el: LatencyEvaluator(batch_size=2, repeats=3, warmup=1),
    "latency_predicted": _predicted,
}


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_every_evaluator_keeps_the_contract(kind, elastic):
    ev = FACTORIES[kind](elastic)
    assert isinstance(ev, Evaluator) and ev.name
    cand = Candidate.make(elastic, heads={0: 1}, keep={2: 0.5}, exits=(1,), exit_threshold=0.5)
    metrics = ev(elastic, cand, {"exit_fraction": [0.25, 0.75]})
    assert set(metrics) == set(ev.keys)
    assert json.loads(json.dumps(metrics)) == metrics  # storable as trial attributes as is
    bad = cand.replace(heads=(9,) * 6)
    with pytest.raises(VitParetoError, match=r"heads\[0\]=9 is out of range"):
        ev(elastic, bad)
