"""Label noise: exact flip counts, ground-truth masks, determinism, input left unchanged."""

from __future__ import annotations

import pytest
import torch

from metainf.data import TaskPool, sample_task_pool
from metainf.data.mnist import load_mnist
from metainf.data.noise import corrupt_instances, corrupt_tasks


@pytest.fixture(scope="module")
def pool() -> TaskPool:
    data = load_mnist("train", source="digits")
    return sample_task_pool(data, n_tasks=10, n_way=5, k_shot=2, q_query=4, seed=0)


def _changed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return before != after


def test_corrupt_tasks_flips_exactly_the_marked_points(pool: TaskPool) -> None:
    before = (pool.support_y.clone(), pool.query_y.clone())
    noisy = corrupt_tasks(pool, fraction=0.4, flip_rate=0.5, where="both", seed=3)
    assert torch.equal(pool.support_y, before[0]) and torch.equal(pool.query_y, before[1])  # input unchanged
    assert not pool.task_corrupted.any() and "noise" not in pool.meta
    assert torch.equal(_changed(pool.support_y, noisy.support_y), noisy.support_corrupted)
    assert torch.equal(_changed(pool.query_y, noisy.query_y), noisy.query_corrupted)
    assert int(noisy.task_corrupted.sum()) == 4
    for t in torch.nonzero(noisy.task_corrupted).flatten().tolist():
        assert int(noisy.support_corrupted[t].sum()) == 5 and int(noisy.query_corrupted[t].sum()) == 10
    assert not noisy.support_corrupted[~noisy.task_corrupted].any()
    chosen = torch.nonzero(noisy.task_corrupted).flatten().tolist()
    assert noisy.meta["noise"]["chosen_tasks"] == [pool.task_ids[t] for t in chosen]
    assert noisy.meta["noise"]["n_support_flipped"] == 20 and noisy.task_ids == pool.task_ids
    assert int(noisy.support_y.max()) < pool.n_way and int(noisy.support_y.min()) >= 0


def test_corrupt_tasks_where_support_leaves_query_clean(pool: TaskPool) -> None:
    noisy = corrupt_tasks(pool, fraction=1.0, flip_rate=1.0, where="support", seed=0)
    assert noisy.support_corrupted.all() and not noisy.query_corrupted.any()
    assert torch.equal(noisy.query_y, pool.query_y) and (noisy.support_y != pool.support_y).all()


def test_noise_is_deterministic_by_seed(pool: TaskPool) -> None:
    a = corrupt_instances(pool, fraction=0.25, where="both", seed=5)
    b = corrupt_instances(pool, fraction=0.25, where="both", seed=5)
    c = corrupt_instances(pool, fraction=0.25, where="both", seed=6)
    assert torch.equal(a.support_y, b.support_y) and torch.equal(a.query_y, b.query_y)
    assert not (torch.equal(a.support_corrupted, c.support_corrupted)
                and torch.equal(a.query_corrupted, c.query_corrupted))


def test_corrupt_instances_counts_and_masks(pool: TaskPool) -> None:
    noisy = corrupt_instances(pool, fraction=0.3, where="query", seed=1)
    assert int(noisy.query_corrupted.sum()) == round(0.3 * 10 * 20) and not noisy.support_corrupted.any()
    assert torch.equal(_changed(pool.query_y, noisy.query_y), noisy.query_corrupted)
    assert torch.equal(noisy.task_corrupted, noisy.query_corrupted.any(1))
    assert noisy.meta["noise"] == {"kind": "instances", "fraction": 0.3, "where": "query", "seed": 1,
                                   "n_tasks_corrupted": int(noisy.task_corrupted.sum()), "n_support_flipped": 0,
                                   "n_query_flipped": 60}
    both = corrupt_instances(pool, fraction=0.5, where="both", seed=1)
    assert int(both.support_corrupted.sum() + both.query_corrupted.sum()) == round(0.5 * (100 + 200))


def test_flips_are_uniform_over_the_other_labels(pool: TaskPool) -> None:
    noisy = corrupt_tasks(pool.subset(range(10)), fraction=1.0, flip_rate=1.0, where="query", seed=0)
    offsets = ((noisy.query_y - pool.query_y) % pool.n_way).flatten()
    counts = torch.bincount(offsets, minlength=pool.n_way).tolist()
    assert counts[0] == 0 and min(counts[1:]) > 30  # 200 flips spread over the 4 other labels


def test_bad_noise_arguments(pool: TaskPool) -> None:
    with pytest.raises(ValueError, match="where must be one of"):
        corrupt_tasks(pool, 0.5, 0.5, where="labels")
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        corrupt_instances(pool, 1.5)
    with pytest.raises(ValueError, match="already has label noise"):
        corrupt_instances(corrupt_instances(pool, 0.1), 0.1)
