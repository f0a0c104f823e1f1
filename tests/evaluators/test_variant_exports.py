"""Every supported variant's compressed model exports to ``.pt2`` and ONNX, and both
files compute what the eager model computes (the export half of the variant contract)."""

from __future__ import annotations

import random

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.helpers.variants import VARIANTS, images, make_variant, random_candidate
from vitpareto.evaluators import export_onnx, export_pt2
from vitpareto.spaces import compress

pytestmark = pytest.mark.slow  # ONNX and .pt2 exports


@pytest.mark.parametrize("key", list(VARIANTS))
def test_exports_equal_eager(key, tmp_path):
    model = make_variant(key)
    small = compress(model, random_candidate(model, random.Random(3))).eval()
    x = images(model, n=2)
    with torch.no_grad():
        eager = small(x)
    export_onnx(small, x, tmp_path / "m.onnx")
    export_pt2(small, x, tmp_path / "m.pt2")
    onnx = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"images": x.numpy()})[0]
    assert np.abs(onnx - eager.numpy()).max() < 1e-4
    pt2 = torch.export.load(str(tmp_path / "m.pt2")).module()(x)
    assert torch.allclose(pt2, eager, atol=1e-5)
