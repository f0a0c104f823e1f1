"""Unsupported input gets one clear error: other architectures, unknown names, bad checkpoints."""

from __future__ import annotations

import pytest
import timm
import torch

from vitpareto.spaces import Candidate, VitParetoError, compress, create_model, describe


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("swin_tiny_patch4_window7_224", {}, r"unsupported model SwinTransformer.*windowed"),
        ("resnet18", {}, r"unsupported model ResNet.*timm VisionTransformer"),
        ("test_vit", {"img_size": 32, "global_pool": "prr"}, r"AttentionPoolPrr pooling head"),
        ("naflexvit_base_patch16_siglip", {"depth": 1}, r"variable-resolution inputs \(NaFlexViT"),
        ("vit_small_patch16_224", {"depth": 1, "scale_mlp_norm": True}, r"block 0 MLP"),
        # each refusal names the reason a user can act on, not a generic list
        ("vit_relpos_small_patch16_224", {"depth": 1}, r"relative-position bias"),
        ("beit_base_patch16_224", {"depth": 1}, r"relative-position bias \(BEiT"),
        # Eva forms the adapter cannot carry say which
        ("vit_pe_core_small_patch16_384", {"depth": 1}, r"Perception Encoder's"),
        ("vit_base_patch16_rope_mixed_224", {"depth": 1}, r"mixed-mode rotary"),
        ("eva02_tiny_patch14_224", {"depth": 1, "use_post_norm": True}, r"post-norm"),
        ("vit_small_r26_s32_224", {"img_size": 64}, r"HybridEmbed: a convolutional stem"),
        ("vit_small_patch16_18x2_224", {"depth": 1}, r"ParallelThingsBlock: parallel blocks"),
        (
            "vit_small_patch14_dinov2",
            {"depth": 1, "img_size": 56, "num_classes": 0},
            r"no classifier head.*num_classes: N.*--num-classes N.*num_classes=N",
        ),
    ],
)
def test_unsupported_architectures(name, kwargs, message):
    model = timm.create_model(name, **kwargs)
    for call in (describe, Candidate.full, lambda m: compress(m, None)):
        with pytest.raises(VitParetoError, match=message):
            call(model)
    with pytest.raises(VitParetoError, match=message):
        create_model(name, **kwargs)


def test_post_norm_blocks_are_named():
    from timm.models.vision_transformer import ResPostBlock

    model = timm.create_model("vit_small_patch16_224", depth=1, block_fn=ResPostBlock)
    with pytest.raises(VitParetoError, match=r"block 0 is a ResPostBlock: post-norm blocks"):
        describe(model)


def test_unknown_model_name_suggests_close_ones():
    with pytest.raises(
        VitParetoError, match=r"unknown timm model 'deit_smal_patch16_224'.*deit_small_patch16_224"
    ):
        create_model("deit_smal_patch16_224")


def test_pretrained_weights_without_network(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # read once, when huggingface_hub is first imported: in a process that imported it
    # before, only this makes it offline (else each download waits out its timeouts, 46 s)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(VitParetoError, match=r"could not load pretrained weights.*--checkpoint"):
        create_model("test_vit", pretrained=True)


def test_checkpoints(tmp_path):
    small = create_model("test_vit", img_size=32, num_classes=10)
    good = tmp_path / "good.pth"
    torch.save({"state_dict": small.state_dict()}, good)
    loaded = create_model("test_vit", img_size=32, num_classes=10, checkpoint=good)
    assert all(
        torch.equal(a, b)
        for a, b in zip(small.state_dict().values(), loaded.state_dict().values(), strict=True)
    )

    with pytest.raises(
        VitParetoError,
        match=r"does not match the model: .*wrong shape \(head\.bias, head\.weight\)",
    ):
        create_model("test_vit", img_size=32, num_classes=5, checkpoint=good)
    with pytest.raises(
        VitParetoError, match=r"does not match the model: \d+ missing .*\d+ wrong shape"
    ):
        create_model("deit_tiny_patch16_224", img_size=32, num_classes=10, checkpoint=good)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(VitParetoError, match="is not a checkpoint vitpareto can read"):
        create_model("test_vit", img_size=32, num_classes=10, checkpoint=corrupt)
    with pytest.raises(VitParetoError, match="does not exist"):
        create_model("test_vit", img_size=32, checkpoint=tmp_path / "missing.pth")
