"""The files a model directory carries that load without vitpareto: ``model.pt2`` for
``torch.export.load`` and ``model.onnx`` for any ONNX runtime (and, for a model with exits,
``model_static.*``), each module captured once for both its files."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

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


class Made:
    """A file's content, made on first use and kept (``path``), copied into each directory
    ``atomic_dir`` writes it to: the same file can be timed first and then shipped."""

    def __init__(self, make, keep=None):
        self.make, self.keep, self._path = make, keep, None  # keep: its temporary folder

    def path(self) -> Path:
        if self._path is None:
            self._path = self.make()
        return self._path

    def __call__(self, dest) -> None:
        shutil.copyfile(self.path(), dest)


def portable_files(model, calibration=None) -> dict[str, Made]:
    """``model.pt2`` and ``model.onnx``, which load without vitpareto: the exit policy for a
    model with exits (outputs: logits and each sample's exit), beside ``model_static.*``
    (every block, the final head) for runtimes that cannot take its control flow. An int8
    candidate's ``model.onnx`` is quantized (``calibration``: training images, for
    int8-static) and the other files stay float32; a bf16 or fp16 candidate's ``.pt2``
    files compute in its precision and its ``.onnx`` files in float32. Each module is
    captured once for both its files."""
    x = torch.randn(2, *image_shape(model))  # 2: a batch of 1 would be specialised
    shipped = deployed(model)
    precision = precision_of(model)
    made = tempfile.TemporaryDirectory()  # removed once no file made in it is referenced
    where = Path(made.name)

    def pair(stem: str, module) -> Made:
        def make() -> tuple[Path, Path]:
            pt2, onnx = where / f"{stem}.pt2", where / f"{stem}.onnx"
            if precision in HALF:  # ONNX runtimes lack half kernels on CPUs: float32 there
                export_pt2(module, x, pt2)
                export_onnx(copy.deepcopy(module).float(), x, onnx)
            else:
                export_pt2(module, x, pt2, onnx=onnx)
            return pt2, onnx

        return Made(make, keep=made)

    def quantized(files: Made) -> Path:
        dest = where / "quantized.onnx"
        quantize_onnx(files.path()[1], dest, precision, calibration)
        return dest

    policy = pair("model", shipped)
    files = {
        "model.pt2": Made(lambda: policy.path()[0], keep=made),
        "model.onnx": Made(
            (lambda: quantized(policy)) if precision in INT8 else (lambda: policy.path()[1]),
            keep=made,
        ),
    }
    if shipped is not model:
        static = pair("static", model)
        files["model_static.pt2"] = Made(lambda: static.path()[0], keep=made)
        files["model_static.onnx"] = Made(lambda: static.path()[1], keep=made)
    return files
