"""95% confidence intervals of the numbers in result files, and how they compare.

An :class:`Estimate` is a mean with a 95% interval and the basis of that interval:

- ``"seeds"``: a Student-t interval over seeds, ``mean ± t(0.975, n-1) · std / sqrt(n)`` from an aggregate's
  ``{"mean", "std", "n"}`` (``std`` with ddof=1, as :func:`replication.results.mean_std` stores it);
- ``"per-run"``: with one seed, the run's own interval (a ``<name>_ci95`` half-width the experiment recorded,
  e.g. ``acc_ci95`` over test tasks);
- ``"fisher-z"``: with one seed, a Spearman correlation over ``m`` units, ``tanh(atanh(r) ± 1.96 · sqrt(1.06 /
  (m - 3)))`` (Fieller, Hartley & Pearson 1957);
- ``"none"``: one seed and nothing else to go on; the estimate has no interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats as scipy_stats

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """``mean`` with the 95% interval ``[low, high]`` (both ``None`` without one) on ``basis``."""

    mean: float
    low: float | None = None
    high: float | None = None
    basis: str = "none"
    n: int = 1

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval (``False`` without one)."""
        return self.has_interval and self.low <= value <= self.high  # type: ignore[operator]

    def text(self, digits: int = 3) -> str:
        """``mean [low, high]``, or ``mean`` alone."""
        if not math.isfinite(self.mean):
            return str(self.mean)
        if not self.has_interval:
            return f"{self.mean:.{digits}g}"
        return f"{self.mean:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"


def is_stats(value: Any) -> bool:
    """Whether ``value`` is an aggregate ``{"mean", "std", "n"}`` cell."""
    return isinstance(value, Mapping) and {"mean", "std", "n"} <= set(value)


def as_float(value: Any) -> float:
    """A number, a numeric string (``"nan"``) or a stats cell's mean, as a float."""
    if is_stats(value):
        value = value["mean"]
    return float(value)


def over_seeds(cell: Any, per_run_half: Any = None) -> Estimate:
    """The t-interval over seeds of an aggregate cell; with one seed the per-run half-width if given.

    ``cell`` may also be a plain number (one seed, stored without stats)."""
    if not is_stats(cell):
        cell = {"mean": as_float(cell), "std": 0.0, "n": 1}
    mean, std, n = as_float(cell["mean"]), as_float(cell["std"]), int(cell["n"])
    if n > 1 and math.isfinite(std):
        half = float(scipy_stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        return Estimate(mean, mean - half, mean + half, "seeds", n)
    if per_run_half is not None:
        half = as_float(per_run_half)
        if math.isfinite(half):
            return Estimate(mean, mean - half, mean + half, "per-run", n)
    return Estimate(mean, basis="none", n=n)


def bootstrap(cell: Any, low: Any, high: Any) -> Estimate:
    """An LDS cell: the t-interval over seeds, or with one seed the run's bootstrap interval ``[low, high]``
    (aggregate cells of ``<metric>_ci95_low`` / ``_high``)."""
    estimate = over_seeds(cell)
    if estimate.has_interval or low is None or high is None:
        return estimate
    lo, hi = as_float(over_seeds(low).mean), as_float(over_seeds(high).mean)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return estimate
    return Estimate(estimate.mean, lo, hi, "bootstrap", estimate.n)


def spearman(cell: Any, n_units: Any = None) -> Estimate:
    """A Spearman correlation: t-interval over seeds clipped to [-1, 1], or with one seed the Fisher-z interval
    over ``n_units``."""
    estimate = over_seeds(cell)
    if estimate.has_interval:  # a correlation lies in [-1, 1]: the t-interval is clipped to it
        return Estimate(estimate.mean, max(estimate.low, -1.0), min(estimate.high, 1.0), "seeds", estimate.n)
    if n_units is None:
        return estimate
    m, r = as_float(n_units), estimate.mean
    if m <= 3 or not math.isfinite(r) or abs(r) >= 1:
        return estimate
    half = Z95 * math.sqrt(1.06 / (m - 3))
    return Estimate(r, math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half), "fisher-z", estimate.n)


def indistinguishable(estimates: Sequence[Estimate]) -> bool:
    """Every mean lies within every other estimate's interval (needs two or more, all with intervals)."""
    if len(estimates) < 2 or not all(e.has_interval for e in estimates):
        return False
    return all(b.contains(a.mean) for a in estimates for b in estimates)


def separated(a: Estimate, b: Estimate) -> bool:
    """The two intervals do not overlap."""
    if not (a.has_interval and b.has_interval):
        return False
    return a.high < b.low or b.high < a.low  # type: ignore[operator]


BASIS_TEXT = {
    "seeds": "t-interval over seeds",
    "per-run": "one seed: the run's own 95% CI (over test tasks)",
    "fisher-z": "one seed: Fisher-z interval over the units",
    "bootstrap": "one seed: bootstrap percentile interval over the LDS subsets",
    "none": "one seed: no interval",
}


def basis_note(estimates: Sequence[Estimate]) -> str:
    """Which kinds of interval a table holds, e.g. ``t-interval over seeds (n=3)``."""
    parts = []
    for basis in dict.fromkeys(e.basis for e in estimates):
        ns = sorted({e.n for e in estimates if e.basis == basis})
        suffix = f" (n={', '.join(map(str, ns))})" if basis == "seeds" else ""
        parts.append(BASIS_TEXT[basis] + suffix)
    return "; ".join(parts) or BASIS_TEXT["none"]
