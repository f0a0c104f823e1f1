"""Datasets: one function from a dataset spec string to train and validation loaders.

Every candidate is scored on the same validation set, so the split must be a pure function
of the spec and the seed. Nothing is downloaded unless asked (``download=True``, CIFAR only):
machines without internet test on what ships, scikit-learn's ``digits`` and Debian's
``dataset-fashion-mnist`` package.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms
from torchvision.datasets import ImageFolder

from vitpareto.evaluators._idx import idx_file, read_idx
from vitpareto.spaces import VitParetoError

# where Debian's `dataset-fashion-mnist` package installs the (gzipped) IDX files
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
SPEC_FORMS = (
    "digits, fashion-mnist, fashion-mnist:DIR, imagefolder:PATH, cifar10:PATH, cifar100:PATH"
)
# an in-memory split whose resized float32 copy would be larger than this is resized per item
EAGER_LIMIT_BYTES = 1 << 30


@dataclass
class Data:
    """Train and validation loaders of one dataset, with its class names and its spec, and
    the official test split kept apart (``holdout``; None otherwise)."""

    train: DataLoader
    val: DataLoader
    classes: list[str]
    spec: str  # as given by the user: recorded in checkpoints and in the results database
    test: DataLoader | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DEFAULT_MEAN = (0.5, 0.5, 0.5)  # every dataset is normalised so unless told otherwise
DEFAULT_STD = (0.5, 0.5, 0.5)


def load_data(
    spec: str,
    img_size: int | tuple[int, int],
    batch_size: int = 64,
    seed: int = 0,
    val_fraction: float = 0.2,
    num_workers: int = 0,
    download: bool = False,
    mean: tuple[float, float, float] = DEFAULT_MEAN,
    std: tuple[float, float, float] = DEFAULT_STD,
    limit: int | None = None,
    memory_limit: int = EAGER_LIMIT_BYTES,
    holdout: bool = False,
    channels: int = 3,
) -> Data:
    """Build train and validation loaders for ``spec`` (see ``SPEC_FORMS``).

    Images come out as float tensors ``[B, channels, H, W]``: resized (bilinear) to
    ``img_size``, grayscale repeated to three channels (or colour reduced to its luminance
    for ``channels=1``, the input of a model with ``in_chans=1``), normalised with ``mean``
    and ``std`` (per RGB channel; see ``channel_norm``). The same
    ``seed`` gives the same split (where the dataset has no official one, ``val_fraction``
    of it is held out, stratified by class) and the same training order; the validation
    loader is not shuffled. ``limit`` keeps a seeded random ``limit`` examples of each split.
    ``download`` applies to CIFAR only. Bundled and IDX datasets are held in memory,
    resized once, when that copy fits in ``memory_limit`` bytes; else each image is
    resized when it is read. ``holdout``: where the dataset has an official test split
    (Fashion-MNIST, CIFAR, an ImageFolder with train/ and val/), validation is
    ``val_fraction`` of the training split (seeded, stratified) and the official split is
    kept untouched as ``test``, so that a front chosen on validation is reported on data
    it was not chosen on; without it the official split validates (as runs before did).
    """
    size = _check_args(img_size, batch_size, val_fraction, num_workers, mean, std, limit)
    if channels not in (1, 3):
        raise VitParetoError(
            f"the datasets give grayscale or RGB images, not {channels}-channel ones: train a "
            "model with in_chans=1 or 3 (a model of other channels needs data of its own)"
        )
    name, sep, arg = spec.partition(":")
    name = name.strip().lower()
    if sep and not arg.strip():
        raise VitParetoError(f"dataset spec {spec!r} has nothing after ':'; accepted: {SPEC_FORMS}")
    path = Path(arg.strip()).expanduser() if sep else None
    norm = channel_norm(mean, std, channels)
    if name == "digits" and path is None:
        train, val, classes = _digits(size, seed, val_fraction, norm, limit, memory_limit)
    elif name == "fashion-mnist":
        train, val, classes = _fashion_mnist(
            path or FASHION_MNIST_DIR, size, seed, norm, limit, memory_limit
        )
    elif name == "imagefolder" and path is not None:
        train, val, classes = _image_folder(path, size, seed, val_fraction, norm, limit)
    elif name in ("cifar10", "cifar100") and path is not None:
        train, val, classes = _cifar(name, path, size, seed, norm, limit, download)
    else:
        raise VitParetoError(f"unknown dataset spec {spec!r}; accepted: {SPEC_FORMS}")
    test = None
    official = name in ("fashion-mnist", "cifar10", "cifar100") or (
        name == "imagefolder" and (path / "train").is_dir()
    )
    if holdout and official:
        test = val
        train, val = _carve(train, val_fraction, seed)
    loader_args = dict(batch_size=batch_size, num_workers=num_workers, drop_last=False)
    generator = torch.Generator().manual_seed(seed)
    return Data(
        train=DataLoader(train, shuffle=True, generator=generator, **loader_args),
        val=DataLoader(val, shuffle=False, **loader_args),
        classes=list(classes),
        spec=spec,
        test=None if test is None else DataLoader(test, shuffle=False, **loader_args),
    )


def _labels(dataset: Dataset) -> np.ndarray:
    """Every label of a dataset, without reading its images."""
    if isinstance(dataset, Subset):
        return _labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for attr in ("labels", "targets"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr))
    raise VitParetoError(f"cannot read the labels of {type(dataset).__name__} to split it")


def _carve(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded, stratified validation part carved out of a training split."""
    train, val = _split(_labels(dataset), val_fraction, seed)
    return Subset(dataset, train.tolist()), Subset(dataset, val.tolist())


LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's and torchvision's grayscale


def channel_norm(mean, std, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel normalisation of ``channels``-channel images, from the RGB ``mean``
    and ``std``: unchanged for 3, their luminance-weighted sums for 1 (grayscale)."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if channels == 3:
        return mean, std
    return (sum(w * m for w, m in zip(LUMINANCE, mean, strict=True)),), (
        sum(w * s for w, s in zip(LUMINANCE, std, strict=True)),
    )


def _check_args(img_size, batch_size, val_fraction, num_workers, mean, std, limit):
    """Reject bad arguments with one clear message; return the image size as (H, W)."""

    def is_size(s) -> bool:
        return isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0

    if isinstance(img_size, numbers.Integral):
        img_size = (img_size, img_size)
    if (
        not isinstance(img_size, (tuple, list))
        or len(img_size) != 2
        or not all(map(is_size, img_size))
    ):
        raise VitParetoError(
            f"img_size must be a positive int or (height, width), got {img_size!r}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise VitParetoError(f"batch_size must be a positive int, got {batch_size!r}")
    if not 0 < val_fraction < 1:
        raise VitParetoError(
            f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}"
        )
    if not isinstance(num_workers, int) or num_workers < 0:
        raise VitParetoError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise VitParetoError(f"mean and std need 3 values each, std non-zero; got {mean}, {std}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise VitParetoError(f"limit must be a positive int or None, got {limit!r}")
    return (int(img_size[0]), int(img_size[1]))


def _split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/val indices; stratified by class whenever every class allows it."""

    n = len(labels)
    if n < 2:
        raise VitParetoError(f"only {n} example(s): need at least 2 to split into train and val")
    n_val = min(max(math.ceil(val_fraction * n), 1), n - 1)
    counts = np.unique(labels, return_counts=True)[1]
    k = len(counts)
    stratify = labels if counts.min() >= 2 and n_val >= k and n - n_val >= k else None
    from sklearn.model_selection import train_test_split  # 1 s of import, on first use

    train, val = train_test_split(
        np.arange(n), test_size=n_val, random_state=seed, stratify=stratify
    )
    return np.sort(train), np.sort(val)


def _limit(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of the examples kept by ``limit``: the first ``limit`` after a seeded shuffle."""
    if limit is None or limit >= n:
        return np.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(perm[:limit])


def _limited(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """``dataset`` cut down to what ``limit`` keeps (unchanged without a limit)."""
    if limit is None or limit >= len(dataset):
        return dataset
    return Subset(dataset, _limit(len(dataset), limit, seed).tolist())


class _InMemoryImages(Dataset):
    """Images held as one tensor ``[N, C, h, w]``, resized once up front when that fits.

    When the resized float32 copy would exceed ``memory_limit`` bytes (Fashion-MNIST at
    large sizes), the raw images are kept and each item is resized when it is read.
    """

    def __init__(self, images: torch.Tensor, labels, scale: float, size, norm, memory_limit):
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.scale = scale
        self.size = tuple(size)
        self.channels = len(norm[0])
        self.mean = torch.tensor(norm[0]).view(-1, 1, 1)
        self.std = torch.tensor(norm[1]).view(-1, 1, 1)
        n, c = images.shape[:2]
        self.lazy = n * c * self.size[0] * self.size[1] * 4 > memory_limit
        self.images = images
        if not self.lazy:  # resize in chunks, so that only one chunk is ever resized at a time
            chunks = [self._resize(images[i : i + 4096]) for i in range(0, n, 4096)]
            self.images = torch.cat(chunks) if chunks else torch.empty(0, c, *self.size)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / self.scale
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(
            x, size=self.size, mode="bilinear", align_corners=False, antialias=True
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self._resize(self.images[i : i + 1])[0] if self.lazy else self.images[i]
        if x.shape[0] != self.channels:  # grayscale to RGB, or RGB to its luminance
            x = x.expand(3, -1, -1) if x.shape[0] == 1 else _luminance(x)
        return (x - self.mean) / self.std, int(self.labels[i])


def _luminance(x: torch.Tensor) -> torch.Tensor:
    return torch.tensordot(torch.tensor(LUMINANCE, dtype=x.dtype), x, dims=1).unsqueeze(0)


def _digits(size, seed, val_fraction, norm, limit, memory_limit):
    """scikit-learn's bundled 8x8 digits (values 0..16), split by ``seed``."""

    from sklearn.datasets import load_digits  # 1 s of import, on first use

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32)).unsqueeze(1)
    labels = d.target.astype(np.int64)
    splits = []
    for idx in _split(labels, val_fraction, seed):
        idx = idx[_limit(len(idx), limit, seed)]
        splits.append(_InMemoryImages(images[idx], labels[idx], 16.0, size, norm, memory_limit))
    return splits[0], splits[1], [str(i) for i in range(10)]


def _fashion_mnist(root: Path, size, seed, norm, limit, memory_limit):
    """Fashion-MNIST from IDX files: the official train set trains, t10k validates."""
    if not root.is_dir():
        raise VitParetoError(
            f"Fashion-MNIST directory {root} does not exist: install it with "
            "`apt-get install dataset-fashion-mnist` or give `fashion-mnist:DIR` with DIR "
            "holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
            "and t10k-labels-idx1-ubyte (optionally .gz)"
        )
    splits = []
    for part in ("train", "t10k"):
        images = read_idx(idx_file(root, f"{part}-images-idx3-ubyte"), ndim=3)
        labels = read_idx(idx_file(root, f"{part}-labels-idx1-ubyte"), ndim=1)
        if len(images) != len(labels) or (len(labels) and labels.max() >= 10):
            raise VitParetoError(
                f"Fashion-MNIST {part} files in {root} do not match: {len(images)} images, "
                f"{len(labels)} labels (labels must be 0..9); replace them with the official files"
            )
        idx = _limit(len(labels), limit, seed)
        images = torch.from_numpy(images[idx]).unsqueeze(1)
        splits.append(
            _InMemoryImages(images, labels[idx].astype(np.int64), 255.0, size, norm, memory_limit)
        )
    return splits[0], splits[1], FASHION_MNIST_CLASSES


def _pil_transform(size, norm):
    """Resize (bilinear), to tensor, normalise (to grayscale first for one channel): the
    transform of the image-file datasets."""

    gray = [transforms.Grayscale(1)] if len(norm[0]) == 1 else []
    return transforms.Compose(
        [
            *gray,
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.ToTensor(),
            transforms.Normalize(*norm),
        ]
    )


def _image_folder(path: Path, size, seed, val_fraction, norm, limit):
    """ImageFolder: ``PATH/train`` and ``PATH/val`` when both exist, else a seeded split."""

    if not path.is_dir():
        raise VitParetoError(
            f"ImageFolder path {path} does not exist or is not a directory; "
            "expected PATH/<class>/<image> or PATH/train/<class>/... and PATH/val/<class>/..."
        )
    has = {part: (path / part).is_dir() for part in ("train", "val")}
    if has["train"] != has["val"]:
        missing = "val" if has["train"] else "train"
        raise VitParetoError(
            f"ImageFolder {path} has {'train' if has['train'] else 'val'}/ but no {missing}/: "
            f"add {path / missing}/<class>/... or put class folders directly in {path}"
        )
    transform = _pil_transform(size, norm)

    def folder(root: Path):
        # ImageFolder converts every image to RGB, so grayscale comes out with 3 channels
        try:
            return ImageFolder(root, transform=transform)
        except FileNotFoundError as e:
            raise VitParetoError(
                f"empty ImageFolder {root}: {str(e).strip()} (expected {root}/<class>/<image>)"
            ) from e

    if has["train"]:
        train, val = folder(path / "train"), folder(path / "val")
        if train.classes != val.classes:
            raise VitParetoError(
                f"ImageFolder {path}: train/ has classes {train.classes} but val/ has "
                f"{val.classes}; give both the same class folders"
            )
        classes = train.classes
    else:
        full = folder(path)
        classes = full.classes
        train_idx, val_idx = _split(np.asarray(full.targets), val_fraction, seed)
        train, val = Subset(full, train_idx.tolist()), Subset(full, val_idx.tolist())
    return _limited(train, limit, seed), _limited(val, limit, seed), classes


def _cifar(name: str, root: Path, size, seed, norm, limit, download: bool):
    """CIFAR-10/100 through torchvision, official train/test split; downloads only if asked."""

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    transform = _pil_transform(size, norm)
    try:
        train = cls(root, train=True, transform=transform, download=download)
        val = cls(root, train=False, transform=transform, download=False)
    except (RuntimeError, OSError) as e:  # urllib's URLError is an OSError
        if download:
            raise VitParetoError(
                f"could not download {name} to {root} (no network?): {e}; place "
                f"{cls.filename} or its extracted {cls.base_folder}/ in {root} by hand"
            ) from e
        raise VitParetoError(
            f"{name} not found in {root}: put {cls.filename} or its extracted "
            f"{cls.base_folder}/ there, or pass download=True (needs internet)"
        ) from e
    return _limited(train, limit, seed), _limited(val, limit, seed), train.classes
