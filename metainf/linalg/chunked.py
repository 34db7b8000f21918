"""Memory-bounded maps over tasks: ``vmap`` over slices of at most ``size`` items, concatenated.

``chunks`` gives the slices; ``map_chunked`` is the public chunked ``vmap`` (``MetaObjective.map_tasks`` and the
per-task loops of the methods use it), so peak memory grows with ``size``, not with the number of tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap


def chunks(n: int, size: int | None) -> Iterator[slice]:
    """Consecutive slices covering 0..n-1, each of at most ``size`` items (``None`` or 0: one slice of all n)."""
    size = n if not size else size
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _take(x: Any, sl: slice) -> Any:
    """x[sl] for a tensor, field by field for a NamedTuple of tensors (e.g. ``TaskData``)."""
    if isinstance(x, Tensor):
        return x[sl]
    return type(x)(*(v[sl] for v in x))


def map_chunked(fn: Callable[..., Any], args: Sequence[Any], in_dims: Sequence[int | None] | None = None,
                size: int | None = None) -> Any:
    """``vmap(fn, in_dims)(*args)`` computed ``size`` items at a time and concatenated along dim 0.

    ``in_dims[i]`` is 0 for an argument batched along its dim 0 (a tensor or a NamedTuple of tensors such as
    ``TaskData``; all of the same leading length n, sliced together) and None for one passed whole to every item;
    default: all batched. A tuple output is concatenated element-wise. ``size`` None or 0: all n items at once."""
    dims = tuple(in_dims) if in_dims is not None else (0,) * len(args)
    first = next(a for a, d in zip(args, dims) if d == 0)
    n = first.shape[0] if isinstance(first, Tensor) else first[0].shape[0]
    outs = [vmap(fn, in_dims=dims)(*(_take(a, sl) if d == 0 else a for a, d in zip(args, dims)))
            for sl in chunks(n, size)]
    return torch.cat(outs) if isinstance(outs[0], Tensor) else tuple(torch.cat(z) for z in zip(*outs))
