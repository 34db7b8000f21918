"""Counts that describe a dataset as loaded: what ``metainf-repro data info <dataset>`` prints."""

from __future__ import annotations

import os
from typing import Any

from metainf.data.omniglot import load_characters
from metainf.data.registry import SPLITS, check_names, data_source, load_split


def dataset_info(dataset: str, data_root: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Source, class and image counts per split (and, for Omniglot, alphabets/characters/unique images)."""
    check_names(dataset)
    splits = {s: load_split(dataset, s, data_root, **options) for s in SPLITS}
    info: dict[str, Any] = {"dataset": dataset, "source": data_source(dataset, data_root, splits["train"])}
    if dataset == "omniglot":
        keep = {k: options[k] for k in ("image_size", "download", "disk_cache") if k in options}
        _, arrays = load_characters(data_root, **keep)
        chars = arrays["characters"].tolist()
        info.update(alphabets=len({c.split("/")[0] for c in chars}), characters=len(chars),
                    images=len(arrays["images"]))
    info["classes_total"] = sum(len(ci.class_names) for ci in splits.values())
    info["images_total"] = sum(len(ci.images) for ci in splits.values())
    info["image_shape"] = list(splits["train"].images.shape[1:])
    info["splits"] = {s: {"name": ci.name, "classes": len(ci.class_names), "images": len(ci.images)}
                      for s, ci in splits.items()}
    return info


def format_info(info: dict[str, Any]) -> str:
    """Human-readable text of ``dataset_info``'s result: one line per count, then a table of splits."""
    lines = [f"{k}: {v}" for k, v in info.items() if k != "splits"]
    lines.append(f"{'split':<6} {'classes':>8} {'images':>8}  name")
    for s, row in info.get("splits", {}).items():
        lines.append(f"{s:<6} {row['classes']:>8} {row['images']:>8}  {row['name']}")
    return "\n".join(lines)
