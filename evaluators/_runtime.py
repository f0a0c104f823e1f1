"""Runtimes a compressed model ships on: eager PyTorch, ``torch.compile`` and ONNX Runtime.

Each turns a module into a callable on a fixed input shape, so the latency evaluator can
time what the user will actually deploy.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn

from vitpareto.spaces import VitParetoError

RUNTIMES = ("eager", "compile", "onnxruntime")


def prepare(model: nn.Module, example: torch.Tensor, runtime: str = "eager") -> Callable:
    """A callable running ``model`` on inputs shaped like ``example`` under ``runtime``."""
    model = model.eval()
    if runtime == "eager":
        return model
    if runtime == "compile":
        # every CompressedViT shares one forward: without a reset, dynamo's guards pile
        # up across models until it hits its recompile limit and silently runs eager
        torch._dynamo.reset()
        return torch.compile(model, dynamic=False)
    if runtime == "onnxruntime":
        return _onnxruntime(model, example)
    raise VitParetoError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: str | os.PathLike, dynamic_batch: bool = False
) -> None:
    """Write ``model`` as an ONNX graph (opset 17; input ``images``, output ``logits``) for
    inputs shaped like ``example``, or of any batch size with ``dynamic_batch``."""
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _onnxruntime(model: nn.Module, example: torch.Tensor) -> Callable:
    try:
        import onnxruntime as ort
    except ImportError:
        raise VitParetoError(
            "runtime 'onnxruntime' needs the onnxruntime package: pip install 'vitpareto[onnx]'"
        ) from None
    providers = ["CPUExecutionProvider"]
    if example.device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise VitParetoError(
                "runtime 'onnxruntime' on CUDA needs onnxruntime-gpu; this onnxruntime has "
                f"only {', '.join(ort.get_available_providers())}"
            )
        providers = ["CUDAExecutionProvider"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    # idle ORT threads must not spin: they would steal the cores from whatever runs next
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(model.cpu() if example.device.type != "cuda" else model, example, path)
        session = ort.InferenceSession(path, opts, providers=providers)

    def run(x: torch.Tensor):
        return session.run(None, {"images": x.detach().cpu().numpy()})[0]

    return run
