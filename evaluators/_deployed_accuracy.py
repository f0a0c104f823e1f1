"""The accuracy of what ships for a candidate whose precision is not float32."""

from __future__ import annotations

import copy
import os
import tempfile

import torch

from vitpareto.evaluators._precision import keep_graph, precision_of, quantize_onnx
from vitpareto.evaluators._runtime import deployed, export_onnx, ort_session


def artifact_accuracy(model, batches, calibration: torch.Tensor | None) -> float:
    """Top-1 accuracy of ``model``'s deployed artifact on ``batches`` of (images, labels):
    its exit policy (or itself) exported to ONNX as ``export`` writes it, quantized to its
    candidate's precision (``calibration``: training images, for int8-static), and run by
    ONNX Runtime, not simulated in PyTorch. The graph is kept (``keep_graph``) for the
    latency measured next."""
    shipped = deployed(copy.deepcopy(model).cpu().eval())
    correct = seen = 0
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "quantized.onnx")
        for x, y in batches:
            x, y = x.cpu(), torch.as_tensor(y).cpu()
            if not seen:  # the graph, built on the first batch's shape (any batch runs it)
                export_onnx(shipped, x, src)
                quantize_onnx(src, dst, precision_of(model), calibration)
                keep_graph(model, dst)  # the latency that follows times this very file
                session = ort_session(dst)
            logits = session.run(None, {"images": x.numpy()})[0]
            correct += int((torch.from_numpy(logits).argmax(-1) == y).sum())
            seen += len(y)
    return correct / max(seen, 1)
