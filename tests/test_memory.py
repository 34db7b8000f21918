"""``PeakSampler``: the peak RSS of a block, also of a spike shorter than any sampling interval, and nested blocks.

The spikes are anonymous mappings (``mmap``), not NumPy arrays: after earlier tests have freed memory, malloc may
serve a 200 MiB array from pages the process already holds, and the RSS does not move (seen in CI, at 1.5 GB RSS).
"""

from __future__ import annotations

import contextlib
import mmap
import time
from collections.abc import Iterator

import numpy as np
import pytest

from metainf.runtime import memory
from metainf.runtime.memory import PeakSampler, high_water_mb, rss_mb

kernel_mark = pytest.mark.skipif(high_water_mb() is None or not memory.reset_high_water(),
                                 reason="no resettable kernel high-water mark (Linux /proc/self/clear_refs)")

MB = 2**20


@contextlib.contextmanager
def fresh_pages(mb: int) -> Iterator[None]:
    """Hold ``mb`` MiB of newly mapped, written pages while the block runs; unmap them after it."""
    block = mmap.mmap(-1, mb * MB)
    view = np.frombuffer(block, dtype=np.uint8)
    view[:] = 1
    try:
        yield
    finally:
        del view
        block.close()


def spike(mb: int) -> None:
    """Touch ``mb`` MiB of fresh memory and free it at once."""
    with fresh_pages(mb):
        pass


@kernel_mark
def test_a_short_spike_is_in_the_peak_and_the_rss_returns() -> None:
    with PeakSampler(interval=10.0) as sampler:  # a sampling thread would wake after the block
        start = rss_mb()
        spike(200)
    assert sampler.peak >= start + 150
    assert rss_mb() < start + 100


@kernel_mark
def test_a_nested_block_keeps_the_outer_peak() -> None:
    with PeakSampler(interval=10.0) as outer:
        start = rss_mb()
        spike(200)
        with PeakSampler(interval=10.0) as inner:
            spike(20)
    assert outer.peak >= start + 150
    assert inner.peak < start + 150  # the first spike is not the inner block's
    if high_water_mb() is not None:
        assert high_water_mb() >= rss_mb() - 1


def test_the_sampling_thread_where_there_is_no_kernel_mark(monkeypatch) -> None:
    monkeypatch.setattr(memory, "reset_high_water", lambda: False)
    with PeakSampler(interval=0.002) as sampler:
        start = rss_mb()
        with fresh_pages(200):
            time.sleep(0.1)
    assert sampler.peak >= start + 150
