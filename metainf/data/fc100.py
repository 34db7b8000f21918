"""FC100 (Oreshkin et al. 2018) from a folder tree ``<root>/FC100/{train,val,test}/<class_name>/*.png``.

FC100 splits CIFAR-100 by super-class so that meta-train, meta-val and meta-test share no super-class:
12 / 4 / 4 super-classes, i.e. 60 / 20 / 20 fine classes of 600 32x32 RGB images. The folder tree carries that
split; ``FC100_SUPERCLASS_SPLIT`` states the standard one (CIFAR-100 coarse labels, from the TADAM
supplementary material as used by MetaOptNet and learn2learn) for the record. Images are ``ClassImages``
[N, 3, S, S] in [0, 1] (S = ``image_size``, 32 by default); decoded arrays are cached like Omniglot's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

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
FC100_SUPERCLASS_SPLIT: dict[str, tuple[str, ...]] = {
    "train": ("fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
              "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
              "trees", "vehicles_1", "vehicles_2"),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}


def _list_split(split_dir: Path) -> dict[str, list[Path]]:
    if not split_dir.is_dir():
        raise DataNotFoundError(f"FC100 folder {split_dir.parent} has no {split_dir.name!r} subfolder. Expected "
                                "FC100/{train,val,test}/<class_name>/*.png; add the missing split.")
    classes = sorted(d for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise DataFormatError(f"FC100 split folder {split_dir} has no class folders. Add "
                              f"{split_dir}/<class_name>/*.png.")
    out = {}
    for d in classes:
        pngs = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() == ".png")
        if not pngs:
            raise DataFormatError(f"FC100 class folder {d} has no PNG images. Restore them or remove the folder.")
        out[d.name] = pngs
    return out


def load_fc100(split: str, data_root: str | os.PathLike | None = None, *, image_size: int = 32,
               disk_cache: bool = True) -> ClassImages:
    """FC100 ``split`` ("train", "val", "test"): one class per folder, classes sorted by name."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {list(SPLITS)}")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    listing = _list_split(resolve_dataset_dir("fc100", data_root) / split)
    files = [f for fs in listing.values() for f in fs]

    def build() -> dict[str, np.ndarray]:
        return {"images": np.stack([decode_image(read_file_bytes(f), str(f), "RGB", image_size) for f in files])}

    arrays = cached_arrays("fc100", {"files": fingerprint(files), "image_size": image_size}, build, disk=disk_cache)
    labels = np.concatenate([np.full(len(fs), k) for k, fs in enumerate(listing.values())])
    images = torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).float() / 255.0
    return ClassImages(name=f"fc100-{split}", images=images, labels=torch.from_numpy(labels).long(),
                       class_names=list(listing), image_ids=[f"fc100:{split}/{f.parent.name}/{f.name}" for f in files])
