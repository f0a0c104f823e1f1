"""Latency predictor: a per-device lookup table of measured block-part latencies.

Built once per device, model shape, batch size and search space: the patch embedding
and head for every patch size, the attention branch for every (heads, q/k width) the
space can produce (with and without token pruning or merging, with and without merged
tokens' sizes coming in) and the MLP branch for every width,
each measured on a grid of token counts and interpolated between them. A candidate's
latency is the sum of its parts, corrected by a line fitted to whole candidates measured
for real; the error is then measured on further held-out candidates and stated with the
table (as nn-Meter does for kernels, here for transformer blocks).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vitpareto.errors import VitParetoError
from vitpareto.evaluators._base import Evaluator
from vitpareto.evaluators._latency import expected_latency
from vitpareto.evaluators._parts import StoredSpec, attn_kinds, block_part, part_shapes, spec_dict
from vitpareto.evaluators._runtime import check_runtime, prepare
from vitpareto.evaluators._timing import (
    device_fingerprint,
    resolve_device,
    time_calls,
    time_interleaved,
)
from vitpareto.files import atomic_write
from vitpareto.spaces import Candidate, ElasticViT, JointSpace, key_design, token_counts

FORMAT = 3  # bumped when tables built before would predict wrongly


def sample_candidates(space: JointSpace, n: int, seed: int) -> list[Candidate]:
    """``n`` distinct random candidates of a bound space (fewer if the space is smaller)."""
    rng = random.Random(seed)
    params = space.params()
    seen: dict[Candidate, None] = {}
    for _ in range(n * 20):
        seen.setdefault(space.decode({k: rng.choice(v) for k, v in params.items()}))
        if len(seen) >= n:
            break
    return list(seen)


class LatencyPredictor:
    """Predicts a candidate's milliseconds per batch on the device the table was built on."""

    def __init__(self, table: dict[str, Any]):
        if table.get("format") != FORMAT:
            raise VitParetoError("latency table has an unknown format; rebuild it")
        self.table = table
        self.error = float(table["error"])  # 90% of held-out predictions were within +-error
        self.mape = float(table["mape"])

    # -- prediction ---------------------------------------------------------------------------
    def _curve(self, kind: str, key: str, n: int) -> float:
        points = self.table[kind].get(key)
        if points is None:
            raise VitParetoError(
                f"the latency table has no {kind} entry for {key}; it was built for another "
                "search space: rebuild it for this one"
            )
        xs, ys = zip(*points, strict=True)
        return float(np.interp(n, xs, ys))

    def raw_segments(self, c: Candidate) -> list[float]:
        """Sum of parts up to each route (each cascade stage, whole; then each exit), then
        for the whole model (uncalibrated); a later route includes every stage before."""
        stages = list(itertools.accumulate(self.raw_segments(c.stage(p))[-1] for p in c.cascade))
        before = stages[-1] if stages else 0.0
        return stages + [before + t for t in self._exit_segments(c)]

    def _exit_segments(self, c: Candidate) -> list[float]:
        t = self.table
        if str(c.patch_size) not in t["base"]:
            raise VitParetoError(f"the latency table has no patch size {c.patch_size}; rebuild it")
        total = t["base"][str(c.patch_size)]
        cumulative = []
        kinds = attn_kinds(c)
        counts = token_counts(StoredSpec(t["spec"]), c)
        for i, (n_attn, n_mlp) in enumerate(counts):
            if c.heads[i]:
                kind = kinds[i]
                total += self._curve(kind, f"{c.heads[i]},{c.qk_dim[i]}", n_attn)
            if c.mlp[i]:
                total += self._curve("mlp", str(c.mlp[i]), n_mlp)
            cumulative.append(total)
        # an exit head's time by the tokens it sees (an attention pool's grows with them)
        heads = np.cumsum(
            [0.0]
            + [
                self._curve("exit", exit_curve(b, t), counts[b][1])
                for b, t in zip(c.exits, c.exit_types, strict=True)
            ]
        )
        exits = [cumulative[b] + heads[j + 1] for j, b in enumerate(c.exits)]
        return exits + [total + heads[-1]]

    def predict_segments(self, c: Candidate) -> list[float]:
        a, b = self.table["calibration"]
        return [a * r + b for r in self.raw_segments(c)]

    def predict(self, c: Candidate) -> float:
        """Milliseconds per batch of ``c``'s static forward (every block run)."""
        return self.predict_segments(c)[-1]

    # -- storage ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        atomic_write(path, json.dumps(self.table, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyPredictor:
        try:
            return cls(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise VitParetoError(f"cannot read latency table {str(path)!r}: {e}") from None

    @staticmethod
    def key(
        elastic: ElasticViT, space: JointSpace, device: str, batch_size: int, runtime: str = "eager"
    ) -> str:
        """Identifies a table: device fingerprint, model shape, batch size, space, runtime."""
        fp = device_fingerprint(resolve_device(device))
        blob = json.dumps(
            [fp, repr(elastic.spec), batch_size, space.to_dict(), FORMAT]
            + ([runtime] if runtime != "eager" else []),  # eager tables keep their names
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def cached(
        cls,
        elastic: ElasticViT,
        space: JointSpace,
        device: str = "cpu",
        batch_size: int = 1,
        cache_dir: str | os.PathLike = "results/latency",
        runtime: str = "eager",
        **build_kwargs,
    ) -> LatencyPredictor:
        """The table for this device, model, batch size, space and runtime: loaded if built
        before."""
        key = cls.key(elastic, space, device, batch_size, runtime)
        path = Path(cache_dir) / f"{key}.json"
        if path.exists():
            return cls.load(path)
        predictor = cls.build(elastic, space, device, batch_size, runtime=runtime, **build_kwargs)
        predictor.save(path)
        return predictor

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        elastic: ElasticViT,
        space: JointSpace,
        device: str = "cpu",
        batch_size: int = 1,
        grid: int = 8,
        repeats: int = 10,
        calibrate: int = 8,
        validate: int = 10,
        seed: int = 0,
        progress: bool = True,
        runtime: str = "eager",
    ) -> LatencyPredictor:
        """Measure the parts, fit the correction on ``calibrate`` whole candidates and state
        the error on ``validate`` others (all drawn from ``space``); every part and whole
        candidate is timed under ``runtime`` (for ONNX Runtime, each as its own graph)."""
        check_runtime(runtime, device)
        dev = resolve_device(device)
        spec = elastic.spec
        space = space.bind(elastic)
        pool = sample_candidates(space, 400, seed)
        # a GPU's latency steps with the token count (kernels work in tiles), so there every
        # count that occurs is measured; on a CPU it is smooth and a grid is interpolated
        # the full model too, whatever the space: it is every search's reference
        shapes = part_shapes(spec, [Candidate.full(spec), *pool], grid, exact=dev.type == "cuda")
        chosen = random.Random(seed + 1).sample(pool, min(len(pool), calibrate + validate))
        # calibrated and checked on static forwards: a cascade's stages are parts summed
        chosen = [c.replace(cascade=()) for c in chosen]
        cal, val = chosen[:calibrate], chosen[calibrate:]
        images = torch.randn(batch_size, *spec.image_shape, device=dev)

        # every part, every whole candidate and the full model, timed in one interleaved
        # loop: load that changes while the table is built shifts them all alike
        calls = _part_calls(elastic, shapes, batch_size, images, runtime, dev)
        for i, c in enumerate([Candidate.full(spec), *cal]):
            whole = elastic.extract(c).eval().to(dev)
            calls[f"whole|{i}"] = partial(prepare(whole, images, runtime), images)
        with tqdm(
            total=repeats, desc="latency table", disable=None if progress else True, file=sys.stderr
        ) as bar:
            times = time_calls(calls, dev, repeats, 2, seed, progress=lambda r: bar.update(1))
        ms = {k: statistics.median(v) for k, v in times.items()}

        table = _curves(ms, shapes["kinds"])
        whole = [ms[f"whole|{i}"] for i in range(len(cal) + 1)]
        table.update(
            format=FORMAT,
            spec=spec_dict(spec),
            fingerprint=device_fingerprint(dev),
            batch_size=batch_size,
            runtime=runtime,
            reference_ms=whole[0],
            calibration=[1.0, 0.0],
            error=0.0,
            mape=0.0,
        )
        predictor = cls(table)
        # one scale factor (median of measured / summed): what whole models add to their
        # parts (dispatch between blocks, cache effects) grows with their size; a fitted
        # line would chase measurement noise when candidates differ little in latency
        ratios = [t / predictor.raw_segments(c)[-1] for c, t in zip(cal, whole[1:], strict=False)]
        table["calibration"] = [float(statistics.median(ratios)) if ratios else 1.0, 0.0]
        predictor = cls(table)
        # the error is stated on candidates measured in two sessions of their own, as a
        # user's later measurements would be: it then includes how much a measurement moves
        # from one session to the next, not only how well the table fits
        errors = []
        for _ in range(2):
            checked = measure_candidates(
                elastic, val, batch_size, str(dev), repeats, reference_ms=whole[0], runtime=runtime
            )
            errors += [abs(predictor.predict(c) - t) / t for c, t in zip(val, checked, strict=True)]
        if errors:
            table["error"] = float(np.quantile(errors, 0.9))
            table["mape"] = float(np.mean(errors))
        return cls(table)


def measure_candidates(
    elastic: ElasticViT,
    cands: list[Candidate],
    batch_size: int,
    device: str = "cpu",
    repeats: int = 10,
    reference_ms: float | None = None,
    runtime: str = "eager",
) -> list[float]:
    """Measured milliseconds per batch of each candidate, interleaved with the full model.

    With ``reference_ms`` (the full model's time when a table was built) the figures are
    rescaled by how much slower or faster the full model runs now than then: a check of a
    table against fresh measurements that machine load drift does not skew.
    """
    dev = resolve_device(device)
    images = torch.randn(batch_size, *elastic.spec.image_shape, device=dev)
    models = {str(i): elastic.extract(c).eval().to(dev) for i, c in enumerate(cands)}
    models["full"] = elastic.extract(Candidate.full(elastic.spec)).eval().to(dev)
    fns = {k: prepare(m, images, runtime) for k, m in models.items()}
    times = time_interleaved(fns, images, repeats=repeats, warmup=2)
    scale = 1.0 if reference_ms is None else reference_ms / statistics.median(times["full"])
    return [statistics.median(times[str(i)]) * scale for i in range(len(cands))]


class PredictedLatencyEvaluator(Evaluator):
    """Latency from a ``LatencyPredictor`` instead of a measurement: the search's fast first
    pass. Reports the same keys as ``LatencyEvaluator`` where they apply, plus the error the
    table states; ``latency_predicted`` marks the figure as a prediction."""

    name = "latency_predicted"
    keys = (
        "latency_ms",
        "exit_latency_ms",
        "speedup",
        "latency_error",
        "latency_predicted",
        "runtime",
    )

    def __init__(self, predictor: LatencyPredictor):
        self.predictor = predictor

    def evaluate(
        self, elastic: ElasticViT, candidate: Candidate, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:

        seg = self.predictor.predict_segments(candidate)
        expected = expected_latency(seg, (context or {}).get("exit_fraction"))
        reference = self.predictor.predict(Candidate.full(elastic.spec))
        return {
            "latency_ms": expected,
            "exit_latency_ms": seg if candidate.routes else None,
            "speedup": reference / expected,
            "latency_error": self.predictor.error,
            "latency_predicted": True,
            "runtime": self.predictor.table.get("runtime", "eager"),
        }


def exit_curve(block: int, design: str) -> str:
    """The latency table's curve for an exit of ``design`` after ``block``: ``head`` for
    the linear one (as tables have always named it), the design's name for the others but
    the attention one, a copy of the next block, timed per block."""
    return {"linear": "head", "attention": f"attention.{block}"}.get(design, design)


def _part_calls(elastic, shapes, batch_size, images, runtime, dev) -> dict[str, Any]:
    """What the latency table times, by key: each block part (attention of each kind and
    shape, MLP) on each token count, the patch embedding and head by patch size, and each
    exit design on the token counts it reads, each prepared for ``runtime``."""
    spec = elastic.spec
    calls: dict[str, Any] = {}
    block = elastic.vit.blocks[0]
    parts: dict[str, torch.nn.Module] = {}
    for h, dq in shapes["attn"]:
        for kind in shapes["kinds"]:
            parts[f"{kind}|{h},{dq}"] = block_part(block, spec, h, dq, 0, kind, dev)
    for m in shapes["mlp"]:
        parts[f"mlp|{m}"] = block_part(block, spec, 0, spec.head_dim, m, "attn", dev)
    for n in shapes["grid"]:
        x = torch.randn(batch_size, n, spec.embed_dim, device=dev)
        sized = torch.cat([x, torch.full_like(x[..., :1], 2.0)], dim=-1)
        for name, part in parts.items():
            inp = sized if part.size_in else x
            calls[f"{name}|{n}"] = partial(prepare(part, inp, runtime), inp)
    for p in shapes["patch"]:
        empty = Candidate.full(spec).replace(
            patch_size=p, heads=(0,) * spec.depth, mlp=(0,) * spec.depth
        )
        base = elastic.extract(empty).eval().to(dev)
        calls[f"base|{p}"] = partial(prepare(base, images, runtime), images)
    # each design held, by the tokens it reads: a pooled linear or mlp exit costs the
    # same on any count (an attention pool's does not), a conv exit reads a full grid
    grids = [(spec.img_size[0] // p) * (spec.img_size[1] // p) for p in shapes["patch"]]
    timed = set()
    for key in elastic.exit_heads:
        b, t = int(key.split("_")[0]), key_design(key)
        if t in timed:
            continue  # only an attention exit (a copy of the next block) differs by block
        timed |= {t} - {"attention"}
        ns = shapes["grid"] if t == "attention" or spec.attn_pool else shapes["grid"][-1:]
        ns = [n + spec.num_prefix_tokens for n in grids] if t == "conv" else ns
        head = elastic.exit_heads[key].to(dev).eval()
        for n in ns:
            x = torch.randn(batch_size, n, spec.embed_dim, device=dev)
            calls[f"exit|{exit_curve(b, t)}|{n}"] = partial(prepare(head, x, runtime), x)
    return calls


def _curves(ms: dict[str, float], kinds) -> dict[str, Any]:
    """The latency table's curves (milliseconds by token count, per part and shape) and
    base costs (by patch size), from the timed calls' medians."""
    curves = ("attn", "attn_select", *kinds, "mlp", "exit")
    table: dict[str, Any] = {kind: {} for kind in (*curves, "base")}
    for key, t in ms.items():
        kind, *rest = key.split("|")
        if kind in curves:
            table[kind].setdefault(rest[0], []).append([int(rest[1]), t])
        elif kind == "base":
            table["base"][rest[0]] = t
    for kind in curves:
        for points in table[kind].values():
            points.sort()
    return table
