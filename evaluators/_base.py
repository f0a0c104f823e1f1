"""The one interface every evaluator shares: a candidate on an elastic model in, metrics out."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from vitpareto.spaces import Candidate, ElasticViT


class Evaluator(abc.ABC):
    """Scores a candidate cut from an ``ElasticViT``.

    ``evaluate`` returns a flat dict of JSON-serialisable metrics whose keys are listed
    in ``keys``; the search stores them as trial attributes and picks objectives from
    them. Evaluators hold their own settings (data, device, batch size) so that the
    search can treat them alike. ``context`` holds the metrics of evaluators run before
    on the same candidate (the latency evaluator reads the measured exit distribution).
    """

    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def evaluate(
        self, elastic: ElasticViT, candidate: Candidate, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Metrics of ``candidate`` (validated against ``elastic``)."""

    def __call__(
        self, elastic: ElasticViT, candidate: Candidate, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        candidate.validate(elastic)
        return self.evaluate(elastic, candidate, context)
