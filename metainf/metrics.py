"""Agreement metrics between predicted and actual effects."""

from __future__ import annotations

import numpy as np
from scipy import stats


def correlations(pred, actual) -> dict[str, float]:
    """Pearson and Spearman correlation of two 1-D arrays."""
    p, a = np.asarray(pred, dtype=float), np.asarray(actual, dtype=float)
    return {"pearson": float(stats.pearsonr(p, a)[0]), "spearman": float(stats.spearmanr(p, a)[0])}
