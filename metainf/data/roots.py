"""Where dataset files live, how they are read, and how decoded arrays are cached.

Search order for a data root (first match wins, every place is listed when nothing matches):

1. the ``data_root`` argument (the CLI's ``--data-root``),
2. ``$METAINF_DATA``,
3. ``./data`` and ``../shared/data`` relative to the current working directory,
4. ``data`` and ``../shared/data`` relative to the repository root (the parent of the ``metainf`` package).

Under each root a dataset lives in a folder named after it (``omniglot``, ``miniimagenet``, ``FC100``, ``mnist``);
a root may also *be* the dataset folder. Decoded arrays are cached in memory and, optionally, as ``.npz`` files in
``$METAINF_CACHE`` (default ``~/.cache/metainf``), keyed by a hash of the source files' sizes and mtimes and the
loading options; cache files are written atomically (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_VERSION = 1  # bump when decoding changes so stale .npz caches are ignored


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are nowhere on the search path; the message lists every place looked and the fix."""


class DataFormatError(ValueError):
    """A dataset file exists but is malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class _Layout:
    label: str
    folders: tuple[str, ...]
    is_valid: Callable[[Path], bool]
    expected: str
    how_to: str


def _has_omniglot(d: Path) -> bool:
    for base in (d, d / "omniglot-py"):
        if any(base.glob("images_background*")) or any(base.glob("images_evaluation*")):
            return True
    return False


def _has_miniimagenet(d: Path) -> bool:
    return any((d / f"mini-imagenet-cache-{m}.pkl").is_file() for m in ("train", "validation", "test")) or any(
        (d / f"{s}.csv").is_file() for s in ("train", "val", "test"))


def _has_fc100(d: Path) -> bool:
    return any((d / s).is_dir() for s in ("train", "val", "test"))


def _has_mnist(d: Path) -> bool:
    return (d / "MNIST" / "raw").is_dir() or (d / "MNIST" / "processed").is_dir()


LAYOUTS: dict[str, _Layout] = {
    "omniglot": _Layout(
        "Omniglot", ("omniglot", "Omniglot"), _has_omniglot,
        "images_background*.zip / images_evaluation*.zip, or the folders torchvision extracts "
        "(omniglot-py/images_background/<alphabet>/<character>/*.png)",
        "copy the Omniglot zips (e.g. images_background_small1.zip) into DIR/omniglot, or with a network download "
        "them in Python: torchvision.datasets.Omniglot('DIR/omniglot', background=True/False, download=True)"),
    "miniimagenet": _Layout(
        "Mini-ImageNet", ("miniimagenet", "mini-imagenet", "mini_imagenet", "miniImageNet"), _has_miniimagenet,
        "mini-imagenet-cache-{train,validation,test}.pkl (learn2learn format), or train.csv/val.csv/test.csv "
        "(header 'filename,label') plus images/",
        "put those files in DIR/miniimagenet (metainf does not download Mini-ImageNet)"),
    "fc100": _Layout(
        "FC100", ("FC100", "fc100"), _has_fc100,
        "FC100/{train,val,test}/<class_name>/*.png (32x32 RGB; 60/20/20 classes from the 12/4/4 CIFAR-100 "
        "super-class split of Oreshkin et al. 2018)",
        "build that folder tree in DIR/FC100 from CIFAR-100"),
    "mnist": _Layout(
        "MNIST", ("mnist",), _has_mnist,
        "MNIST/raw (or MNIST/processed) as torchvision.datasets.MNIST stores it",
        "with a network download it in Python: torchvision.datasets.MNIST('DIR/mnist', download=True); "
        "without MNIST the loader falls back to scikit-learn's bundled digits"),
}


def search_roots(data_root: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """Candidate data roots in search order, each with the reason it is searched (duplicates removed)."""
    cwd = Path.cwd()
    cands: list[tuple[Path, str]] = []
    if data_root is not None:
        cands.append((Path(data_root).expanduser(), "--data-root"))
    env = os.environ.get("METAINF_DATA")
    if env:
        cands.append((Path(env).expanduser(), "$METAINF_DATA"))
    cands += [(cwd / "data", "./data"), (cwd / ".." / "shared" / "data", "../shared/data"),
              (REPO_ROOT / "data", "<repo>/data"), (REPO_ROOT / ".." / "shared" / "data", "<repo>/../shared/data")]
    seen: set[Path] = set()
    out = []
    for path, why in cands:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.append((key, why))
    return out


def _layout(dataset: str) -> _Layout:
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {sorted(LAYOUTS)}")
    return LAYOUTS[dataset]


def resolve_dataset_dir(dataset: str, data_root: str | os.PathLike | None) -> Path:
    """Return the folder holding ``dataset``'s files, or raise ``DataNotFoundError`` listing every place looked."""
    layout = _layout(dataset)
    looked = []
    for root, why in search_roots(data_root):
        for folder in (*layout.folders, "."):
            d = (root / folder).resolve()
            if d.is_dir() and layout.is_valid(d):
                return d
        subfolders = " or ".join(f + "/" for f in layout.folders)
        looked.append(f"  {root} ({why}): no expected files in it or in {subfolders}")
    if not os.environ.get("METAINF_DATA"):
        looked.append("  $METAINF_DATA: not set")
    raise DataNotFoundError(
        f"{layout.label} data not found. Looked in:\n" + "\n".join(looked)
        + f"\nExpected: {layout.expected}.\nTo supply it: pass --data-root DIR (or set METAINF_DATA=DIR) and "
        + layout.how_to + ".")


def portable_path(path: str | os.PathLike) -> str:
    """``path`` as result files record it: relative to the project (``../shared/data/omniglot``) when it lies in
    the project or beside it, else ``<outside>/<folder name>``, so no result holds this machine's absolute paths."""
    resolved = Path(os.path.abspath(Path(path).expanduser()))  # normalised, links kept: ../shared may be a link
    rel = Path(os.path.relpath(resolved, REPO_ROOT))
    if rel.parts[:2] != ("..", ".."):
        return rel.as_posix()
    return f"<outside>/{resolved.name}"


def download_dir(dataset: str, data_root: str | os.PathLike | None) -> Path:
    """Where a download (``download=True``) puts ``dataset``: ``<data_root | $METAINF_DATA | ./data>/<dataset>``."""
    _layout(dataset)
    base = data_root if data_root is not None else os.environ.get("METAINF_DATA") or Path.cwd() / "data"
    return Path(base).expanduser().resolve() / dataset


def decode_image(data: bytes, where: str, mode: str, size: int | None) -> np.ndarray:
    """Decode image bytes to a uint8 array in PIL ``mode`` ("L" or "RGB"), resized to ``size`` x ``size``.

    Raises ``DataFormatError`` naming ``where`` (the file, or ``archive.zip:member``) if it cannot be decoded.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataFormatError(f"{where} is not a readable image ({exc}). Replace or delete this file "
                              "(re-extract or re-download the dataset).") from exc


def read_file_bytes(path: Path) -> bytes:
    """Read a whole file; a missing file raises ``DataNotFoundError`` naming it."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DataNotFoundError(f"{path} is listed by the dataset but does not exist. Restore it or remove "
                                "its entry.") from exc


def fingerprint(paths: Iterable[Path]) -> list[list]:
    """``[name, size, mtime_ns]`` for every file: changes whenever a source file is replaced or edited."""
    out = []
    for p in sorted(paths):
        st = p.stat()
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def cache_dir() -> Path:
    """Disk cache folder: ``$METAINF_CACHE`` or ``~/.cache/metainf``."""
    return Path(os.environ.get("METAINF_CACHE") or Path.home() / ".cache" / "metainf").expanduser()


_MEMORY: dict[str, dict[str, np.ndarray]] = {}


def clear_memory_cache() -> None:
    """Forget every decoded array held in memory (disk caches stay)."""
    _MEMORY.clear()


def cached_arrays(tag: str, key: dict, build: Callable[[], dict[str, np.ndarray]],
                  disk: bool = True) -> dict[str, np.ndarray]:
    """Return ``build()``'s arrays, memoised in memory and (if ``disk``) in ``cache_dir()/<tag>-<hash>.npz``.

    ``key`` must be JSON-serialisable and capture everything the arrays depend on (source fingerprint, options).
    Arrays must not need pickling (numbers or fixed-width strings). A cache that cannot be written only warns.
    """
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, tag, key], sort_keys=True).encode()).hexdigest()[:20]
    if digest in _MEMORY:
        return _MEMORY[digest]
    path = cache_dir() / f"{tag}-{digest}.npz"
    arrays = None
    if disk and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # e.g. truncated by a full disk
            warnings.warn(f"ignoring unreadable cache {path} ({exc}); rebuilding it", stacklevel=2)
    if arrays is None:
        arrays = build()
        if disk:
            _write_npz_atomic(path, arrays)
    _MEMORY[digest] = arrays
    return arrays


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        warnings.warn(f"could not write data cache {path} ({exc}); set METAINF_CACHE to a writable folder",
                      stacklevel=3)
