"""The tensors of one task (or, stacked along dim 0, of a pool of tasks), as every inner problem consumes them."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class TaskData(NamedTuple):
    """One task (or, stacked along dim 0, a pool of tasks): support/query inputs, labels and point weights."""

    xs: Tensor
    ys: Tensor
    ws: Tensor
    xq: Tensor
    yq: Tensor
    wq: Tensor
