"""Peak-memory measurement while a block runs: the resident set size (CPU RSS), sampled, and on a CUDA device
``torch.cuda.max_memory_allocated``."""

from __future__ import annotations

import resource
import threading

import torch


def rss_mb() -> float:
    """The resident set size of this process in MiB (Linux; elsewhere the lifetime peak)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:  # not Linux: fall back to the lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakSampler:
    """Samples the resident set size every few milliseconds; ``peak`` is the maximum seen while active (MiB).

    With a CUDA ``device``, ``gpu_peak`` is ``torch.cuda.max_memory_allocated`` over the block (MiB; else None).
    """

    def __init__(self, interval: float = 0.005, device: torch.device | str | None = None) -> None:
        self.interval, self.peak, self._stop = interval, rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.device = torch.device(device) if device is not None else None
        self.gpu_peak: float | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())
        if self.device is not None and self.device.type == "cuda":
            self.gpu_peak = torch.cuda.max_memory_allocated(self.device) / 2**20

    def __enter__(self) -> PeakSampler:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        if self.device is not None and self.device.type == "cuda":
            self.gpu_peak = torch.cuda.max_memory_allocated(self.device) / 2**20
