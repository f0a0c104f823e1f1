"""Runtimes a compressed model ships on, and the files that carry it there.

Eager PyTorch, ``torch.compile``, ONNX Runtime and, on CUDA, CUDA graphs and TensorRT. Each
turns a module into a callable on a fixed input shape, built from the same artifact
``vitpareto export`` writes for that runtime (the same ONNX graph, with the same session
options; the same exported program), so the latency a search measures is the deployed
model's. A candidate with early exits ships as its exit policy (``DeployedViT``): eager
and ONNX Runtime run that graph (data-dependent row gathers); the compiled runtimes need
static shapes and run the static forward.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn

from vitpareto.errors import VitParetoError
from vitpareto.evaluators._precision import INT8, kept_graph, precision_of, quantize_onnx
from vitpareto.spaces import DeployedViT, norm_kind

RUNTIMES = ("eager", "compile", "onnxruntime", "cudagraphs", "tensorrt")
DYNAMIC = ("eager", "onnxruntime")  # the runtimes that run an exit policy's graph
EXPORTERS = ("dynamo", "torchscript")  # ONNX exporters: PyTorch's maintained one, the legacy tracer
OPSET = 20  # the dynamo exporter's: GELU as one op (ONNX Runtime >= 1.17 runs it)
_NEEDS = {"onnxruntime": "onnxruntime", "tensorrt": "torch_tensorrt"}
_EXTRA = {"onnxruntime": "pip install 'vitpareto[onnx]'", "tensorrt": "pip install torch-tensorrt"}


def check_runtime(runtime: str, device: str | torch.device = "cpu") -> None:
    """Refuse, with what to do, a runtime that is unknown, not installed, or needs CUDA
    on another device: before any work, not at the first trial."""
    if runtime not in RUNTIMES:
        raise VitParetoError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    package = _NEEDS.get(runtime)
    if package and importlib.util.find_spec(package) is None:
        raise VitParetoError(f"runtime {runtime!r} needs the {package} package: {_EXTRA[runtime]}")
    if runtime == "onnxruntime":
        check_onnxscript()
    if runtime in ("cudagraphs", "tensorrt") and torch.device(device).type != "cuda":
        raise VitParetoError(f"runtime {runtime!r} runs on CUDA GPUs only; pass --device cuda")


def _own_frame(model: nn.Module) -> Callable:
    """``model``'s forward behind a code object of its own. Dynamo keeps compiled graphs per
    code object, at most eight each, and every compressed model shares one forward: the
    ninth model compiled in a process (a benchmark's showcase, a predictor's table) would
    run eager without a word, and the others would check each other's guards on every call."""

    def forward(x):
        return model(x)

    forward.__code__ = forward.__code__.replace(co_name=f"forward_{id(model):x}")
    return forward


def deployed(model: nn.Module) -> nn.Module:
    """What ships for ``model``: its exit policy when it has early exits, else itself."""
    return DeployedViT(model) if getattr(model, "routes", 0) else model


def prepare(
    model: nn.Module,
    example: torch.Tensor,
    runtime: str = "eager",
    onnx: str | os.PathLike | None = None,
) -> Callable:
    """A callable running ``model`` (as given: wrap it in ``deployed`` for the exit
    policy) on inputs shaped like ``example`` under ``runtime``; for ONNX Runtime, the
    graph in the file ``onnx`` when given (an exported model's own), else one exported now
    as ``vitpareto export`` writes it, quantized to the candidate's precision: the very
    graph its accuracy was measured on when that was kept (``kept_graph``), else one
    quantized now (an int8-static graph's ranges set on ``example``: they change its
    constants, not its operators or their speed)."""
    check_runtime(runtime, example.device)
    model = model.eval()
    if runtime == "eager":
        return model
    if runtime in ("compile", "cudagraphs"):
        mode = "reduce-overhead" if runtime == "cudagraphs" else None
        return torch.compile(_own_frame(model), dynamic=False, mode=mode)
    if runtime == "tensorrt":
        import torch_tensorrt  # optional: checked above

        return torch_tensorrt.compile(model, inputs=[example], ir="dynamo")
    if onnx is not None:
        session = ort_session(onnx, example.device)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            kept = kept_graph(model)
            if kept is not None:  # the quantized graph its accuracy was just measured on
                with open(path, "wb") as f:
                    f.write(kept)
            else:
                export_onnx(model, example, path)
                precision = precision_of(model)
                if precision in INT8:
                    path, fp32 = os.path.join(tmp, "int8.onnx"), path
                    quantize_onnx(fp32, path, precision, example)
            session = ort_session(path, example.device)

    def run(x: torch.Tensor):
        outs = session.run(None, {"images": x.detach().cpu().numpy()})
        return outs[0] if len(outs) == 1 else tuple(outs)

    return run


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    dynamic_batch: bool = True,
    exporter: str = "dynamo",
    opset: int = OPSET,
) -> None:
    """Write ``model`` as an ONNX graph (input ``images``; output ``logits``, and ``exit``
    for an exit policy) for any batch size (or ``example``'s alone).

    ``exporter="dynamo"`` (the default) is the exporter PyTorch maintains: it captures the
    graph with ``torch.export`` (as the ``.pt2`` file is), translates it with onnxscript
    and optimises it; ``rms_norm``, token merging and the exit policy's row gathers export
    through it. At ``opset`` 20 (the default) GELU is one ONNX op, which ONNX Runtime runs
    as fast as the tracer's graph or faster (``bench_exporters``); 18 spells it out and is
    slower, 23 adds a fused Attention op that older runtimes lack.
    ``exporter="torchscript"`` is the legacy tracer (opset 17), kept as a fallback for a
    graph the first cannot capture; it has no ``rms_norm``."""
    if exporter not in EXPORTERS:
        raise VitParetoError(f"unknown ONNX exporter {exporter!r}; choose {' or '.join(EXPORTERS)}")
    outputs = ["logits", "exit"] if isinstance(model, DeployedViT) else ["logits"]
    model = model.eval().to(example.device)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            if any(norm_kind(m) == "rmsnorm" for m in model.modules()):
                raise VitParetoError(
                    "the TorchScript exporter has no rms_norm (this model has RMSNorm "
                    "layers): export with exporter='dynamo'"
                )
            axes = {name: {0: "batch"} for name in ("images", *outputs)} if dynamic_batch else None
            torch.onnx.export(
                model, (example,), str(path), input_names=["images"], output_names=outputs,
                dynamic_axes=axes, opset_version=17, dynamo=False,
            )  # fmt: skip
            return
        check_onnxscript()
        if dynamic_batch and example.shape[0] < 2:
            example = example.expand(2, *example.shape[1:])  # a batch of 1 is specialised
        shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
        _translate(model, example, outputs, shapes, opset, path)


def _translate(target, example, outputs, shapes, opset: int, path) -> None:
    """The dynamo exporter's ONNX graph of ``target`` (a module, or the program
    ``torch.export`` captured from it) written to ``path``."""
    # onnxscript's IR logs a warning for every empty attribute list it types (the exit
    # policy's graph has several): noise to a user, so kept below errors here
    quiet = logging.getLogger("onnx_ir")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                target, (example,), input_names=["images"], output_names=outputs,
                dynamic_shapes=shapes, opset_version=opset, dynamo=True, verbose=False,
            )  # fmt: skip
        program.save(str(path))
    finally:
        quiet.setLevel(level)


def check_onnxscript() -> None:
    """Refuse, with the fix, an ONNX export without the onnxscript package it runs on."""
    if importlib.util.find_spec("onnxscript") is None:
        raise VitParetoError(
            "ONNX export needs the onnxscript package: pip install 'vitpareto[onnx]'"
        )


def export_pt2(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    onnx: str | os.PathLike | None = None,
    opset: int = OPSET,
) -> None:
    """``torch.export`` of ``model``'s forward, batch size free (1 and up); ``example``
    should hold 2 images or more (a batch of 1 would be specialised). ``onnx``: also write
    the ONNX graph ``export_onnx`` writes, translated from the same captured program (one
    capture instead of two: about a quarter of an exit policy's export time).

    The file's parameters do not require gradients (it is an inference artifact): with
    gradients on, torch runs an exit policy's conditionals (``torch.cond``) through
    autograd, which traces each branch again with the rows still in as a data-dependent
    size, and a branch that cut tokens or channels then fails to trace ("Could not guard
    on data-dependent expression") on a plain call of the loaded module."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    params = list(model.parameters())
    wanted = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.no_grad():
            ep = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
        torch.export.save(ep, str(path))  # shares the parameters: saved before restoring
        if onnx is not None:
            check_onnxscript()
            outputs = ["logits", "exit"] if isinstance(model, DeployedViT) else ["logits"]
            _translate(ep, example, outputs, None, opset, onnx)
    finally:
        for p, w in zip(params, wanted, strict=True):
            p.requires_grad_(w)


def ort_session(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """An ONNX Runtime session as vitpareto times and benchmarks one: this process's CPU
    threads, idle threads that do not spin, CUDA when the device is a GPU."""
    import onnxruntime as ort  # optional: checked by check_runtime

    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
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
    return ort.InferenceSession(str(path), opts, providers=providers)
