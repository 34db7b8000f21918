"""Metrics: agreement between predicted and actual effects, and confidence intervals of means."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from torch import Tensor


def correlations(pred, actual) -> dict[str, float]:
    """Pearson and Spearman correlation of two 1-D arrays."""
    p, a = np.asarray(pred, dtype=float), np.asarray(actual, dtype=float)
    return {"pearson": float(stats.pearsonr(p, a)[0]), "spearman": float(stats.spearmanr(p, a)[0])}


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval over tasks."""
    v = values.double()
    n = v.numel()
    half = 1.96 * float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return float(v.mean()), half
