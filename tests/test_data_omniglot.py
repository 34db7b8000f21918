"""Omniglot: the real shared subsets (counts, split, determinism) and generated trees (layouts, cache, download)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from metainf.data import omniglot, roots, sample_task_pool
from metainf.data.info import dataset_info, format_info
from metainf.data.omniglot import load_characters, load_omniglot, omniglot_split, split_classes
from metainf.data.registry import load_split, split_record
from tests.fixtures_data import omniglot_tree, shared_omniglot_dir, write_omniglot_dir, write_omniglot_zip


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared subsets, decoded once for the module (memory cache) with a private disk cache."""
    d = shared_omniglot_dir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAINF_CACHE", str(tmp_path_factory.mktemp("cache")))
        load_characters(d)
    return d


def test_shared_subsets_counts(shared: Path) -> None:
    _, arrays = load_characters(shared)
    chars = arrays["characters"].tolist()
    assert len({c.split("/")[0] for c in chars}) == 8
    assert len(chars) == 242
    assert arrays["images"].shape == (4840, 28, 28)
    assert np.bincount(arrays["char_index"]).tolist() == [20] * 242
    assert sorted(arrays["sources"].tolist()) == ["images_background_small1", "images_background_small2"]
    info = dataset_info("omniglot", shared)
    assert (info["alphabets"], info["characters"], info["images"]) == (8, 242, 4840)
    assert {s: (r["classes"], r["images"]) for s, r in info["splits"].items()} == {
        "train": (145, 2900), "val": (48, 960), "test": (49, 980)}
    text = format_info(info)
    assert "alphabets: 8" in text and "characters: 242" in text and "images: 4840" in text


def test_split_is_seeded_disjoint_and_recorded(shared: Path) -> None:
    rec = omniglot_split(shared, seed=0)
    assert rec == omniglot_split(shared, seed=0)
    classes = rec["classes"]
    everything = classes["train"] + classes["val"] + classes["test"]
    assert len(everything) == len(set(everything)) == 242
    assert rec["source"] == str(shared) and json.loads(json.dumps(rec)) == rec
    assert omniglot_split(shared, seed=1)["classes"]["train"] != classes["train"]
    assert load_omniglot("val", shared, seed=0).class_names == classes["val"]
    record = split_record("omniglot", shared, seed=0)
    assert record["splits"]["test"]["classes"] == classes["test"]


def test_split_classes_fractions() -> None:
    ids = [f"c{i:03d}" for i in range(10)]
    out = split_classes(ids, (0.5, 0.3, 0.2), seed=3)
    assert [len(out[s]) for s in ("train", "val", "test")] == [5, 3, 2]
    assert split_classes(list(reversed(ids)), (0.5, 0.3, 0.2), seed=3) == out  # input order does not matter
    with pytest.raises(ValueError, match="summing to 1"):
        split_classes(ids, (0.5, 0.5, 0.5))


def test_images_are_inverted_single_channel_in_unit_range(shared: Path) -> None:
    train = load_split("omniglot", "train", shared)
    assert train.images.shape == (2900, 1, 28, 28) and train.images.dtype == torch.float32
    assert float(train.images.min()) == 0.0 and float(train.images.max()) <= 1.0
    assert float(train.images.median()) == 0.0  # background is 0 after inversion
    assert float(train.images.max()) > 0.9  # strokes are bright
    assert train.image_ids[0].startswith("omniglot:") and len(set(train.image_ids)) == len(train.image_ids)


def test_rotations_become_new_classes(shared: Path) -> None:
    plain = load_omniglot("test", shared)
    rot = load_omniglot("test", shared, rotations=(0, 90, 180, 270))
    assert len(rot.class_names) == 4 * len(plain.class_names) and len(rot.images) == 4 * len(plain.images)
    first = plain.class_names[0]
    base = rot.images[rot.labels == rot.class_names.index(first)]
    turned = rot.images[rot.labels == rot.class_names.index(first + "@rot90")]
    assert torch.equal(turned, torch.rot90(base, 1, dims=(2, 3)))
    with pytest.raises(ValueError, match="rotations"):
        load_omniglot("test", shared, rotations=(45,))


def test_task_pool_from_shared_is_deterministic(shared: Path) -> None:
    data = load_omniglot("train", shared)
    a = sample_task_pool(data, n_tasks=4, n_way=5, k_shot=1, q_query=3, seed=7)
    b = sample_task_pool(load_omniglot("train", shared), n_tasks=4, n_way=5, k_shot=1, q_query=3, seed=7)
    assert torch.equal(a.support_x, b.support_x) and a.support_sources == b.support_sources
    assert a.input_shape == (1, 28, 28)


def test_overlapping_zips_are_deduplicated(tmp_path: Path) -> None:
    shared_alpha = omniglot_tree({"Greek": 2}, seed=1)
    write_omniglot_zip(tmp_path / "omniglot" / "images_background_small1.zip",
                       {**omniglot_tree({"A": 2}), **shared_alpha})
    write_omniglot_zip(tmp_path / "omniglot" / "images_background_small2.zip",
                       {**omniglot_tree({"B": 3}, seed=2), **shared_alpha})
    _, arrays = load_characters(tmp_path, disk_cache=False)
    assert arrays["characters"].tolist() == ["A/character01", "A/character02", "B/character01", "B/character02",
                                             "B/character03", "Greek/character01", "Greek/character02"]
    assert len(arrays["images"]) == 7 * 4


def test_conflicting_duplicate_character_is_an_error(tmp_path: Path) -> None:
    write_omniglot_zip(tmp_path / "omniglot" / "images_background_a.zip", omniglot_tree({"Greek": 1}, drawers=2))
    write_omniglot_zip(tmp_path / "omniglot" / "images_background_b.zip", omniglot_tree({"Greek": 1}, drawers=3))
    with pytest.raises(roots.DataFormatError, match="Greek/character01.*different files"):
        load_characters(tmp_path, disk_cache=False)


def test_torchvision_folder_layout_matches_zip(tmp_path: Path) -> None:
    bg, ev = omniglot_tree({"A": 2, "B": 1}), omniglot_tree({"C": 2}, seed=5)
    write_omniglot_dir(tmp_path / "full" / "omniglot" / "omniglot-py" / "images_background", bg)
    write_omniglot_dir(tmp_path / "full" / "omniglot" / "omniglot-py" / "images_evaluation", ev)
    write_omniglot_zip(tmp_path / "zips" / "omniglot" / "images_background.zip", bg)
    write_omniglot_zip(tmp_path / "zips" / "omniglot" / "images_evaluation.zip", ev)
    _, full = load_characters(tmp_path / "full", image_size=14, disk_cache=False)
    _, zips = load_characters(tmp_path / "zips", image_size=14, disk_cache=False)
    assert full["characters"].tolist() == zips["characters"].tolist() == [
        "A/character01", "A/character02", "B/character01", "C/character01", "C/character02"]
    assert full["images"].shape == (20, 14, 14) and np.array_equal(full["images"], zips["images"])


def test_disk_cache_is_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zpath = write_omniglot_zip(tmp_path / "omniglot" / "images_background.zip", omniglot_tree({"A": 3}))
    _, first = load_characters(tmp_path)
    cache_files = list((tmp_path / "cache").iterdir())
    assert [p.suffix for p in cache_files] == [".npz"]  # one cache file, no temporary left behind

    def fail(*_: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    roots.clear_memory_cache()
    monkeypatch.setattr(omniglot, "_decode", fail)
    _, again = load_characters(tmp_path)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    st = zpath.stat()
    os.utime(zpath, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a changed source must not hit the cache
    with pytest.raises(AssertionError, match="decoded again"):
        load_characters(tmp_path)


def test_download_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    class FakeOmniglot:
        def __init__(self, root: str, background: bool, download: bool) -> None:
            calls.append((root, background, download))
            name = "images_background" if background else "images_evaluation"
            write_omniglot_dir(Path(root) / "omniglot-py" / name, omniglot_tree({name[7:]: 2}, drawers=2))

    monkeypatch.setattr(torchvision.datasets, "Omniglot", FakeOmniglot)
    monkeypatch.setenv("METAINF_DATA", str(tmp_path / "nothing-here"))
    write_omniglot_zip(tmp_path / "omniglot" / "images_background_small1.zip", omniglot_tree({"Z": 5}))
    assert load_omniglot("train", tmp_path, fractions=(1, 0, 0), disk_cache=False).class_names[0] == "Z/character01"
    assert calls == []
    data = load_omniglot("train", tmp_path / "net", fractions=(1, 0, 0), download=True, disk_cache=False)
    target = str((tmp_path / "net" / "omniglot").resolve())
    assert calls == [(target, True, True), (target, False, True)]
    assert sorted({c.split("/")[0] for c in data.class_names}) == ["background", "evaluation"]
