"""Bad input: each case gives one clear error naming the file or value and the fix."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from metainf.data import sample_task_pool
from metainf.data.omniglot import load_characters
from metainf.data.registry import load_split
from metainf.data.roots import DataFormatError, DataNotFoundError, resolve_dataset_dir
from tests.fixtures_data import (
    omniglot_tree,
    write_fc100,
    write_miniimagenet_csv,
    write_miniimagenet_pickles,
    write_mnist_raw,
    write_omniglot_dir,
    write_omniglot_zip,
)


@pytest.fixture(autouse=True)
def _nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No data on the search path: cwd and repo root are empty temp folders, $METAINF_DATA unset."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr("metainf.data.roots.REPO_ROOT", tmp_path / "repo")
    monkeypatch.delenv("METAINF_DATA", raising=False)
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("dataset, expected", [
    ("omniglot", ["images_background*.zip", "download=True", "torchvision.datasets.Omniglot"]),
    ("miniimagenet", ["mini-imagenet-cache-{train,validation,test}.pkl", "train.csv/val.csv/test.csv", "images/"]),
    ("fc100", ["FC100/{train,val,test}/<class_name>/*.png"]),
])
def test_missing_root_lists_every_place_and_the_fix(tmp_path: Path, dataset: str, expected: list[str]) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_split(dataset, "train", tmp_path / "given")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for place in (f"{tmp_path / 'given'} (--data-root)", f"{tmp_path / 'cwd' / 'data'} (./data)",
                  "(../shared/data)", f"{tmp_path / 'repo' / 'data'} (<repo>/data)", "$METAINF_DATA: not set"):
        assert place in msg
    for text in expected + ["--data-root DIR", "METAINF_DATA=DIR"]:
        assert text in msg
    assert "--download" not in msg  # the CLI has no such option


def test_data_root_env_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fc100(tmp_path / "env")
    monkeypatch.setenv("METAINF_DATA", str(tmp_path / "env"))
    assert resolve_dataset_dir("fc100", None) == (tmp_path / "env" / "FC100").resolve()
    write_fc100(tmp_path / "cwd" / "data")
    assert resolve_dataset_dir("fc100", None) == (tmp_path / "env" / "FC100").resolve()  # env before ./data


def test_empty_alphabet_folder(tmp_path: Path) -> None:
    write_omniglot_dir(tmp_path / "omniglot" / "images_background", {**omniglot_tree({"A": 1}), "Empty": {}})
    with pytest.raises(DataFormatError, match=r"alphabet folder .*images_background/Empty has no character"):
        load_characters(tmp_path)


def test_empty_alphabet_folder_in_zip(tmp_path: Path) -> None:
    write_omniglot_zip(tmp_path / "omniglot" / "images_background.zip", {**omniglot_tree({"A": 1}), "Empty": {}})
    with pytest.raises(DataFormatError, match=r"images_background\.zip:Empty/ has no character folders"):
        load_characters(tmp_path)


@pytest.mark.parametrize("as_zip", [False, True])
def test_character_folder_without_pngs(tmp_path: Path, as_zip: bool) -> None:
    tree = omniglot_tree({"A": 2})
    tree["A"]["character03"] = []
    if as_zip:
        write_omniglot_zip(tmp_path / "omniglot" / "images_background.zip", tree)
    else:
        write_omniglot_dir(tmp_path / "omniglot" / "images_background", tree)
    with pytest.raises(DataFormatError, match=r"character folder .*A/character03/? has no PNG images"):
        load_characters(tmp_path)


def test_corrupt_png_inside_zip_is_named(tmp_path: Path) -> None:
    zpath = write_omniglot_zip(tmp_path / "omniglot" / "images_background.zip", omniglot_tree({"A": 1}))
    with zipfile.ZipFile(zpath, "a") as zf:
        zf.writestr("images_background/A/character01/bad_99.png", b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataFormatError, match=r"images_background\.zip:images_background/A/character01/bad_99\.png "
                                              r"is not a readable image.*Replace or delete"):
        load_characters(tmp_path)


def test_corrupt_png_on_disk_is_named(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    bad = tmp_path / "FC100" / "val" / "val_class2" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    with pytest.raises(DataFormatError, match=f"{bad} is not a readable image"):
        load_split("fc100", "val", tmp_path)


def test_pickle_with_wrong_keys(tmp_path: Path) -> None:
    root = write_miniimagenet_pickles(tmp_path / "miniimagenet")
    with open(root / "mini-imagenet-cache-validation.pkl", "wb") as fh:
        pickle.dump({"images": [], "labels": []}, fh)
    with pytest.raises(DataFormatError, match=r"mini-imagenet-cache-validation\.pkl is not in learn2learn's "
                                              r"Mini-ImageNet format \(found keys \['images', 'labels'\]\).*"
                                              r"'image_data'.*'class_dict'"):
        load_split("miniimagenet", "val", tmp_path, use_learn2learn=False)


def test_split_with_fewer_classes_than_n_way(tmp_path: Path) -> None:
    write_fc100(tmp_path, classes=(6, 3, 5))
    data = load_split("fc100", "val", tmp_path)
    with pytest.raises(ValueError, match=r"fc100-val: 5-way tasks need at least 5 classes, the split has 3"):
        sample_task_pool(data, n_tasks=2, n_way=5, k_shot=1, q_query=1, seed=0)
    digits = load_split("mnist", "train", classes={"train": [0, 1, 2], "val": [3], "test": [4]}, source="digits")
    with pytest.raises(ValueError, match="5-way tasks need at least 5 classes, the split has 3"):
        sample_task_pool(digits, n_tasks=2, n_way=5, k_shot=1, q_query=1, seed=0)


def test_k_plus_q_larger_than_images_per_class(tmp_path: Path) -> None:
    write_miniimagenet_csv(tmp_path / "miniimagenet")  # 8 images per class
    data = load_split("miniimagenet", "test", tmp_path)
    with pytest.raises(ValueError, match=r"K\+Q = 5\+5 = 10 images per class.*largest class has 8.*Lower k_shot"):
        sample_task_pool(data, n_tasks=2, n_way=5, k_shot=5, q_query=5, seed=0)


def test_csv_problems_are_named(tmp_path: Path) -> None:
    root = write_miniimagenet_csv(tmp_path / "miniimagenet")
    next((root / "images").glob("n1*.png")).unlink()
    with pytest.raises(DataNotFoundError, match=r"1 images listed in .*val\.csv are missing"):
        load_split("miniimagenet", "val", tmp_path)
    (root / "test.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(DataFormatError, match=r"test\.csv must have the header 'filename,label'"):
        load_split("miniimagenet", "test", tmp_path)
    rows = (root / "train.csv").read_text().splitlines()
    (root / "train.csv").write_text("\n".join(rows[:3] + [rows[3].split(",")[0]] + rows[4:]) + "\n")
    with pytest.raises(DataFormatError, match=r"train\.csv line 4 lacks a filename or a label"):
        load_split("miniimagenet", "train", tmp_path)
    (root / "train.csv").write_bytes("filename,label\ncaf\u00e9.png,x\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"train\.csv is not a UTF-8 CSV"):
        load_split("miniimagenet", "train", tmp_path)


def test_mnist_raw_file_with_a_bad_header_is_named(tmp_path: Path) -> None:
    """torchvision checks the idx header with a bare assert: it must still reach the user as a format error."""
    raw = write_mnist_raw(tmp_path) / "MNIST" / "raw"
    header = (raw / "t10k-images-idx3-ubyte").read_bytes()
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x09\x09" + header[4:])
    with pytest.raises(DataFormatError, match=r"torchvision could not read MNIST under .*MNIST\(.*download=True"):
        load_split("mnist", "train", tmp_path, source="mnist")


def test_fc100_missing_split_folder(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    for d in sorted((tmp_path / "FC100" / "test").rglob("*"), reverse=True):
        d.unlink() if d.is_file() else d.rmdir()
    (tmp_path / "FC100" / "test").rmdir()
    with pytest.raises(DataNotFoundError, match=r"FC100 folder .*FC100 has no 'test' subfolder"):
        load_split("fc100", "test", tmp_path)


def test_bad_options_name_the_value(tmp_path: Path) -> None:
    write_omniglot_zip(tmp_path / "omniglot" / "images_background.zip", omniglot_tree({"A": 2}))
    with pytest.raises(ValueError, match=r"fractions must be three non-negative numbers.*\(0\.5, 0\.2\)"):
        load_split("omniglot", "train", tmp_path, fractions=(0.5, 0.2))
    with pytest.raises(ValueError, match="image_size must be a positive number of pixels, got 0"):
        load_split("omniglot", "train", tmp_path, image_size=0)


@pytest.mark.parametrize("damage", ["truncated", "not a zip"])
def test_an_unreadable_decoded_image_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      damage: str) -> None:
    """A cache file cut short (a full disk, a killed copy) or overwritten warns once, naming it, and is rebuilt."""
    from metainf.data import roots

    def build() -> dict[str, np.ndarray]:
        return {"x": np.arange(1000.0)}

    monkeypatch.setattr(roots, "_MEMORY", {})
    roots.cached_arrays("probe", {"k": 1}, build)
    (path,) = (tmp_path / "cache").rglob("probe-*.npz")
    path.write_bytes(path.read_bytes()[:200] if damage == "truncated" else b"plain text")
    monkeypatch.setattr(roots, "_MEMORY", {})
    with pytest.warns(UserWarning, match=f"ignoring unreadable cache {path}.*rebuilding it"):
        assert np.array_equal(roots.cached_arrays("probe", {"k": 1}, build)["x"], build()["x"])
    monkeypatch.setattr(roots, "_MEMORY", {})
    assert np.array_equal(roots.cached_arrays("probe", {"k": 1}, build)["x"], build()["x"])  # rebuilt file reads
