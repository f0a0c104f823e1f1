"""Importance criteria: each permutes a model without changing its function, is
deterministic for fixed calibration data, and the data-driven ones rank a trained model's
parts so that cutting the low-ranked ones costs less accuracy."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers.variants import VARIANTS, images, make_variant
from vitpareto.errors import VitParetoError
from vitpareto.search.supernet import SupernetTrainer
from vitpareto.spaces import (
    CRITERIA,
    BlockScores,
    Candidate,
    ElasticViT,
    compress,
    importance_scores,
    needs_data,
)

pytestmark = pytest.mark.slow  # training, ranking 17 variants

ATOL = 1e-5


def calibration(model, n=2, batch=3, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [
        (images(model, batch, seed + i), torch.randint(0, model.num_classes, (batch,), generator=g))
        for i in range(n)
    ]


@pytest.mark.parametrize("criterion", list(CRITERIA))
@pytest.mark.parametrize("key", list(VARIANTS))
def test_every_criterion_keeps_the_function_and_is_deterministic(key, criterion):
    model = make_variant(key)
    data = calibration(model)
    x = images(model)
    before = [p.detach().clone() for p in model.parameters()]
    orders = []
    for _ in range(2):
        elastic = ElasticViT(copy.deepcopy(model), criterion, data=data)
        full = Candidate.full(elastic.spec)
        torch.testing.assert_close(elastic(x, full), model(x), atol=ATOL, rtol=0)
        small = compress(model, full, criterion, data=data)
        torch.testing.assert_close(small(x), model(x), atol=ATOL, rtol=0)
        orders.append(elastic.orders)
    assert orders[0] == orders[1]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters()), "calibration left gradients"
    if needs_data(criterion):  # the ranking reads the data: other data, another ranking
        other = ElasticViT(copy.deepcopy(model), criterion, data=calibration(model, seed=9))
        assert other.orders != orders[0]


def test_data_driven_criteria_need_data_and_fitting_labels():
    model = make_variant("class_token")
    for criterion in ("taylor", "similarity", "attention"):
        with pytest.raises(VitParetoError, match="calibration data"):
            importance_scores(model, criterion)
    with pytest.raises(VitParetoError, match="unknown importance criterion 'fisher'"):
        importance_scores(model, "fisher")
    bad = [(images(model, 2), torch.tensor([3, 99]))]
    with pytest.raises(VitParetoError, match="do not fit the model's 10 classes"):
        importance_scores(model, "taylor", bad)
    with pytest.raises(VitParetoError, match="holds no batch"):
        importance_scores(model, "similarity", [])


@pytest.fixture(scope="module")
def trained(plain_net):
    """test_vit (2 heads, MLP 192, 6 blocks) trained normally on digits for a minute."""
    return SupernetTrainer.resume(plain_net)


def _accuracy(model, loader) -> float:
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x).argmax(-1) == y).sum()) for x, y in loader)
    return right / len(loader.dataset)


def test_taylor_ranks_a_trained_model_better_than_its_reverse(trained):
    """Half the heads and half the MLP channels cut, no fine-tuning: keeping the parts
    taylor ranks first beats keeping those it ranks last, and is no worse than magnitude
    by more than MARGIN."""
    MARGIN = 0.05
    vit = trained.elastic.vit
    s = trained.elastic.spec
    assert trained.history[-1]["full_accuracy"] >= 0.9
    calib = list(trained.data.train)[:8]
    cut = Candidate.make(s, heads=s.num_heads // 2, mlp=s.mlp_hidden[0] // 2)
    scores = importance_scores(vit, "taylor", calib)
    reverse = [BlockScores(-b.heads, -b.qk, -b.mlp) for b in scores]
    acc = {
        "taylor": _accuracy(compress(vit, cut, scores), trained.data.val),
        "reverse": _accuracy(compress(vit, cut, reverse), trained.data.val),
        "magnitude": _accuracy(compress(vit, cut, "magnitude"), trained.data.val),
    }
    for name in ("similarity", "attention"):  # run on a trained model, reported on failure
        acc[name] = _accuracy(compress(vit, cut, name, data=calib), trained.data.val)
    assert acc["taylor"] > acc["reverse"] + 0.05, acc
    assert acc["taylor"] >= acc["magnitude"] - MARGIN, acc
