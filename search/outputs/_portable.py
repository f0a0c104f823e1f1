"""The files a model directory carries that load without vitpareto: ``model.pt2`` for
``torch.export.load`` and ``model.onnx`` for any ONNX runtime (and, for a model with exits,
``model_static.*``), each module captured once for both its files."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from vitpareto.evaluators import (
    INT8,
    deployed,
    export_onnx,
    export_pt2,
    precision_of,
    quantize_onnx,
)
from vitpareto.search.outputs._bench import image_shape
from vitpareto.spaces import HALF


def copy_of(src: str):
    """Content that copies the file ``src`` into place (``atomic_dir`` writes it)."""
    return lambda dest: shutil.copyfile(src, dest)


def portable_files(model, calibration=None) -> dict[str, Any]:
    """``model.pt2`` and ``model.onnx``, which load without vitpareto: the exit policy for a
    model with exits (outputs: logits and each sample's exit), beside ``model_static.*``
    (every block, the final head) for runtimes that cannot take its control flow. An int8
    candidate's ``model.onnx`` is quantized (``calibration``: training images, for
    int8-static) and the other files stay float32; a bf16 or fp16 candidate's ``.pt2``
    files compute in its precision and its ``.onnx`` files in float32."""
    x = torch.randn(2, *image_shape(model))  # 2: a batch of 1 would be specialised
    shipped = deployed(model)
    precision = precision_of(model)
    made = tempfile.TemporaryDirectory()  # each module captured once for both its files

    def pair(stem: str, module) -> tuple[Path, Path]:
        pt2, onnx = Path(made.name) / f"{stem}.pt2", Path(made.name) / f"{stem}.onnx"
        if not pt2.exists() and precision in HALF:  # ONNX runtimes lack half kernels on CPUs
            export_pt2(module, x, pt2)
            export_onnx(copy.deepcopy(module).float(), x, onnx)
        elif not pt2.exists():
            export_pt2(module, x, pt2, onnx=onnx)
        return pt2, onnx

    def onnx(dest):
        fp32 = pair("model", shipped)[1]
        if precision not in INT8:
            return shutil.copyfile(fp32, dest)
        quantize_onnx(fp32, dest, precision, calibration)

    files = {"model.pt2": lambda dest: shutil.copyfile(pair("model", shipped)[0], dest),
             "model.onnx": onnx}  # fmt: skip
    if shipped is not model:
        for suffix in (0, 1):
            name = ("model_static.pt2", "model_static.onnx")[suffix]
            files[name] = lambda dest, i=suffix: shutil.copyfile(pair("static", model)[i], dest)
    return files
