"""Memory-bounded iteration over tasks: slices of at most ``size`` tasks, for chunked ``vmap``."""

from __future__ import annotations

from collections.abc import Iterator


def chunks(n: int, size: int | None) -> Iterator[slice]:
    """Consecutive slices covering 0..n-1, each of at most ``size`` items (``None`` or 0: one slice of all n)."""
    size = n if not size else size
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
