"""The deployed latency of exported models: measured at export, and again wherever the
user copies them (``vitpareto bench``).

Each model is timed as it ships for the runtime (its ``model.onnx`` for ONNX Runtime; the
exit policy where it has exits and the runtime runs it), interleaved with the full model
built from the same recipe and exported the same way (random weights: latency does not
depend on weight values). The figures go beside the search's own: where the two differ by
more than the measurement's spread, the export says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vitpareto.bounds import check_input
from vitpareto.errors import VitParetoError
from vitpareto.evaluators import (
    INT8,
    check_runtime,
    first_images,
    load_data,
    prepare,
    resolve_device,
    time_deployed,
)
from vitpareto.files import file_sha256
from vitpareto.search.outputs._manifest import verify_dir
from vitpareto.search.outputs._modeldir import METRICS, load_model, read_config
from vitpareto.search.outputs._schemas import Metrics, read_json
from vitpareto.spaces import HALF, Candidate, ElasticViT, check_recipe, create_model

KEYS = {  # metrics.json key -> time_deployed's
    "deployed_latency_ms": "latency_ms",
    "deployed_iqr_ms": "latency_iqr_ms",
    "deployed_speedup": "speedup",
    "deployed_method": "latency_method",
    "deployed_runtime": "runtime",
    "deployed_batch": "batch_size",
    "deployed_fingerprint": "device_fingerprint",
}


def full_model(recipe: dict) -> torch.nn.Module:
    """The uncompressed model of a recipe, as a compressed model with nothing removed."""
    name, kwargs = check_recipe(recipe, "the model recipe")
    vit = create_model(name, pretrained=False, **kwargs).eval()
    return ElasticViT(vit, importance="identity").extract(Candidate.full(vit)).eval()


def image_size(model) -> tuple[int, int]:
    """Input height and width of a compressed model."""
    return tuple(model.vit.patch_embed.img_size)


def image_shape(model) -> tuple[int, int, int]:
    """Input channels, height and width of a compressed model."""
    return (model.vit.patch_embed.proj.in_channels, *image_size(model))


def measure_deployed(
    model,
    reference,
    runtime: str,
    batch: int,
    device: str = "cpu",
    images: torch.Tensor | None = None,
    exit_fraction: list[float] | None = None,
    onnx: str | None = None,
    repeats: int = 20,
    prepared: dict | None = None,
) -> dict[str, Any]:
    """``model``'s deployed latency against the full ``reference``: metrics.json's keys.
    ``prepared``: a dict kept between calls, where the reference prepared for the runtime
    is kept (under ONNX Runtime, exporting it takes longer than timing it)."""
    dev = resolve_device(device)
    check_runtime(runtime, dev)
    check_input(batch, image_shape(model))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *image_shape(model), generator=g).to(dev)
    key = (id(reference), runtime, batch, str(dev))
    cache = {} if prepared is None else prepared
    if key not in cache:
        cache[key] = (reference, prepare(reference.to(dev), x, runtime))  # keeps it alive
    ref = cache[key][1]
    settings = dict(repeats=repeats, warmup=3, max_rel_iqr=0.10, max_attempts=3)
    got = time_deployed(model.to(dev), ref, x, runtime, settings, images, exit_fraction, onnx)
    return {k: got[v] for k, v in KEYS.items()}


def disagreement(metrics: dict[str, Any]) -> str | None:
    """Why the deployed figure differs from the search's, when it does: another runtime,
    or a speedup over the full model that moved by more than the two measurements'
    relative spread (at least 5%). Speedups, not milliseconds, are compared: each is timed
    interleaved with the full model, so a machine slower or faster as a whole moves both
    models alike."""
    searched, deployed = metrics.get("speedup"), metrics.get("deployed_speedup")
    if searched is None or deployed is None:
        return None
    if metrics.get("runtime", "eager") != metrics["deployed_runtime"]:
        return (
            f"searched under {metrics.get('runtime')}, deployed under {metrics['deployed_runtime']}"
        )
    spread = max(
        0.05,
        _relative(metrics, "latency_iqr_ms", "latency_ms")
        + _relative(metrics, "deployed_iqr_ms", "deployed_latency_ms"),
    )
    if abs(deployed / searched - 1) <= spread:
        return None
    why = "predicted" if metrics.get("latency_predicted") else "measured"
    return (
        f"deployed speedup {deployed:.2f}x against {searched:.2f}x {why} by the search "
        f"({deployed / searched - 1:+.0%}, beyond the measurements' spread of {spread:.0%}; "
        f"{metrics.get('deployed_latency_ms', 0):.3f} ms against {metrics.get('latency_ms', 0):.3f} ms)"
    )


def _relative(metrics: dict[str, Any], iqr: str, median: str) -> float:
    """A measurement's interquartile range over its median (0 where unknown)."""
    m = metrics.get(median)
    return (metrics.get(iqr) or 0.0) / m if m else 0.0


def validation_images(
    spec: str | None, shape: tuple[int, int, int], batch: int
) -> torch.Tensor | None:
    """The validation images of a dataset spec an exit policy is timed on (None without
    one), with ``shape``'s channels and size."""
    if spec is None:
        return None
    data = load_data(spec, shape[1:], batch_size=128, channels=shape[0])
    return first_images(data.val, batch)


def bench_dirs(
    dirs: list[Path],
    runtime: str | None = None,
    batch: int | None = None,
    device: str = "cpu",
    dataset: str | None = None,
    repeats: int = 20,
    trust: bool = False,
) -> list[dict[str, Any]]:
    """Each exported directory timed as it ships (see the module), and the full model;
    every directory checked (``check_dirs``) before any is timed."""
    rows, full, prepared, references = [], None, {}, {}
    for d, (cfg, stored, model) in zip(dirs, check_dirs(dirs, runtime, trust), strict=True):
        rt = runtime or stored.get("deployed_runtime") or stored.get("runtime") or "eager"
        b = batch or stored.get("deployed_batch") or stored.get("batch_size") or 1
        model = model.to(resolve_device(device))
        recipe = json.dumps(cfg["model"], sort_keys=True)
        if recipe not in references:  # one full model per recipe, for every directory of it
            references[recipe] = full_model(cfg["model"])
        reference = references[recipe]
        images = validation_images(dataset, image_shape(model), b)
        onnx = Path(d) / "model.onnx"
        got = measure_deployed(
            model, reference, rt, b, device, images, stored.get("exit_fraction"),
            str(onnx) if onnx.exists() else None, repeats, prepared,
        )  # fmt: skip
        rows.append({"model": str(d), **got, "searched_ms": stored.get("latency_ms")})
        full = full or (reference, rt, b)
    if full is not None:
        reference, rt, b = full
        rows.append(
            {
                "model": "full model",
                **measure_deployed(reference, reference, rt, b, device, prepared=prepared),
            }
        )
        rows[-1]["searched_ms"] = None
    return rows


def format_bench(rows: list[dict[str, Any]]) -> str:
    head = ("model", "runtime", "batch", "method", "ms", "IQR ms", "speedup", "searched ms")
    body = [
        (
            r["model"],
            r["deployed_runtime"],
            str(r["deployed_batch"]),
            r["deployed_method"],
            f"{r['deployed_latency_ms']:.3f}",
            f"{r['deployed_iqr_ms']:.3f}",
            f"{r['deployed_speedup']:.2f}x",
            "-" if r["searched_ms"] is None else f"{r['searched_ms']:.3f}",
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    fp = rows[0]["deployed_fingerprint"] if rows else {}
    where = f"{fp.get('gpu') or fp.get('cpu', '?')} ({fp.get('threads', '?')} threads)"
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body), "", where])


def check_dirs(
    dirs: list[Path], runtime: str | None = None, trust: bool = False
) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
    """Each directory's config, metrics and model (on the CPU), once all are checked
    before any is timed: every file against the manifest (unless ``trust``), config.json
    and metrics.json against their schemas, the model built and its weights loaded,
    model.onnx a regular file, and an int8 model refused under a runtime that cannot run
    its quantized file."""
    checked = []
    for d in dirs:
        d = Path(d)
        if not (d / METRICS).is_file():
            raise VitParetoError(f"{str(d)!r} is not an exported model directory (no {METRICS})")
        verify_dir(d, trust)
        cfg = read_config(d)
        stored = read_json(d / METRICS, Metrics, "metrics file").model_dump(exclude_none=True)
        if (d / "model.onnx").exists():
            file_sha256(d / "model.onnx")  # a FIFO or a device would hang the runtime
        precision = cfg["candidate"].get("precision", "fp32")
        if precision in INT8 and (runtime or "onnxruntime") != "onnxruntime":
            raise VitParetoError(
                f"{str(d)!r} ships a {precision} model.onnx, which runs under --runtime "
                f"onnxruntime, not {runtime}"
            )
        if precision in HALF and runtime == "onnxruntime":
            raise VitParetoError(
                f"{str(d)!r} ships a {precision} model (its model.onnx is float32): time it "
                "under --runtime eager or compile"
            )
        checked.append((cfg, stored, load_model(d, "cpu", trust=True)))  # checked just now
    return checked
