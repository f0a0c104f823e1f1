"""Backbones end to end: a SigLIP-style one (an attention-pool ('map') head, RMSNorm
layers) and an EVA-02 (the Eva adapter: rotary embeddings, SwiGLU) train as supernets,
search, export through the dynamo ONNX exporter and load, and the exported files
compute what the loaded model computes."""

from __future__ import annotations

import pytest

from tests.helpers.backbone import exported_front, trained_and_searched
from vitpareto.evaluators import analytic_macs, count_macs
from vitpareto.search import load_supernet

pytestmark = pytest.mark.slow  # training, searches, exports

KWARGS = dict(img_size=32, patch_size=8, class_token=False, global_pool="map", norm_layer="rmsnorm")


def test_a_map_rmsnorm_supernet_trains_searches_and_exports(tmp_path):
    url = trained_and_searched(tmp_path, KWARGS, trials=6)
    net = load_supernet(tmp_path / "net.pt")
    spec = net.elastic.spec
    assert spec.attn_pool and spec.norm == "rmsnorm"
    assert all(h.attn_pool is not None for h in net.elastic.exit_heads.values())
    x = next(iter(net.load_data(batch_size=5).val))[0]
    for _, model in exported_front(url, tmp_path / "m", x):
        assert count_macs(model, spec.img_size) == analytic_macs(spec, model.candidate)


def test_an_eva02_supernet_trains_searches_and_exports(tmp_path):
    kwargs = dict(img_size=32, patch_size=8, depth=2, num_classes=10)  # a backbone: give it a head
    url = trained_and_searched(tmp_path, kwargs, trials=6, name="eva02_tiny_patch14_224")
    net = load_supernet(tmp_path / "net.pt")
    spec = net.elastic.spec
    assert spec.rope and spec.gated_mlp and spec.head_dim % 2 == 0
    x = next(iter(net.load_data(batch_size=5).val))[0]
    for _, model in exported_front(url, tmp_path / "m", x):
        assert all(q % 2 == 0 for q in model.candidate.qk_dim)  # whole rotary pairs
        assert count_macs(model, spec.img_size) == analytic_macs(spec, model.candidate)
