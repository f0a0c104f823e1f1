"""Attention-pool heads (SigLIP's 'map'), RMSNorm models and the ONNX exporters: an exit
pools as the final head does, its cost is counted exactly, pruned tokens are what the pool
attends over, and both exporters write graphs that compute what eager computes."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch

from tests.helpers.variants import images, make_variant
from vitpareto.errors import VitParetoError
from vitpareto.evaluators import (
    ExitPath,
    analytic_macs,
    attn_pool_macs,
    count_macs,
    exit_head_macs,
    exit_macs,
    export_onnx,
)
from vitpareto.spaces import (
    Candidate,
    DeployedViT,
    ElasticViT,
    compress,
    describe,
    token_counts,
)


def _siglip(**kwargs):
    torch.manual_seed(0)
    return timm.create_model(
        "vit_base_patch16_siglip_224", img_size=32, patch_size=8, depth=2, embed_dim=96,
        num_heads=3, num_classes=10, **kwargs,
    ).eval()  # fmt: skip


MAPS = {  # where the model's head normalises: the tokens, the pooled vector, nowhere
    "siglip_map": lambda: make_variant("siglip_map"),
    "map_class_token": lambda: make_variant("map_class_token"),
    "map_fc_norm": lambda: _siglip(fc_norm=True),
    "map_no_norm": lambda: _siglip(final_norm=False),
}


@pytest.mark.parametrize("key", list(MAPS))
def test_a_map_exit_starts_as_the_models_own_head(key):
    model = MAPS[key]()
    elastic = ElasticViT(model)
    head = elastic.exit_heads["0"].eval()
    assert head.attn_pool is not None and head.attn_pool is not model.attn_pool
    tokens = torch.randn(2, 17, describe(model).embed_dim)
    with torch.no_grad():
        assert torch.allclose(head(tokens), model.forward_head(model.norm(tokens)), atol=1e-6)
        head.attn_pool.latent.add_(1.0)  # its own copy: training it leaves the model alone
        assert not torch.allclose(head(tokens), model.forward_head(model.norm(tokens)))


def test_an_rmsnorm_models_exit_normalises_as_the_model_does():
    model = make_variant("rmsnorm")
    head = ElasticViT(model).exit_heads["0"]
    assert type(head.norm) is type(model.norm)
    assert torch.equal(head.norm.weight, model.norm.weight)


@pytest.mark.parametrize("key", [*MAPS, "rmsnorm", "class_token", "avg_pool"])
def test_the_cost_of_leaving_at_an_exit_is_counted_exactly(key):
    model = MAPS[key]() if key in MAPS else make_variant(key)
    s = describe(model)
    c = Candidate.make(model, keep={0: 0.5}, mlp={0: 40}, exits=(0,), exit_threshold=0.5)
    small = compress(model, c).eval()
    assert count_macs(ExitPath(small, 0), s.img_size) == exit_macs(model, c)[0]
    if s.attn_pool:  # the pool's keys and values grow with the tokens it attends over
        assert exit_head_macs(s, 10) > exit_head_macs(s, 5)
        with pytest.raises(VitParetoError, match="tokens"):
            exit_head_macs(s)
    else:
        with pytest.raises(VitParetoError, match="no attention pool"):
            attn_pool_macs(s, 10)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(embed_norm_layer="layernorm"),  # a norm over the patch embeddings, counted
        dict(norm_layer=torch.nn.RMSNorm, qk_norm=True),  # torch's own RMSNorm, sliced too
        dict(norm_layer="rmsnorm", embed_norm_layer="rmsnorm"),
    ],
)
def test_every_norm_is_counted_and_cut(kwargs):
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10, **kwargs
    ).eval()
    c = Candidate.make(model, heads=2, qk_dim=40, mlp=300, keep={0: 0.5})
    assert count_macs(model, 32) == analytic_macs(model)
    small = compress(model, c).eval()
    assert count_macs(small, 32) == analytic_macs(model, c)
    x = images(model)
    with torch.no_grad():
        assert torch.allclose(small(x), ElasticViT(model)(x, c), atol=1e-5)


def test_norms_of_two_kinds_are_refused_with_the_reason():
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=10,
        embed_norm_layer="rmsnorm",
    )  # fmt: skip
    with pytest.raises(VitParetoError, match="mixes LayerNorm and RMSNorm"):
        describe(model)


@pytest.mark.parametrize("key", ["siglip_map", "map_class_token"])
def test_token_pruning_hands_the_pool_the_kept_tokens(key):
    model = make_variant(key)
    c = Candidate.make(model, keep={0: 0.5, 1: 0.7}, exits=(0,), exit_threshold=0.5)
    small = compress(model, c).eval()
    seen = []

    def keep(module, args):
        seen.append(args[0].shape[1])

    hooks = [small.vit.attn_pool.register_forward_pre_hook(keep)]
    hooks.append(small.exit_heads[0].attn_pool.register_forward_pre_hook(keep))
    with torch.no_grad():
        small.forward_exits(images(model))
    for h in hooks:
        h.remove()
    s = describe(model)
    counts, skip = token_counts(s, c), 0 if s.pool_prefix else s.num_prefix_tokens
    assert seen == [counts[0][1] - skip, counts[-1][1] - skip]  # the exit, then the final head


@pytest.mark.parametrize("key", ["siglip_map", "rmsnorm"])
def test_an_exit_policy_exports_to_onnx_equal_to_eager(key, tmp_path):
    model = make_variant(key)
    c = Candidate.make(model, keep={0: 0.5}, exits=(0,), exit_threshold=0.2)
    shipped = DeployedViT(compress(model, c)).eval()
    x = images(model, n=6)
    export_onnx(shipped, x, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for n in (1, 6):
        logits, where = session.run(None, {"images": x[:n].numpy()})
        with torch.no_grad():
            want, want_where = shipped(x[:n])
        assert np.abs(logits - want.numpy()).max() < 1e-4
        assert (where == want_where.numpy()).all()


def test_the_legacy_exporter_is_a_fallback_and_unknown_ones_are_refused(tmp_path):
    model = make_variant("class_token")
    small = compress(model, Candidate.make(model, heads=2)).eval()
    x = images(model, n=3)
    export_onnx(small, x, tmp_path / "m.onnx", exporter="torchscript")
    out = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(out - small(x).numpy()).max() < 1e-4
    with pytest.raises(VitParetoError, match="dynamo or torchscript"):
        export_onnx(small, x, tmp_path / "n.onnx", exporter="jit")
    rms = compress(make_variant("rmsnorm"), Candidate.make(make_variant("rmsnorm"), heads=2))
    with pytest.raises(VitParetoError, match="no rms_norm.*exporter='dynamo'"):
        export_onnx(rms, images(rms.vit), tmp_path / "r.onnx", exporter="torchscript")


def test_onnx_export_without_onnxscript_says_how_to_install_it(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name)
    )
    model = make_variant("class_token")
    with pytest.raises(VitParetoError, match=r"pip install 'vitpareto\[onnx\]'"):
        export_onnx(model, images(model), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
