"""Mini-ImageNet in the two formats users have: learn2learn's pickles and the CSV-split image folder.

1. ``mini-imagenet-cache-{train,validation,test}.pkl``: a dict with ``image_data`` (uint8 [N, 84, 84, 3]) and
   ``class_dict`` ({class name: [indices]}), as ``learn2learn.vision.datasets.MiniImagenet`` reads it. When
   learn2learn is importable that class loads the file (``use_learn2learn=None`` picks it automatically);
   otherwise the pickle is read here with the same class order (``class_dict`` insertion order).
   Pickles can run code when loaded: only load files you trust.
2. ``train.csv`` / ``val.csv`` / ``test.csv`` with header ``filename,label`` and the images in ``images/``
   (Ravi & Larochelle's layout); classes are the sorted labels; decoded arrays are cached like Omniglot's.

Images come out as ``ClassImages`` [N, 3, S, S] in [0, 1] (S = ``image_size``, 84 by default; other sizes are
resized). ``max_per_class`` keeps the first images of each class in file order to bound memory.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from metainf.data.roots import (
    DataFormatError,
    DataNotFoundError,
    cached_arrays,
    decode_image,
    fingerprint,
    read_file_bytes,
    resolve_dataset_dir,
)
from metainf.data.tasks import ClassImages

SPLITS = ("train", "val", "test")
PICKLE_MODES = {"train": "train", "val": "validation", "test": "test"}
REQUIRED_KEYS = ("image_data", "class_dict")


def _from_learn2learn(path: Path, mode: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from learn2learn.vision.datasets import MiniImagenet

    try:
        ds = MiniImagenet(root=str(path.parent), mode=mode)
    except (KeyError, TypeError, IndexError) as exc:  # learn2learn indexes the pickle without checking its type
        raise _wrong_keys(path, f"{type(exc).__name__}: {exc}") from exc
    except (pickle.UnpicklingError, EOFError) as exc:
        raise DataFormatError(f"{path} is not a readable pickle ({exc}). Re-create or re-download it.") from exc
    names = sorted(ds.class_idx, key=ds.class_idx.get)
    images = ds.x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return images, np.asarray(ds.y, dtype=np.int64), names


def _wrong_keys(path: Path, found: str) -> DataFormatError:
    return DataFormatError(
        f"{path} is not in learn2learn's Mini-ImageNet format ({found}): it must be a dict with keys "
        f"'image_data' (uint8 array [N, 84, 84, 3]) and 'class_dict' ({{class name: [image indices]}}). "
        "Re-create the file in that format or use the CSV layout (train.csv/val.csv/test.csv + images/).")


def _from_pickle(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise DataFormatError(f"{path} is not a readable pickle ({exc}). Re-create or re-download it.") from exc
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS):
        found = f"keys {sorted(map(str, data))}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise _wrong_keys(path, f"found {found}")
    images = np.asarray(data["image_data"])
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise _wrong_keys(path, f"image_data is {images.dtype} {images.shape}")
    labels = np.full(len(images), -1, dtype=np.int64)
    names = [str(n) for n in data["class_dict"]]
    for k, idx in enumerate(data["class_dict"].values()):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(images) or (labels[idx] != -1).any()):
            raise _wrong_keys(path, f"class_dict[{names[k]!r}] has indices outside 0..{len(images) - 1} "
                                    "or shared with another class")
        labels[idx] = k
    if (labels == -1).any():
        raise _wrong_keys(path, f"{int((labels == -1).sum())} images belong to no class in class_dict")
    return images, labels, names


def _read_csv_split(csv_path: Path, image_size: int, disk_cache: bool) -> dict[str, np.ndarray]:
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataFormatError(f"{csv_path} is not a UTF-8 CSV ({exc}). Fix the CSV (Ravi & Larochelle's split "
                              "format: header 'filename,label').") from exc
    if not rows or "filename" not in rows[0] or "label" not in rows[0]:
        raise DataFormatError(f"{csv_path} must have the header 'filename,label' and at least one row. "
                              "Fix the CSV (Ravi & Larochelle's split format).")
    short = next((n for n, r in enumerate(rows, 2) if not r["filename"] or not r["label"]), None)
    if short is not None:
        raise DataFormatError(f"{csv_path} line {short} lacks a filename or a label. "
                              "Fix the CSV (every row 'filename,label').")
    files = [csv_path.parent / "images" / r["filename"] for r in rows]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataNotFoundError(f"{len(missing)} images listed in {csv_path} are missing, e.g. {missing[0]}. "
                                "Put the images in the images/ folder beside the CSV.")

    def build() -> dict[str, np.ndarray]:
        names = sorted({r["label"] for r in rows})
        index = {n: k for k, n in enumerate(names)}
        return {"images": np.stack([decode_image(read_file_bytes(f), str(f), "RGB", image_size) for f in files]),
                "labels": np.asarray([index[r["label"]] for r in rows], dtype=np.int64),
                "class_names": np.asarray(names, dtype=str),
                "files": np.asarray([r["filename"] for r in rows], dtype=str)}

    key = {"files": fingerprint([csv_path, *files]), "image_size": image_size}
    return cached_arrays("miniimagenet-csv", key, build, disk=disk_cache)


def _keep_first(labels: np.ndarray, max_per_class: int | None) -> np.ndarray:
    if max_per_class is None:
        return np.arange(len(labels))
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be a positive count or None, got {max_per_class}")
    keep = [np.flatnonzero(labels == c)[:max_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def _to_class_images(split: str, images: np.ndarray, labels: np.ndarray, names: list[str], ids: list[str],
                     image_size: int) -> ClassImages:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (image_size, image_size) and len(x):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False).clamp(0.0, 1.0)
    return ClassImages(name=f"miniimagenet-{split}", images=x, labels=torch.from_numpy(labels).long(),
                       class_names=names, image_ids=ids)


def load_miniimagenet(split: str, data_root: str | os.PathLike | None = None, *, image_size: int = 84,
                      max_per_class: int | None = None, use_learn2learn: bool | None = None,
                      disk_cache: bool = True) -> ClassImages:
    """Mini-ImageNet ``split`` ("train", "val", "test"); the pickle is preferred when both formats are present."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {list(SPLITS)}")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    root = resolve_dataset_dir("miniimagenet", data_root)
    mode = PICKLE_MODES[split]
    pkl, csv_path = root / f"mini-imagenet-cache-{mode}.pkl", root / f"{split}.csv"
    if pkl.is_file():
        have_l2l = importlib.util.find_spec("learn2learn") is not None
        if use_learn2learn and not have_l2l:
            raise ImportError("use_learn2learn=True but learn2learn is not installed; install it (see "
                              "pyproject extra 'l2l') or pass use_learn2learn=None to read the pickle directly")
        use = have_l2l if use_learn2learn is None else use_learn2learn
        images, labels, names = _from_learn2learn(pkl, mode) if use else _from_pickle(pkl)
        ids = [f"miniimagenet:{pkl.name}/{i}" for i in range(len(images))]
    elif csv_path.is_file():
        arrays = _read_csv_split(csv_path, image_size, disk_cache)
        images, labels, names = arrays["images"], arrays["labels"], arrays["class_names"].tolist()
        ids = [f"miniimagenet:images/{f}" for f in arrays["files"]]
    else:
        raise DataNotFoundError(f"Mini-ImageNet folder {root} has neither {pkl.name} nor {csv_path.name} (+ images/) "
                                f"for split {split!r}. Add one of them.")
    keep = _keep_first(labels, max_per_class)
    return _to_class_images(split, images[keep], labels[keep], names, [ids[i] for i in keep], image_size)
