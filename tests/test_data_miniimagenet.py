"""Mini-ImageNet: learn2learn pickles (read here and through learn2learn) and the CSV-split folder format."""

from __future__ import annotations

import pickle
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from metainf.data import sample_task_pool
from metainf.data.miniimagenet import load_miniimagenet
from metainf.data.registry import load_split
from tests.fixtures_data import write_miniimagenet_csv, write_miniimagenet_pickles

# The part of learn2learn.vision.datasets.MiniImagenet (learn2learn 0.2.0) that reads an existing pickle.
FAKE_L2L = textwrap.dedent('''
    import os, pickle
    import numpy as np
    import torch

    class MiniImagenet:
        def __init__(self, root, mode="train", transform=None, target_transform=None, download=False):
            with open(os.path.join(root, "mini-imagenet-cache-" + mode + ".pkl"), "rb") as f:
                self.data = pickle.load(f)
            self.x = torch.from_numpy(self.data["image_data"]).permute(0, 3, 1, 2).float()
            self.y = np.ones(len(self.x))
            self.class_idx = {}
            for name in self.data["class_dict"].keys():
                self.class_idx.setdefault(name, len(self.class_idx))
            for class_name, idxs in self.data["class_dict"].items():
                for idx in idxs:
                    self.y[idx] = self.class_idx[class_name]
''')


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def fake_learn2learn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A stand-in learn2learn package on sys.path; the real one (if any) is restored afterwards."""
    pkg = tmp_path / "fake_site" / "learn2learn"
    (pkg / "vision" / "datasets").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "vision" / "__init__.py").write_text("")
    (pkg / "vision" / "datasets" / "__init__.py").write_text(FAKE_L2L)
    for name in _l2l_modules():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path / "fake_site"))
    yield
    for name in _l2l_modules():
        del sys.modules[name]  # the fake's modules; monkeypatch then puts back any real ones


def _l2l_modules() -> list[str]:
    return [m for m in sys.modules if m == "learn2learn" or m.startswith("learn2learn.")]


def test_pickle_format_without_learn2learn(tmp_path: Path) -> None:
    root = write_miniimagenet_pickles(tmp_path / "miniimagenet")
    data = load_miniimagenet("train", tmp_path, use_learn2learn=False)
    assert data.images.shape == (48, 3, 84, 84) and data.images.dtype == torch.float32
    assert data.name == "miniimagenet-train" and len(data.class_names) == 6
    with open(root / "mini-imagenet-cache-train.pkl", "rb") as fh:
        raw = pickle.load(fh)
    assert torch.equal(data.images[7], torch.from_numpy(raw["image_data"][7]).permute(2, 0, 1).float() / 255)
    first = data.class_names[0]
    assert np.flatnonzero(data.labels.numpy() == 0).tolist() == raw["class_dict"][first]
    assert load_split("miniimagenet", "val", tmp_path, use_learn2learn=False).class_names[0].startswith("n1")


def test_learn2learn_path_gives_the_same_data(tmp_path: Path, fake_learn2learn: None) -> None:
    write_miniimagenet_pickles(tmp_path / "miniimagenet")
    via_l2l = load_miniimagenet("test", tmp_path)  # auto: learn2learn is importable
    assert "learn2learn.vision.datasets" in sys.modules  # ... and was used
    direct = load_miniimagenet("test", tmp_path, use_learn2learn=False)
    assert torch.equal(via_l2l.images, direct.images) and torch.equal(via_l2l.labels, direct.labels)
    assert via_l2l.class_names == direct.class_names and via_l2l.image_ids == direct.image_ids


def test_use_learn2learn_without_it_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    write_miniimagenet_pickles(tmp_path / "miniimagenet")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "learn2learn" else real(n, *a))
    with pytest.raises(ImportError, match="learn2learn is not installed"):
        load_miniimagenet("train", tmp_path, use_learn2learn=True)
    assert len(load_miniimagenet("train", tmp_path).images) == 48  # auto falls back to reading the pickle


@pytest.mark.l2l
def test_real_learn2learn_reads_the_fixture(tmp_path: Path) -> None:
    pytest.importorskip("learn2learn", reason="learn2learn not installed (optional extra 'l2l')")
    write_miniimagenet_pickles(tmp_path / "miniimagenet")
    via_l2l = load_miniimagenet("train", tmp_path, use_learn2learn=True)
    direct = load_miniimagenet("train", tmp_path, use_learn2learn=False)
    assert torch.equal(via_l2l.images, direct.images) and torch.equal(via_l2l.labels, direct.labels)


@pytest.mark.l2l
def test_real_learn2learn_on_a_pickle_of_another_shape_is_a_format_error(tmp_path: Path) -> None:
    pytest.importorskip("learn2learn", reason="learn2learn not installed (optional extra 'l2l')")
    from metainf.data.roots import DataFormatError

    root = write_miniimagenet_pickles(tmp_path / "miniimagenet")
    with open(root / "mini-imagenet-cache-train.pkl", "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with pytest.raises(DataFormatError, match=r"mini-imagenet-cache-train\.pkl is not in learn2learn's"):
        load_miniimagenet("train", tmp_path, use_learn2learn=True)


def test_csv_format(tmp_path: Path) -> None:
    root = write_miniimagenet_csv(tmp_path / "mini-imagenet")
    data = load_split("miniimagenet", "val", tmp_path)
    assert data.images.shape == (48, 3, 84, 84) and len(data.class_names) == 6
    assert data.class_names == sorted(data.class_names)
    rows = (root / "val.csv").read_text().splitlines()[1:]
    name, label = rows[3].split(",")
    assert data.image_ids[3] == f"miniimagenet:images/{name}" and data.class_names[int(data.labels[3])] == label
    pool = sample_task_pool(data, n_tasks=3, n_way=5, k_shot=1, q_query=2, seed=0)
    assert pool.input_shape == (3, 84, 84)


def test_resize_and_max_per_class(tmp_path: Path) -> None:
    write_miniimagenet_pickles(tmp_path / "miniimagenet", size=40)
    write_miniimagenet_csv(tmp_path / "miniimagenet", size=40)  # pickle is preferred when both exist
    data = load_miniimagenet("train", tmp_path, use_learn2learn=False, max_per_class=3)
    assert data.images.shape == (18, 3, 84, 84)
    assert np.bincount(data.labels.numpy()).tolist() == [3] * 6
    small = load_miniimagenet("test", tmp_path, use_learn2learn=False, image_size=20)
    assert small.images.shape[-2:] == (20, 20) and 0.0 <= float(small.images.min()) <= float(small.images.max()) <= 1
