"""Fashion-MNIST-shaped IDX files written by the tests (the real ones ship with Debian's
dataset-fashion-mnist; these are small and made to order)."""

from __future__ import annotations

import gzip

import numpy as np


def write_idx(path, array, gz=False):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + array.tobytes())


def fake_fashion(root, train_images, train_labels, val_images, val_labels):
    root.mkdir(exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte", train_images)
    write_idx(root / "train-labels-idx1-ubyte.gz", train_labels, gz=True)
    write_idx(root / "t10k-images-idx3-ubyte.gz", val_images, gz=True)
    write_idx(root / "t10k-labels-idx1-ubyte", val_labels)
