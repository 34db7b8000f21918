"""Fixed, seeded N-way K-shot Q-query task pools with stable task and instance ids.

A ``TaskPool`` holds every task stacked into tensors so that functions over one task can be
``vmap``-ed over the pool. Ids are stable strings: task ``"<pool>/t<k>"``, support instance
``"<task>/s<j>"``, query instance ``"<task>/q<j>"``; ``sources`` names the image behind each instance,
so a result can say exactly which data it used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass
class ClassImages:
    """Images of one split grouped by class: ``images[n]`` has class ``labels[n]`` and id ``image_ids[n]``."""

    name: str
    images: Tensor  # [N, C, H, W], float in [0, 1]
    labels: Tensor  # [N] long, index into class_names
    class_names: list[str]
    image_ids: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images) or len(self.image_ids) != len(self.images):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels "
                             f"and {len(self.image_ids)} ids")

    def indices_by_class(self) -> list[np.ndarray]:
        labels = self.labels.numpy()
        return [np.flatnonzero(labels == c) for c in range(len(self.class_names))]


@dataclass
class TaskPool:
    """A fixed pool of few-shot tasks. Labels inside a task are ``0..n_way-1``."""

    name: str
    support_x: Tensor  # [M, S, C, H, W]
    support_y: Tensor  # [M, S]
    query_x: Tensor  # [M, Q, C, H, W]
    query_y: Tensor  # [M, Q]
    task_ids: list[str]
    n_way: int
    support_sources: list[list[str]] = field(default_factory=list)
    query_sources: list[list[str]] = field(default_factory=list)
    task_corrupted: Tensor | None = None  # [M] bool, ground truth for detection experiments
    support_corrupted: Tensor | None = None  # [M, S] bool
    query_corrupted: Tensor | None = None  # [M, Q] bool
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()
        m, s = self.support_y.shape
        q = self.query_y.shape[1]
        if self.task_corrupted is None:
            self.task_corrupted = torch.zeros(m, dtype=torch.bool)
        if self.support_corrupted is None:
            self.support_corrupted = torch.zeros(m, s, dtype=torch.bool)
        if self.query_corrupted is None:
            self.query_corrupted = torch.zeros(m, q, dtype=torch.bool)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field when shapes or labels are inconsistent."""
        sx, sy, qx, qy = self.support_x, self.support_y, self.query_x, self.query_y
        problems = []
        if sx.ndim < 3 or qx.ndim < 3:
            problems.append(f"support_x/query_x need [tasks, points, ...], got {tuple(sx.shape)} / {tuple(qx.shape)}")
        elif sx.shape[2:] != qx.shape[2:]:
            problems.append(f"support images {tuple(sx.shape[2:])} and query images {tuple(qx.shape[2:])} differ")
        if sy.ndim != 2 or tuple(sy.shape) != tuple(sx.shape[:2]):
            problems.append(f"support_y shape {tuple(sy.shape)} does not match support_x {tuple(sx.shape[:2])}")
        if qy.ndim != 2 or tuple(qy.shape) != tuple(qx.shape[:2]):
            problems.append(f"query_y shape {tuple(qy.shape)} does not match query_x {tuple(qx.shape[:2])}")
        if sx.shape[0] != qx.shape[0]:
            problems.append(f"{sx.shape[0]} support sets but {qx.shape[0]} query sets")
        if len(self.task_ids) != sx.shape[0]:
            problems.append(f"{len(self.task_ids)} task ids for {sx.shape[0]} tasks")
        if len(set(self.task_ids)) != len(self.task_ids):
            problems.append("task ids are not unique")
        for nm, y in (("support_y", sy), ("query_y", qy)):
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_way):
                problems.append(f"{nm} has labels outside 0..{self.n_way - 1}")
        if problems:
            raise ValueError(f"task pool {self.name!r} is malformed: " + "; ".join(problems)
                             + ". Build pools with metainf.data.sample_task_pool or fix the tensors.")

    def __len__(self) -> int:
        return len(self.task_ids)

    @property
    def n_support(self) -> int:
        return self.support_y.shape[1]

    @property
    def n_query(self) -> int:
        return self.query_y.shape[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.support_x.shape[2:])

    def support_ids(self) -> list[str]:
        return [f"{t}/s{j}" for t in self.task_ids for j in range(self.n_support)]

    def query_ids(self) -> list[str]:
        return [f"{t}/q{j}" for t in self.task_ids for j in range(self.n_query)]

    def subset(self, indices: Sequence[int]) -> "TaskPool":
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        pick = lambda lst: [lst[i] for i in idx.tolist()] if lst else []  # noqa: E731
        return replace(
            self,
            support_x=self.support_x[idx], support_y=self.support_y[idx],
            query_x=self.query_x[idx], query_y=self.query_y[idx],
            task_ids=pick(self.task_ids),
            support_sources=pick(self.support_sources), query_sources=pick(self.query_sources),
            task_corrupted=self.task_corrupted[idx], support_corrupted=self.support_corrupted[idx],
            query_corrupted=self.query_corrupted[idx],
        )

    def to(self, dtype: torch.dtype) -> "TaskPool":
        return replace(self, support_x=self.support_x.to(dtype), query_x=self.query_x.to(dtype))

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description naming every task and instance by id and source image."""
        return {
            "name": self.name, "n_way": self.n_way, "n_tasks": len(self), "n_support": self.n_support,
            "n_query": self.n_query, "input_shape": list(self.input_shape), "meta": self.meta,
            "tasks": [
                {"id": t,
                 "support": self.support_sources[k] if self.support_sources else [],
                 "query": self.query_sources[k] if self.query_sources else [],
                 "corrupted": bool(self.task_corrupted[k])}
                for k, t in enumerate(self.task_ids)
            ],
        }

    def save_spec(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump(self.spec(), fh, indent=1)


def sample_task_pool(data: ClassImages, n_tasks: int, n_way: int, k_shot: int, q_query: int, seed: int,
                     name: str | None = None) -> TaskPool:
    """Draw ``n_tasks`` N-way K-shot Q-query tasks from ``data`` with ``numpy.random.default_rng(seed)``.

    For each task: choose ``n_way`` distinct classes, then ``k_shot + q_query`` distinct images per class;
    the first ``k_shot`` go to the support set, the rest to the query set. Within-task labels follow the
    order in which classes were drawn. The same ``(data, arguments, seed)`` always gives the same pool.
    """
    by_class = data.indices_by_class()
    usable = [c for c, idx in enumerate(by_class) if len(idx) >= k_shot + q_query]
    if len(by_class) < n_way:
        raise ValueError(f"{data.name}: {n_way}-way tasks need at least {n_way} classes, the split has "
                         f"{len(by_class)}. Use fewer ways or a larger split.")
    if len(usable) < n_way:
        most = max((len(i) for i in by_class), default=0)
        raise ValueError(f"{data.name}: K+Q = {k_shot}+{q_query} = {k_shot + q_query} images per class are needed "
                         f"but only {len(usable)} classes have that many (largest class has {most}). "
                         "Lower k_shot or q_query.")
    rng = np.random.default_rng(seed)
    pool_name = name or f"{data.name}-{n_way}w{k_shot}s{q_query}q-seed{seed}"
    sx, sy, qx, qy, s_src, q_src = [], [], [], [], [], []
    for _ in range(n_tasks):
        classes = rng.choice(usable, size=n_way, replace=False)
        s_idx, q_idx, s_lab, q_lab = [], [], [], []
        for label, c in enumerate(classes):
            pick = rng.choice(by_class[c], size=k_shot + q_query, replace=False)
            s_idx += pick[:k_shot].tolist()
            q_idx += pick[k_shot:].tolist()
            s_lab += [label] * k_shot
            q_lab += [label] * q_query
        sx.append(data.images[s_idx])
        qx.append(data.images[q_idx])
        sy.append(torch.tensor(s_lab))
        qy.append(torch.tensor(q_lab))
        s_src.append([data.image_ids[i] for i in s_idx])
        q_src.append([data.image_ids[i] for i in q_idx])
    return TaskPool(
        name=pool_name,
        support_x=torch.stack(sx), support_y=torch.stack(sy), query_x=torch.stack(qx), query_y=torch.stack(qy),
        task_ids=[f"{pool_name}/t{k}" for k in range(n_tasks)], n_way=n_way,
        support_sources=s_src, query_sources=q_src,
        meta={"dataset": data.name, "n_way": n_way, "k_shot": k_shot, "q_query": q_query, "seed": seed},
    )
