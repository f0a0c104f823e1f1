"""A model of one input channel, end to end: its data comes out in one channel, its
latency table, search, export and model card take one-channel images, and its exported
files run on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.backbone import exported_front, trained_and_searched
from vitpareto.evaluators import channel_norm, load_data
from vitpareto.search import load_supernet
from vitpareto.spaces import VitParetoError, check_recipe

pytestmark = pytest.mark.slow  # training, a search, exports


@pytest.fixture(scope="module")
def one_channel(tmp_path_factory):
    """A one-channel supernet trained one epoch on digits and a predicted-latency study."""
    d = tmp_path_factory.mktemp("channels")
    return d, trained_and_searched(d, dict(img_size=32, patch_size=16, in_chans=1))


def test_data_comes_in_the_channels_asked_for():
    gray = load_data("digits", 16, batch_size=8, channels=1)
    rgb = load_data("digits", 16, batch_size=8)
    x1, x3 = next(iter(gray.val))[0], next(iter(rgb.val))[0]
    assert x1.shape == (8, 1, 16, 16) and x3.shape == (8, 3, 16, 16)
    # the default normalisation is the same on every channel: gray is any RGB channel
    assert torch.equal(x1[:, 0], x3[:, 1])
    with pytest.raises(VitParetoError, match="grayscale or RGB"):
        load_data("digits", 16, channels=4)


def test_colour_images_become_their_luminance(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    rgb = load_data(f"imagefolder:{tmp_path}", 8, batch_size=6, holdout=False)
    gray = load_data(f"imagefolder:{tmp_path}", 8, batch_size=6, holdout=False, channels=1)
    x3, x1 = next(iter(rgb.val))[0], next(iter(gray.val))[0]
    assert x1.shape == (6, 1, 8, 8)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    # PIL's grayscale rounds to whole levels: within half a level of the weighted sum
    assert (x1 - (x3 * weights).sum(1, keepdim=True)).abs().max() <= 1 / 255 / 0.5
    (mean,), (std,) = channel_norm((0.2, 0.4, 0.6), (0.1, 0.2, 0.3), 1)
    assert mean == pytest.approx(0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6)
    assert std == pytest.approx(0.299 * 0.1 + 0.587 * 0.2 + 0.114 * 0.3)


def test_recipes_bound_the_channels():
    with pytest.raises(VitParetoError, match="in_chans 0 is out of range"):
        check_recipe({"name": "test_vit", "kwargs": {"in_chans": 0}}, "the model")


def test_a_one_channel_model_trains_searches_and_exports(one_channel, tmp_path):
    d, url = one_channel
    net = load_supernet(d / "net.pt")
    assert net.elastic.spec.in_chans == 1 and net.elastic.spec.image_shape == (1, 32, 32)
    x = next(iter(net.load_data(batch_size=4).val))[0]
    assert x.shape == (4, 1, 32, 32)
    for model_dir, _ in exported_front(url, tmp_path / "m", x):
        config = json.loads((model_dir / "config.json").read_text())
        assert config["preprocessing"]["channels"] == 1
        assert len(config["preprocessing"]["mean"]) == 1
        assert "N x 1 x 32 x 32" in (model_dir / "README.md").read_text()
