"""A small supernet of one timm configuration, trained on digits and searched with a
predicted-latency table, and the check that every model exported from its front runs the
same in ONNX Runtime, as a .pt2 file and eagerly: the end-to-end test of one backbone."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

import vitpareto
from tests.helpers.cli import vitpareto as cli
from vitpareto.search import SearchConfig, SupernetTrainer, TrainConfig, load_supernet, search


def trained_and_searched(
    d, model_kwargs: dict, trials: int = 5, name: str = "test_vit", space=None
) -> str:
    """Train timm's ``name`` with ``model_kwargs`` (and ``space``, default the default
    one) one epoch into ``d/net.pt``, search it for ``trials`` trials into study ``s``;
    return the storage URL."""
    trainer = SupernetTrainer.create(
        name,
        "digits",
        TrainConfig(epochs=1, batch_size=128, random_candidates=1),
        model_kwargs=model_kwargs,
        space=space,
    )
    trainer.fit(d / "net.pt", progress=False)
    url = f"sqlite:///{d / 'r.db'}"
    config = SearchConfig(latency="predicted", latency_repeats=3)
    search(load_supernet(d / "net.pt"), url, "s", trials, config, progress=False)
    return url


def exported_front(url: str, out, x: torch.Tensor) -> list:
    """Export study ``s``'s front under ``out`` and return the loaded models, each checked:
    its ONNX and .pt2 files give its eager logits (the exit policy's, with exits) on ``x``."""
    done = cli("export", "--storage", url, "--study", "s", "--pareto", "--out", str(out))
    assert done.returncode == 0, done.stderr
    models = []
    for model_dir in sorted(out.iterdir()):
        model = vitpareto.load(model_dir)
        with torch.no_grad():  # a model with exits ships its exit policy
            eager = (model.forward_dynamic(x)[0] if model.routes else model(x)).numpy()
        onnx = ort.InferenceSession(str(model_dir / "model.onnx")).run(None, {"images": x.numpy()})
        assert np.abs(onnx[0] - eager).max() < 1e-4
        pt2 = torch.export.load(str(model_dir / "model.pt2")).module()(x)
        pt2 = pt2[0] if isinstance(pt2, (tuple, list)) else pt2
        assert torch.allclose(pt2, torch.from_numpy(eager), atol=1e-4)
        models.append((model_dir, model))
    assert models
    return models
