"""The Eva adapter maps timm's Eva class onto the model vitpareto cuts: without rotary
embeddings the canonical model computes what Eva computes, whichever projections it has."""

from __future__ import annotations

import pytest
import timm
import torch

from vitpareto.spaces import ADAPTERS, Candidate, adapt, canonical_eva, compress, describe

CASES = {
    "eva02_fused_qkv": ("eva02_tiny_patch14_224", dict(img_size=56)),
    "eva02_separate_qkv": ("eva02_tiny_patch14_224", dict(img_size=56, qkv_fused=False)),
    "rope_vit_registers": ("vit_medium_patch16_rope_reg1_gap_256", dict(img_size=64)),
    "rotate_half_qk_norm": (
        "eva02_tiny_patch14_224",
        dict(img_size=56, rope_rotate_half=True, qk_norm=True),
    ),
}


@pytest.mark.parametrize("key", list(CASES))
def test_without_rope_the_canonical_model_is_eva(key):
    name, kwargs = CASES[key]
    torch.manual_seed(0)
    eva = timm.create_model(name, num_classes=10, depth=2, use_rot_pos_emb=False, **kwargs)
    with torch.no_grad():  # biases, norms and tokens randomised too: no part is trivial
        for n, p in eva.named_parameters():
            if p.dim() == 1 or "token" in n:
                p.add_(0.1 * torch.randn_like(p))
    eva.eval()
    vit = canonical_eva(eva)
    x = torch.randn(2, 3, *eva.patch_embed.img_size)
    with torch.no_grad():
        assert (vit(x) - eva(x)).abs().max() < 1e-5


def test_another_patch_size_rotates_as_timm_resizes_it():
    torch.manual_seed(0)
    eva = timm.create_model("eva02_tiny_patch14_224", img_size=56, depth=2, num_classes=10)
    with torch.no_grad():  # larger q/k and head weights: the rotation shows in the logits
        for n, p in eva.named_parameters():
            if "qkv.weight" in n or "head.weight" in n:
                p.mul_(8.0)
    eva.eval()
    x = torch.randn(2, 3, 56, 56)
    spec = describe(eva)
    with torch.no_grad():
        ours = compress(eva, Candidate.make(spec, patch_size=28)).eval()(x)
        base = eva(x)
        eva.set_input_size(patch_size=28)
        assert (ours - eva(x)).abs().max() < 1e-5
        assert (ours - base).abs().max() > 1e-3  # the grid, and so the rotation, changed


def test_each_architecture_has_one_adapter_and_a_vision_transformer_is_itself():
    vit = timm.create_model("test_vit", img_size=32, num_classes=10)
    assert adapt(vit) is vit  # the model vitpareto cuts: the identity adapter
    eva = timm.create_model("eva02_tiny_patch14_224", img_size=56, depth=1, num_classes=10)
    assert set(ADAPTERS) == {"Eva"} and type(adapt(eva)).__name__ == "VisionTransformer"
