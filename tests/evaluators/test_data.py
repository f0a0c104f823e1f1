"""load_data: splits, determinism, shapes and the clear errors, on data that ships offline."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.fashion import fake_fashion, write_idx
from vitpareto.evaluators import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_data
from vitpareto.spaces import VitParetoError


def _all(loader):
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_digits_sizes_shapes_and_range():
    d = load_data("digits", 32, batch_size=16)
    assert (len(d.train.dataset), len(d.val.dataset)) == (1437, 360)
    assert d.num_classes == 10 and d.classes == [str(i) for i in range(10)]
    assert d.spec == "digits"
    x, y = next(iter(d.train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    xv, yv = _all(d.val)
    assert -1.0 - 1e-6 <= xv.min() < -0.9 and 0.9 < xv.max() <= 1.0 + 1e-6
    assert set(yv.tolist()) == set(range(10))  # stratified: every class in val


def test_digits_deterministic_by_seed():
    a, b, c = (load_data("digits", 16, batch_size=32, seed=s) for s in (0, 0, 1))
    xa, ya = _all(a.val)
    xb, yb = _all(b.val)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    first_a, first_b = next(iter(a.train)), next(iter(b.train))
    assert torch.equal(first_a[0], first_b[0]) and torch.equal(first_a[1], first_b[1])
    xc, _ = _all(c.val)
    assert xc.shape == xa.shape and not torch.equal(xc, xa)


def test_digits_rectangular_size_and_limit():
    d = load_data("digits", (16, 24), batch_size=8, limit=50)
    assert (len(d.train.dataset), len(d.val.dataset)) == (50, 50)
    assert next(iter(d.val))[0].shape == (8, 3, 16, 24)


def test_lazy_resize_matches_eager():
    eager, _ = _all(load_data("digits", 20, limit=40).val)
    d = load_data("digits", 20, limit=40, memory_limit=0)
    assert d.val.dataset.lazy
    lazy, _ = _all(d.val)
    torch.testing.assert_close(lazy, eager, atol=1e-6, rtol=0)


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"{FASHION_MNIST_DIR} absent: `apt-get install dataset-fashion-mnist` to run this",
)
def test_fashion_mnist_from_debian_package():
    d = load_data("fashion-mnist", 32, batch_size=256)
    assert (len(d.train.dataset), len(d.val.dataset)) == (60000, 10000)
    assert d.classes == FASHION_MNIST_CLASSES
    x, y = next(iter(d.val))
    assert x.shape == (256, 3, 32, 32) and int(y.max()) <= 9
    small = load_data("fashion-mnist", 28, limit=100, batch_size=100)
    assert (len(small.train.dataset), len(small.val.dataset)) == (100, 100)
    xs, ys = next(iter(small.val))
    assert xs.shape == (100, 3, 28, 28) and len(set(ys.tolist())) > 5


def test_fashion_mnist_dir_reads_idx_exactly(tmp_path):
    rng = np.random.default_rng(0)
    train_x, val_x = rng.integers(0, 256, (3, 4, 5)), rng.integers(0, 256, (2, 4, 5))
    train_x[0, 0, 0], train_x[0, 0, 1] = 0, 255
    fake_fashion(tmp_path / "fm", train_x, [9, 0, 3], val_x, [1, 2])
    d = load_data(f"fashion-mnist:{tmp_path / 'fm'}", (4, 5), mean=(0, 0, 0), std=(1, 1, 1))
    assert d.classes == FASHION_MNIST_CLASSES
    xv, yv = _all(d.val)  # val is not shuffled: the file's order
    assert yv.tolist() == [1, 2]
    assert torch.equal(torch.round(xv * 255).to(torch.uint8)[:, 0], torch.tensor(val_x).byte())
    assert torch.equal(xv[:, 0], xv[:, 2])
    xt, yt = _all(d.train)
    assert sorted(yt.tolist()) == [0, 3, 9]
    got = {int(y): torch.round(x[0] * 255).byte() for x, y in zip(xt, yt, strict=True)}
    for img, label in zip(train_x, [9, 0, 3], strict=True):
        assert torch.equal(got[label], torch.tensor(img).byte())
    up = load_data(f"fashion-mnist:{tmp_path / 'fm'}", 12)
    assert next(iter(up.train))[0].shape == (3, 3, 12, 12)


def test_fashion_mnist_truncated_or_bad_file(tmp_path):
    root = tmp_path / "fm"
    fake_fashion(root, np.zeros((3, 4, 4)), [0, 1, 2], np.zeros((2, 4, 4)), [0, 1])
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(VitParetoError, match="train-images-idx3-ubyte is truncated"):
        load_data(f"fashion-mnist:{root}", 8)
    path.write_bytes(b"\x00\x00\x0d\x03" + bytes(60))
    with pytest.raises(VitParetoError, match="bad magic number"):
        load_data(f"fashion-mnist:{root}", 8)
    write_idx(path, np.zeros((3, 4, 4)))
    gz = root / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:20])
    with pytest.raises(VitParetoError, match="t10k-images-idx3-ubyte.gz"):
        load_data(f"fashion-mnist:{root}", 8)


def _png(path, size=(10, 12), mode="RGB", value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 255 - value, 7)).save(path)


def test_imagefolder_train_val_subfolders(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / "train" / cls / f"{i}.png", value=40 * i)
        _png(tmp_path / "val" / cls / "0.png", mode="L", size=(7, 5))  # grayscale -> 3 channels
    d = load_data(f"imagefolder:{tmp_path}", 16, batch_size=4)
    assert d.classes == ["cat", "dog"] and d.num_classes == 2
    assert (len(d.train.dataset), len(d.val.dataset)) == (6, 2)
    xv, yv = _all(d.val)
    assert xv.shape == (2, 3, 16, 16) and yv.tolist() == [0, 1]
    assert next(iter(d.train))[0].shape == (4, 3, 16, 16)


def test_imagefolder_seeded_split(tmp_path):
    for cls in ("a", "b"):
        for i in range(5):
            _png(tmp_path / cls / f"{i}.png", value=20 * i + (cls == "b"))
    d = load_data(f"imagefolder:{tmp_path}", (8, 10), val_fraction=0.2, limit=None)
    assert (len(d.train.dataset), len(d.val.dataset)) == (8, 2)
    xv, yv = _all(d.val)
    assert sorted(yv.tolist()) == [0, 1] and xv.shape == (2, 3, 8, 10)
    again = _all(load_data(f"imagefolder:{tmp_path}", (8, 10)).val)
    assert torch.equal(again[0], xv) and torch.equal(again[1], yv)
    limited = load_data(f"imagefolder:{tmp_path}", 8, limit=3)
    assert (len(limited.train.dataset), len(limited.val.dataset)) == (3, 2)


def test_cifar_download_offline_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(VitParetoError, match=r"could not download cifar10 .*no network"):
        load_data(f"cifar10:{tmp_path}", 32, download=True)


@pytest.mark.parametrize(
    "spec, kwargs, match",
    [
        ("fashion-mnist:{tmp}/nope", {}, "apt-get install dataset-fashion-mnist"),
        ("imagefolder:{tmp}", {}, "empty ImageFolder"),
        ("imagefolder:{tmp}/nope", {}, "does not exist"),
        ("cifar10:{tmp}", {}, "cifar10 not found .*download=True"),
        ("cifar100:{tmp}", {}, "cifar100 not found .*download=True"),
        ("mnist", {}, "unknown dataset spec 'mnist'; accepted: digits, fashion-mnist"),
        ("digits:/x", {}, "unknown dataset spec"),
        ("imagefolder:", {}, "nothing after ':'"),
        ("digits", {"img_size": 0}, "img_size must be"),
        ("digits", {"val_fraction": 1.0}, "val_fraction must be"),
        ("digits", {"limit": 0}, "limit must be"),
    ],
)
def test_user_errors(tmp_path, spec, kwargs, match):
    kwargs = {"img_size": 8, **kwargs}
    with pytest.raises(VitParetoError, match=match):
        load_data(spec.format(tmp=tmp_path), **kwargs)


def test_imagefolder_with_empty_class_folder_or_half_layout(tmp_path):
    (tmp_path / "cls").mkdir()
    with pytest.raises(VitParetoError, match="empty ImageFolder"):
        load_data(f"imagefolder:{tmp_path}", 8)
    _png(tmp_path / "x" / "train" / "a" / "0.png")
    with pytest.raises(VitParetoError, match="has train/ but no val/"):
        load_data(f"imagefolder:{tmp_path / 'x'}", 8)


def test_holdout_keeps_the_official_test_split_apart(tmp_path):
    """With ``holdout``, validation is carved out of the training split (seeded, stratified,
    disjoint from what trains) and the official test split is untouched; without it, as
    runs before did, the official split validates. Datasets without one are unchanged."""
    rng = np.random.default_rng(1)
    train_x, labels = rng.integers(0, 256, (20, 4, 4)), [i % 2 for i in range(20)]
    test_x = rng.integers(0, 256, (6, 4, 4))
    fake_fashion(tmp_path / "fm", train_x, labels, test_x, [0, 1] * 3)
    spec = f"fashion-mnist:{tmp_path / 'fm'}"
    d = load_data(spec, 4, val_fraction=0.25, holdout=True, mean=(0, 0, 0), std=(1, 1, 1))
    assert (len(d.train.dataset), len(d.val.dataset), len(d.test.dataset)) == (15, 5, 6)
    xt, _ = _all(d.test)
    assert torch.equal(torch.round(xt * 255).byte()[:, 0], torch.tensor(test_x).byte())
    train_rows = {
        tuple(torch.round(x[0] * 255).byte().flatten().tolist()) for x in _all(d.train)[0]
    }
    val_x, val_y = _all(d.val)
    val_rows = {tuple(torch.round(x[0] * 255).byte().flatten().tolist()) for x in val_x}
    assert not train_rows & val_rows and len(train_rows | val_rows) == 20  # a partition
    assert sorted(val_y.tolist()) in ([0, 0, 1, 1, 1], [0, 0, 0, 1, 1])  # stratified
    again = load_data(spec, 4, val_fraction=0.25, holdout=True, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.equal(_all(again.val)[0], val_x)
    seeds = [
        _all(load_data(spec, 4, val_fraction=0.25, holdout=True, seed=k).val)[0] for k in (0, 1)
    ]
    assert not torch.equal(*seeds)  # another seed, another validation part
    legacy = load_data(spec, 4)
    assert legacy.test is None and len(legacy.val.dataset) == 6
    digits = load_data("digits", 8, holdout=True)
    assert digits.test is None and len(digits.val.dataset) == len(
        load_data("digits", 8).val.dataset
    )
