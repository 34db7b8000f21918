"""Peak-memory measurement while a block runs: the resident set size (CPU RSS), and on a CUDA device
``torch.cuda.max_memory_allocated``.

On Linux the kernel keeps the peak RSS (``VmHWM`` in ``/proc/self/status``) and resets it to the current RSS when
"5" is written to ``/proc/self/clear_refs``: the peak of a block is then exact and costs nothing while the block
runs. Elsewhere (or where that file cannot be written) a thread samples the RSS every few milliseconds; it competes
with the measured block for the interpreter lock, which inflates the timings of cheap methods
(``scripts/profile_fast.py`` prints ``task_if_fast`` timed with and without ``run_method``).

The RSS counts the pages the process holds, not what a block allocates: memory that malloc hands back from earlier
frees (already resident) does not raise it, so a block's peak RSS can be below the process's RSS at entry plus the
block's working set. A method's peak RSS is thus the process's footprint while it ran, not its own: in E4's
frontier it sets a dense solve apart from the iterative estimators, but small differences between those say little.
"""

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


def high_water_mb() -> float | None:
    """The kernel's peak resident set size of this process since start or the last reset (MiB; None if unknown)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_high_water() -> bool:
    """Reset the kernel's peak RSS to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


#: samplers inside whose block the caller is (a reset inside a nested block must not lose an outer block's peak)
_ACTIVE: list["PeakSampler"] = []


class PeakSampler:
    """``peak``: the maximum resident set size while active (MiB), from the kernel's high-water mark (reset on entry;
    an enclosing sampler first takes the mark reached so far) or, where that is unavailable, sampled every
    ``interval`` seconds by a thread.

    With a CUDA ``device``, ``gpu_peak`` is ``torch.cuda.max_memory_allocated`` over the block (MiB; else None).
    """

    def __init__(self, interval: float = 0.005, device: torch.device | str | None = None) -> None:
        self.interval, self.peak, self._stop = interval, rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._kernel = False
        self.device = torch.device(device) if device is not None else None
        self.gpu_peak: float | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakSampler:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        mark = high_water_mb()
        if mark is not None:
            for outer in _ACTIVE:
                outer.peak = max(outer.peak, mark)
        self._kernel = mark is not None and reset_high_water()
        if not self._kernel:
            self._thread.start()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.remove(self)
        if self._kernel:
            self.peak = max(self.peak, high_water_mb() or 0.0)
        else:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, rss_mb())
        if self.device is not None and self.device.type == "cuda":
            self.gpu_peak = torch.cuda.max_memory_allocated(self.device) / 2**20
