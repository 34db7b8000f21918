"""Tiny generated datasets in every on-disk format the loaders read, written into a test's tmp_path."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metainf.data.roots import DataNotFoundError, resolve_dataset_dir

# alphabet -> character -> PNG bytes per drawer (an empty dict / list makes an empty folder)
Tree = dict[str, dict[str, list[bytes]]]


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    """Encode a uint8 array ([H, W] or [H, W, 3]) as PNG, optionally converted to PIL ``mode``."""
    im = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if mode is not None:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def glyph(rng: np.random.Generator, size: int = 105) -> bytes:
    """An Omniglot-like 1-bit PNG: white background with a few black strokes."""
    img = np.full((size, size), 255, dtype=np.uint8)
    for _ in range(3):
        r, c = rng.integers(0, size - 20, size=2)
        if rng.random() < 0.5:
            img[r:r + 4, c:c + 20] = 0
        else:
            img[r:r + 20, c:c + 4] = 0
    return png_bytes(img, "1")


def omniglot_tree(alphabets: dict[str, int], drawers: int = 4, seed: int = 0) -> Tree:
    """``{alphabet: {characterNN: [png, ...]}}`` with ``alphabets[name]`` characters of ``drawers`` images."""
    rng = np.random.default_rng(seed)
    return {a: {f"character{c + 1:02d}": [glyph(rng) for _ in range(drawers)] for c in range(n)}
            for a, n in alphabets.items()}


def write_omniglot_zip(path: Path, tree: Tree) -> Path:
    """Write ``tree`` as ``<stem>/<alphabet>/<character>/<id>_<drawer>.png`` with folder entries, like Lake's zips."""
    stem = path.stem
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{stem}/", b"")
        for a, chars in tree.items():
            zf.writestr(f"{stem}/{a}/", b"")
            for c, images in chars.items():
                zf.writestr(f"{stem}/{a}/{c}/", b"")
                for d, data in enumerate(images):
                    zf.writestr(f"{stem}/{a}/{c}/{c[-2:]}00_{d + 1:02d}.png", data)
    return path


def write_omniglot_dir(folder: Path, tree: Tree) -> Path:
    """Write ``tree`` as a folder tree ``folder/<alphabet>/<character>/<id>_<drawer>.png``."""
    for a, chars in tree.items():
        (folder / a).mkdir(parents=True, exist_ok=True)
        for c, images in chars.items():
            (folder / a / c).mkdir(parents=True, exist_ok=True)
            for d, data in enumerate(images):
                (folder / a / c / f"{c[-2:]}00_{d + 1:02d}.png").write_bytes(data)
    return folder


def rgb_images(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` random uint8 RGB images [n, size, size, 3]."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def write_miniimagenet_pickles(folder: Path, n_classes: int = 6, per_class: int = 8, size: int = 84) -> Path:
    """learn2learn-format pickles for train/validation/test, classes interleaved in ``image_data``."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, mode in enumerate(("train", "validation", "test")):
        images = rgb_images(n_classes * per_class, size, seed=k)
        class_dict = {f"n{k}{c:07d}": list(range(c, n_classes * per_class, n_classes)) for c in range(n_classes)}
        with open(folder / f"mini-imagenet-cache-{mode}.pkl", "wb") as fh:
            pickle.dump({"image_data": images, "class_dict": class_dict}, fh)
    return folder


def write_miniimagenet_csv(folder: Path, n_classes: int = 6, per_class: int = 8, size: int = 84) -> Path:
    """``{train,val,test}.csv`` (header ``filename,label``) plus PNGs in ``images/``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for k, split in enumerate(("train", "val", "test")):
        images = rgb_images(n_classes * per_class, size, seed=10 + k)
        rows = ["filename,label"]
        for i, img in enumerate(images):
            label = f"n{k}{i % n_classes:07d}"
            name = f"{label}{i:08d}.png"
            (folder / "images" / name).write_bytes(png_bytes(img))
            rows.append(f"{name},{label}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


def write_fc100(root: Path, classes: tuple[int, int, int] = (6, 5, 5), per_class: int = 4, size: int = 32) -> Path:
    """``root/FC100/{train,val,test}/<class>/*.png`` with the given number of classes per split."""
    for k, (split, n) in enumerate(zip(("train", "val", "test"), classes, strict=True)):
        images = rgb_images(n * per_class, size, seed=20 + k)
        for c in range(n):
            d = root / "FC100" / split / f"{split}_class{c}"
            d.mkdir(parents=True)
            for j in range(per_class):
                (d / f"{j}.png").write_bytes(png_bytes(images[c * per_class + j]))
    return root


def write_mnist_raw(root: Path, per_digit_train: int = 6, per_digit_test: int = 3) -> Path:
    """Tiny uncompressed MNIST idx files in ``root/MNIST/raw`` as torchvision reads them."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, per in (("train", per_digit_train), ("t10k", per_digit_test)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, len(labels), 28, 28)
                                                         + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(labels)) + labels.tobytes())
    return root


def shared_omniglot_dir() -> Path:
    """The shared real Omniglot subsets found through ``metainf.data.roots``, or skip the test saying why."""
    try:
        d = resolve_dataset_dir("omniglot", None)
    except DataNotFoundError as exc:
        pytest.skip(f"real Omniglot subsets not available: {exc}")
    if not all((d / f"images_background_small{i}.zip").is_file() for i in (1, 2)):
        pytest.skip(f"{d} is not the shared Omniglot subsets folder (images_background_small1/2.zip)")
    return d
