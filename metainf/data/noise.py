"""Seeded label noise on a task pool, with the ground truth needed by detection experiments.

A flipped point's label is replaced by a *different* label of its task, drawn uniformly from the other
``n_way - 1`` labels. Both functions return a new ``TaskPool`` (the input is unchanged; images are shared),
with the masks ``task_corrupted``, ``support_corrupted`` and ``query_corrupted`` marking exactly the flipped
points (a task is corrupted when any of its points is) and ``meta["noise"]`` recording the parameters and
counts. Task and instance ids are unchanged, so scores can be matched against the masks by id.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from metainf.data.tasks import TaskPool

WHERE = ("support", "query", "both")


def _check(pool: TaskPool, where: str, **rates: float) -> None:
    if where not in WHERE:
        raise ValueError(f"where must be one of {list(WHERE)}, got {where!r}")
    for name, value in rates.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if pool.n_way < 2:
        raise ValueError(f"pool {pool.name!r} is {pool.n_way}-way: flipping labels needs at least 2 ways")
    if "noise" in pool.meta:
        raise ValueError(f"pool {pool.name!r} already has label noise ({pool.meta['noise']}); corrupt a clean pool")


def _flip(labels: Tensor, mask: np.ndarray, n_way: int, rng: np.random.Generator) -> Tensor:
    """Labels with every masked entry moved by a uniform non-zero offset modulo ``n_way``."""
    offsets = np.zeros(labels.shape, dtype=np.int64)
    offsets[mask] = rng.integers(1, n_way, size=int(mask.sum()))
    return (labels + torch.from_numpy(offsets)) % n_way


def _result(pool: TaskPool, s_mask: np.ndarray, q_mask: np.ndarray, rng: np.random.Generator,
            params: dict) -> TaskPool:
    s_mask_t, q_mask_t = torch.from_numpy(s_mask), torch.from_numpy(q_mask)
    task_mask = s_mask_t.any(1) | q_mask_t.any(1)
    noise = {**params, "n_tasks_corrupted": int(task_mask.sum()), "n_support_flipped": int(s_mask.sum()),
             "n_query_flipped": int(q_mask.sum())}
    return replace(pool, support_y=_flip(pool.support_y, s_mask, pool.n_way, rng),
                   query_y=_flip(pool.query_y, q_mask, pool.n_way, rng), task_corrupted=task_mask,
                   support_corrupted=s_mask_t, query_corrupted=q_mask_t, meta={**pool.meta, "noise": noise})


def corrupt_tasks(pool: TaskPool, fraction: float, flip_rate: float, where: str = "support",
                  seed: int = 0) -> TaskPool:
    """Flip labels inside ``round(fraction * n_tasks)`` randomly chosen tasks.

    In each chosen task, exactly ``round(flip_rate * n)`` of the ``n`` points of each chosen set ("support",
    "query" or "both" sets separately) are flipped, chosen uniformly without replacement.
    """
    _check(pool, where, fraction=fraction, flip_rate=flip_rate)
    rng = np.random.default_rng(seed)
    m, s, q = len(pool), pool.n_support, pool.n_query
    tasks = np.sort(rng.choice(m, size=round(fraction * m), replace=False))
    s_mask, q_mask = np.zeros((m, s), dtype=bool), np.zeros((m, q), dtype=bool)
    for t in tasks:
        if where in ("support", "both"):
            s_mask[t, rng.choice(s, size=round(flip_rate * s), replace=False)] = True
        if where in ("query", "both"):
            q_mask[t, rng.choice(q, size=round(flip_rate * q), replace=False)] = True
    params = {"kind": "tasks", "fraction": fraction, "flip_rate": flip_rate, "where": where, "seed": seed,
              "chosen_tasks": [pool.task_ids[t] for t in tasks]}
    return _result(pool, s_mask, q_mask, rng, params)


def corrupt_instances(pool: TaskPool, fraction: float, where: str = "support", seed: int = 0) -> TaskPool:
    """Flip exactly ``round(fraction * n)`` of the ``n`` points of the chosen set(s), pooled over all tasks."""
    _check(pool, where, fraction=fraction)
    rng = np.random.default_rng(seed)
    m, s, q = len(pool), pool.n_support, pool.n_query
    n_s = m * s if where in ("support", "both") else 0
    n_q = m * q if where in ("query", "both") else 0
    flat = np.zeros(n_s + n_q, dtype=bool)
    flat[rng.choice(n_s + n_q, size=round(fraction * (n_s + n_q)), replace=False)] = True
    s_mask = flat[:n_s].reshape(m, s) if n_s else np.zeros((m, s), dtype=bool)
    q_mask = flat[n_s:].reshape(m, q) if n_q else np.zeros((m, q), dtype=bool)
    params = {"kind": "instances", "fraction": fraction, "where": where, "seed": seed}
    return _result(pool, s_mask, q_mask, rng, params)
