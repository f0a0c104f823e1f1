"""The cost evaluator: MACs and parameters of a candidate, from shapes or measured by fvcore."""

from __future__ import annotations

from typing import Any

from vitpareto.evaluators._base import Evaluator
from vitpareto.evaluators._cost import analytic_macs, count_macs, count_params
from vitpareto.spaces import Candidate, ElasticViT


class CostEvaluator(Evaluator):
    """``macs`` (one image, the static forward) and ``params`` of the compressed model.

    By default MACs come from the analytic formula (no tracing, milliseconds);
    ``fvcore=True`` traces the compressed model instead (the two agree exactly).
    """

    name = "cost"
    keys = ("macs", "params")

    def __init__(self, fvcore: bool = False):
        self.fvcore = fvcore

    def evaluate(
        self, elastic: ElasticViT, candidate: Candidate, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        model = elastic.extract(candidate)
        if self.fvcore:
            macs = count_macs(model, elastic.spec.img_size)
        else:
            macs = analytic_macs(elastic.spec, candidate)
        return {"macs": int(macs), "params": count_params(model)}
