"""Random few-shot task tensors shared by the tests of trajectory methods and LDS ground truth (float64)."""

from __future__ import annotations

import torch

from metainf.core.bilevel import TaskData

DT = torch.float64
N_S, N_Q, N_WAY, INPUT = 4, 4, 3, (1, 4, 4)


def make_tasks(seed: int, n_tasks: int) -> TaskData:
    """``n_tasks`` tasks of ``N_S`` support and ``N_Q`` query points, uniform inputs and labels, unit weights."""
    g = torch.Generator().manual_seed(seed)
    return TaskData(
        xs=torch.rand(n_tasks, N_S, *INPUT, generator=g, dtype=DT),
        ys=torch.randint(0, N_WAY, (n_tasks, N_S), generator=g), ws=torch.ones(n_tasks, N_S, dtype=DT),
        xq=torch.rand(n_tasks, N_Q, *INPUT, generator=g, dtype=DT),
        yq=torch.randint(0, N_WAY, (n_tasks, N_Q), generator=g), wq=torch.ones(n_tasks, N_Q, dtype=DT),
    )
