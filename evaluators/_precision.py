"""Precision in the deployed artifact: int8 by ONNX Runtime's own quantization tools.

A candidate's ``precision`` is applied to the file that ships, never simulated: its ONNX
graph is exported as for float32, then quantized by ``onnxruntime.quantization``
(``int8-dynamic``: weights to int8, activations quantized on the fly; ``int8-static``:
weights and activations, the activations' ranges calibrated on training images, in the
QDQ format ONNX Runtime fuses into int8 kernels). The accuracy of an int8 candidate is its
quantized graph's on the validation images, in an ONNX Runtime session; its latency is
that graph's, timed as every artifact is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn

from vitpareto.errors import VitParetoError
from vitpareto.spaces import HALF, PRECISIONS, weights_sha256

INT8 = ("int8-dynamic", "int8-static")
RUNS = {  # what each runtime runs; bf16 and fp16 only where the device computes them natively
    "onnxruntime": ("fp32", *INT8),
    "eager": ("fp32", *HALF),
    "compile": ("fp32", *HALF),
    "cudagraphs": ("fp32", *HALF),
    "tensorrt": ("fp32", *HALF),
}
CALIBRATION_IMAGES = 64  # training images an int8-static candidate's ranges are set on
KEPT = 2  # quantized graphs kept in memory for the latency that follows their accuracy
_kept: OrderedDict[str, bytes] = OrderedDict()


def check_precision(precisions, runtime: str, device: str = "cpu") -> tuple[str, ...]:
    """The precisions a search may try, checked against the runtime that runs them and the
    device it runs on (``device``: where latency is timed); one they cannot run is
    refused, with what can, before any work."""
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",") if p.strip()]
    precisions = tuple(precisions)
    if not precisions or len(set(precisions)) != len(precisions):
        raise VitParetoError(
            f"--precision needs distinct precisions among {', '.join(PRECISIONS)}, got "
            f"{','.join(precisions) or 'none'}"
        )
    for p in precisions:
        if p not in PRECISIONS:
            raise VitParetoError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
        if p not in RUNS.get(runtime, ("fp32",)):
            raise VitParetoError(
                f"precision {p!r} does not run under --runtime {runtime}: {_fix(p)}"
            )
        why = native_half(p, device)
        if why:
            raise VitParetoError(f"precision {p!r} does not run natively here: {why}")
    return precisions


def _fix(precision: str) -> str:
    if precision in INT8:
        return (
            "int8 is ONNX Runtime's quantization of the exported graph; add --runtime onnxruntime"
        )
    return (
        "bf16 and fp16 are the PyTorch model's own weights and activations; use --runtime "
        "eager, compile or (on CUDA) cudagraphs"
    )


def native_half(precision: str, device: str = "cpu") -> str | None:
    """Why ``precision`` (bf16 or fp16) would not run natively on ``device``, or None: a
    CPU emulating it in float32 would time a model slower than the full one and mislead.
    On CUDA the target's own GPU decides (checked where it runs)."""
    if precision not in HALF or str(device).startswith("cuda"):
        return None
    if precision == "bf16" and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    ):
        return None
    if precision == "fp16" and torch.cpu._is_amx_fp16_supported():
        return None
    need = "AVX512-BF16 or AMX" if precision == "bf16" else "AMX-FP16"
    return f"this CPU has no {need} instructions; search it on a CUDA device (--device cuda)"


def precision_of(model: nn.Module) -> str:
    """The precision of a compressed model (or of its exit policy): its candidate's."""
    inner = getattr(model, "model", model)
    candidate = getattr(inner, "candidate", None) or getattr(model, "candidate", None)
    return getattr(candidate, "precision", "fp32")


def graph_key(model: nn.Module) -> str:
    """What a quantized graph of ``model`` depends on: its candidate and every weight (an
    exit policy and the model it wraps have the same key)."""
    inner = getattr(model, "model", model)
    return repr(getattr(inner, "candidate", None)) + weights_sha256(inner.state_dict())


def keep_graph(model: nn.Module, path) -> None:
    """Keep the quantized graph at ``path`` (the one ``model``'s accuracy was measured on)
    for ``kept_graph``: the latency measured next times that very file instead of
    exporting and quantizing the model a second time."""
    with open(path, "rb") as f:
        _kept[graph_key(model)] = f.read()
    while len(_kept) > KEPT:
        _kept.popitem(last=False)


def kept_graph(model: nn.Module) -> bytes | None:
    """The quantized graph last kept for ``model`` (same candidate, same weights), if any."""
    if precision_of(model) not in INT8 or not _kept:
        return None
    return _kept.get(graph_key(model))


def quantize_onnx(src, dst, precision: str, calibration: torch.Tensor | None = None) -> None:
    """Write ``src``'s graph quantized to ``precision`` into ``dst``; ``calibration``: the
    images an ``int8-static`` graph's activation ranges are set on (training images)."""
    from onnxruntime.quantization import (  # optional: checked with the runtime
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if precision not in INT8:
        raise VitParetoError(f"precision {precision!r} is not an int8 one ({', '.join(INT8)})")
    with _quiet():
        if precision == "int8-dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
            return
        if calibration is None or len(calibration) == 0:
            raise VitParetoError("int8-static needs calibration images (training images)")
        batches = [{"images": b.detach().cpu().numpy().astype(np.float32)}
                   for b in calibration.split(16)]  # fmt: skip

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.left = iter(batches)

            def get_next(self):
                return next(self.left, None)

        with tempfile.TemporaryDirectory() as tmp:
            pre = os.path.join(tmp, "pre.onnx")
            # shapes inferred (ONNX's own inference: the symbolic one fails on an exit
            # policy's data-dependent row gathers)
            quant_pre_process(str(src), pre, skip_symbolic_shape=True)
            quantize_static(
                pre, str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
            )  # fmt: skip


def calibration_images(loader, n: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """The first ``n`` images of the training ``loader``'s dataset, in the dataset's own
    order: the same images for the search, its front and export, whatever the batch size
    or shuffling."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and len(dataset) > 0:
        return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])
    return head_images(loader, n)


def head_images(loader, n: int) -> torch.Tensor:
    """The first ``n`` images ``loader`` yields (fewer when it holds fewer), in one tensor."""
    chunks, got = [], 0
    for x, _ in loader:
        chunks.append(x)
        got += len(x)
        if got >= n:
            break
    if not chunks:
        raise VitParetoError("the loader yielded no images")
    return torch.cat(chunks)[:n]


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs a warning per tensor it leaves in float (norm weights,
    biases) on the root logger: noise to a user, kept below errors here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
