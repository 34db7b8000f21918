"""Omniglot from ``<alphabet>/<character>/*.png`` trees, read from folders or straight from zips.

Sources found in the dataset folder (and its ``omniglot-py/`` subfolder, where torchvision puts them):
``images_background*`` and ``images_evaluation*``, each either a folder or a ``.zip`` whose members are
``[<zip stem>/]<alphabet>/<character>/<id>_<drawer>.png``. That covers the full set as
``torchvision.datasets.Omniglot`` downloads it (964 + 659 characters) and the small subsets
(``images_background_small1.zip``, ``images_background_small2.zip``). A character present in several sources
(Greek and Latin are in both small subsets) is loaded once; its copies must hold the same files.

Images are resized to ``image_size`` (LANCZOS, as learn2learn does), single channel, and inverted so strokes
are 1 and background 0. Rotations by 90/180/270 degrees (``np.rot90``, counter-clockwise) can be added as new
classes ``<alphabet>/<character>@rot<deg>``. Meta-train/val/test are a seeded split of *characters* (all
rotations of a character stay in one split), recorded by :func:`omniglot_split`.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metainf.data.roots import (
    DataFormatError,
    cached_arrays,
    decode_image,
    download_dir,
    read_file_bytes,
    resolve_dataset_dir,
)
from metainf.data.tasks import ClassImages

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True)
class _Source:
    name: str
    path: Path
    is_zip: bool

    def where(self, member: str) -> str:
        """Name a member for messages: ``archive.zip:member`` or the path on disk."""
        return f"{self.path}:{member}" if self.is_zip else str(self.path / member)


# (alphabet, character) -> [(file name, size, member name in zip or full path)]
_Listing = dict[tuple[str, str], list[tuple[str, int, str]]]


def find_sources(dataset_dir: Path) -> list[_Source]:
    """The ``images_background*`` / ``images_evaluation*`` folders and zips under ``dataset_dir`` (folders win)."""
    found: dict[str, _Source] = {}
    for base in (dataset_dir, dataset_dir / "omniglot-py"):
        for p in sorted(base.glob("images_*")):
            if not p.name.startswith(("images_background", "images_evaluation")):
                continue
            if p.is_dir():
                found[p.name] = _Source(p.name, p, False)
            elif p.suffix == ".zip":
                found.setdefault(p.stem, _Source(p.stem, p, True))
    return [found[k] for k in sorted(found)]


def _source_key(src: _Source) -> list:
    if src.is_zip:
        st = src.path.stat()
        return [str(src.path), st.st_size, st.st_mtime_ns]
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(src.path):
        dirnames.sort()
        h.update(f"D{os.path.relpath(dirpath, src.path)}\n".encode())
        for f in sorted(filenames):
            st = os.stat(os.path.join(dirpath, f))
            h.update(f"F{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return [str(src.path), h.hexdigest()]


def _list_zip(src: _Source) -> _Listing:
    try:
        with zipfile.ZipFile(src.path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise DataFormatError(f"{src.path} is not a readable zip ({exc}). Re-download or delete it.") from exc
    chars: _Listing = {}
    alphabets: set[str] = set()
    char_dirs: set[tuple[str, str]] = set()
    for info in infos:
        parts = info.filename.rstrip("/").split("/")
        if parts[0] == src.name:
            parts = parts[1:]
        if info.is_dir():
            if len(parts) >= 1:
                alphabets.add(parts[0])
            if len(parts) == 2:
                char_dirs.add((parts[0], parts[1]))
            continue
        if not parts[-1].lower().endswith(".png"):
            continue
        if len(parts) != 3:
            raise DataFormatError(f"{src.where(info.filename)}: expected [<zip stem>/]<alphabet>/<character>/"
                                  "<image>.png. Rebuild the zip with that layout.")
        alphabets.add(parts[0])
        char_dirs.add((parts[0], parts[1]))
        chars.setdefault((parts[0], parts[1]), []).append((parts[2], info.file_size, info.filename))
    _check_complete(src, alphabets, char_dirs, chars)
    return chars


def _list_dir(src: _Source) -> _Listing:
    chars: _Listing = {}
    alphabets = {p.name for p in src.path.iterdir() if p.is_dir()}
    char_dirs = {(a, c.name) for a in alphabets for c in (src.path / a).iterdir() if c.is_dir()}
    for a, c in char_dirs:
        pngs = sorted(f for f in (src.path / a / c).iterdir() if f.is_file() and f.suffix.lower() == ".png")
        if pngs:
            chars[(a, c)] = [(f.name, f.stat().st_size, str(f)) for f in pngs]
    _check_complete(src, alphabets, char_dirs, chars)
    return chars


def _check_complete(src: _Source, alphabets: set[str], char_dirs: set[tuple[str, str]], chars: _Listing) -> None:
    for a in sorted(alphabets):
        if not any(ca == a for ca, _ in char_dirs):
            raise DataFormatError(f"Omniglot alphabet folder {src.where(a + '/')} has no character folders. "
                                  "Restore its characters or remove the empty folder.")
    for a, c in sorted(char_dirs):
        if (a, c) not in chars:
            raise DataFormatError(f"Omniglot character folder {src.where(f'{a}/{c}/')} has no PNG images. "
                                  "Restore its images or remove the empty folder.")


def _merge(sources: Sequence[_Source]) -> dict[tuple[str, str], tuple[_Source, list[tuple[str, int, str]]]]:
    merged: dict[tuple[str, str], tuple[_Source, list[tuple[str, int, str]]]] = {}
    for src in sources:
        listing = _list_zip(src) if src.is_zip else _list_dir(src)
        for key, files in listing.items():
            files = sorted(files)
            if key not in merged:
                merged[key] = (src, files)
            elif [f[:2] for f in merged[key][1]] != [f[:2] for f in files]:
                raise DataFormatError(
                    f"Omniglot character {key[0]}/{key[1]} is in both {merged[key][0].path} and {src.path} with "
                    "different files. Keep only one copy of that character.")
    return merged


def _read_member(archive: zipfile.ZipFile, src: _Source, member: str) -> bytes:
    """One member's bytes; a bad CRC or a truncated member is a ``DataFormatError`` naming it and the fix."""
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataFormatError(f"{src.where(member)} cannot be read from the zip ({exc}). The archive is damaged: "
                              f"re-download or re-copy {src.path.name}.") from exc


def _decode(sources: Sequence[_Source], image_size: int) -> dict[str, np.ndarray]:
    merged = _merge(sources)
    images, char_index, file_names = [], [], []
    zips: dict[Path, zipfile.ZipFile] = {}
    try:
        for k, key in enumerate(sorted(merged)):
            src, files = merged[key]
            if src.is_zip and src.path not in zips:
                zips[src.path] = zipfile.ZipFile(src.path)
            for name, _, member in files:
                data = _read_member(zips[src.path], src, member) if src.is_zip else read_file_bytes(Path(member))
                images.append(255 - decode_image(data, src.where(member), "L", image_size))
                char_index.append(k)
                file_names.append(name)
    finally:
        for zf in zips.values():
            zf.close()
    keys = sorted(merged)
    return {
        "images": np.stack(images) if images else np.zeros((0, image_size, image_size), np.uint8),
        "char_index": np.asarray(char_index, dtype=np.int64),
        "characters": np.asarray([f"{a}/{c}" for a, c in keys], dtype=str),
        "files": np.asarray(file_names, dtype=str),
        "sources": np.asarray([s.name for s in sources], dtype=str),
    }


def _dataset_dir(data_root: str | os.PathLike | None, download: bool) -> Path:
    if not download:
        return resolve_dataset_dir("omniglot", data_root)
    from torchvision.datasets import Omniglot

    target = download_dir("omniglot", data_root)
    for background in (True, False):
        Omniglot(str(target), background=background, download=True)
    return target


def load_characters(data_root: str | os.PathLike | None = None, *, image_size: int = 28, download: bool = False,
                    disk_cache: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    """Decode every character once: ``(dataset_dir, arrays)`` with uint8 ``images`` [N, S, S] (strokes 255),
    ``char_index`` [N], ``characters`` (``"<alphabet>/<character>"``, sorted), ``files`` [N] and ``sources``."""
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    dataset_dir = _dataset_dir(data_root, download)
    sources = find_sources(dataset_dir)
    if not sources:
        raise DataFormatError(f"{dataset_dir} has no images_background*/images_evaluation* zips or folders. "
                              "Add the Omniglot zips there, or with a network download them in Python: "
                              f"torchvision.datasets.Omniglot({str(dataset_dir)!r}, download=True).")
    key = {"sources": [_source_key(s) for s in sources], "image_size": image_size}
    arrays = cached_arrays("omniglot", key, lambda: _decode(sources, image_size), disk=disk_cache)
    return dataset_dir, arrays


def split_classes(class_ids: Sequence[str], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  seed: int = 0) -> dict[str, list[str]]:
    """Seeded split of class ids into train/val/test: sort, permute with ``default_rng(seed)``, cut by fractions.

    Train gets ``floor(f_train * n)`` classes, val ``floor(f_val * n)``, test the rest; each list is sorted.
    """
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) < 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, "
                         f"got {tuple(fractions)}")
    ids = sorted(class_ids)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_train = math.floor(fr[0] * len(ids) + 1e-9)
    n_val = math.floor(fr[1] * len(ids) + 1e-9)
    cuts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {s: sorted(v) for s, v in cuts.items()}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {list(SPLITS)}")


def _check_rotations(rotations: Sequence[int]) -> tuple[int, ...]:
    rot = tuple(int(r) for r in rotations)
    if not rot or len(set(rot)) != len(rot) or not set(rot) <= set(ROTATIONS):
        raise ValueError(f"rotations must be distinct values from {ROTATIONS}, got {tuple(rotations)}")
    return rot


def omniglot_split(data_root: str | os.PathLike | None = None, *, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                   seed: int = 0, download: bool = False, disk_cache: bool = True) -> dict:
    """JSON-ready record of the character split: source folder and files, fractions, seed, characters per split."""
    dataset_dir, arrays = load_characters(data_root, download=download, disk_cache=disk_cache)
    return {"dataset": "omniglot", "source": str(dataset_dir), "source_files": arrays["sources"].tolist(),
            "unit": "character", "fractions": list(fractions), "seed": seed,
            "classes": split_classes(arrays["characters"].tolist(), fractions, seed)}


def load_omniglot(split: str, data_root: str | os.PathLike | None = None, *, image_size: int = 28,
                  rotations: Sequence[int] = (0,), fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
                  download: bool = False, disk_cache: bool = True) -> ClassImages:
    """Omniglot ``split`` ("train", "val" or "test") as ``ClassImages`` [N, 1, S, S] in [0, 1], strokes = 1.

    ``rotations`` (subset of 0/90/180/270) turns each character into one class per rotation. ``download=True``
    fetches the full set with torchvision into ``<data_root | $METAINF_DATA | ./data>/omniglot`` and loads it.
    """
    _check_split(split)
    rot = _check_rotations(rotations)
    _, arrays = load_characters(data_root, image_size=image_size, download=download, disk_cache=disk_cache)
    characters = arrays["characters"].tolist()
    chosen = split_classes(characters, fractions, seed)[split]
    by_char = {c: np.flatnonzero(arrays["char_index"] == k) for k, c in enumerate(characters)}
    blocks, labels, class_names, image_ids = [], [], [], []
    for char in chosen:
        idx = by_char[char]
        for r in rot:
            suffix = f"@rot{r}" if r else ""
            blocks.append(np.rot90(arrays["images"][idx], k=r // 90, axes=(1, 2)))
            labels += [len(class_names)] * len(idx)
            class_names.append(char + suffix)
            image_ids += [f"omniglot:{char}/{f}{suffix}" for f in arrays["files"][idx]]
    stacked = np.concatenate(blocks) if blocks else np.zeros((0, image_size, image_size), np.uint8)
    images = torch.from_numpy(stacked.astype(np.float32) / 255.0).unsqueeze(1)
    return ClassImages(name=f"omniglot-{split}", images=images, labels=torch.tensor(labels, dtype=torch.long),
                       class_names=class_names, image_ids=image_ids)
