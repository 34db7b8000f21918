"""Metrics: agreement between predicted and actual effects, and confidence intervals of means."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from torch import Tensor


def correlations(pred, actual) -> dict[str, float]:
    """Pearson and Spearman correlation of two 1-D arrays; both NaN, without scipy's warning, where either array is
    constant (no correlation is defined: an oracle's partial LDS, a method that scores every unit alike)."""
    p, a = np.asarray(pred, dtype=float), np.asarray(actual, dtype=float)
    if np.ptp(p) == 0 or np.ptp(a) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(stats.pearsonr(p, a)[0]), "spearman": float(stats.spearmanr(p, a)[0])}


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval over tasks."""
    v = values.double()
    n = v.numel()
    half = 1.96 * float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return float(v.mean()), half


# -- linear datamodeling score (LDS) -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LDS:
    """A Spearman over subsets with its seeded bootstrap 95% interval (:func:`lds`, :func:`lds_ceiling`).

    ``mean``: for the mean evaluation loss; ``per_eval``: the mean over evaluation tasks of the per-task Spearman
    (equal to ``mean`` for a single evaluation task). ``*_ci95``: (low, high) percentile interval over bootstrap
    resamples of the subsets. ``n_subsets`` = N and ``alpha`` = the mean fraction of units per subset.
    """

    mean: float
    mean_ci95: tuple[float, float]
    per_eval: float
    per_eval_ci95: tuple[float, float]
    n_subsets: int
    alpha: float

    def as_metrics(self, prefix: str = "lds") -> dict[str, float]:
        """Flat metric names: ``<prefix>``, ``<prefix>_ci95_low/high``, ``<prefix>_per_eval`` (+ CI), N, alpha."""
        return {prefix: self.mean, f"{prefix}_ci95_low": self.mean_ci95[0], f"{prefix}_ci95_high": self.mean_ci95[1],
                f"{prefix}_per_eval": self.per_eval, f"{prefix}_per_eval_ci95_low": self.per_eval_ci95[0],
                f"{prefix}_per_eval_ci95_high": self.per_eval_ci95[1], f"{prefix}_n_subsets": self.n_subsets,
                f"{prefix}_alpha": self.alpha}


def column_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman of every column pair x[..., :, j], y[..., :, j] over axis -2 (average ranks for ties; NaN where a
    column is constant)."""
    rx = stats.rankdata(x, axis=-2)
    ry = stats.rankdata(y, axis=-2)
    rx = rx - rx.mean(axis=-2, keepdims=True)
    ry = ry - ry.mean(axis=-2, keepdims=True)
    den = np.sqrt((rx * rx).sum(-2) * (ry * ry).sum(-2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-2) / np.where(den > 0, den, 1.0), np.nan)


def _spearman_with_ci(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[float, tuple[float, float]]:
    """Mean over columns of the column Spearman of x, y [N, E] and its percentile 95% interval, resampling the N
    rows (subsets) with replacement ``n_boot`` times from ``numpy.random.default_rng(seed)``."""
    idx = np.random.default_rng(seed).integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns or resamples (constant x or y)
        point = float(np.nanmean(column_spearman(x, y)))
        boot = np.nanmean(column_spearman(x[idx], y[idx]), axis=-1)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return point, (float("nan"), float("nan"))
    low, high = np.percentile(boot, [2.5, 97.5])
    return point, (float(low), float(high))


def _as_losses(losses, n_subsets: int, what: str) -> np.ndarray:
    out = np.asarray(losses, dtype=float)
    out = out[:, None] if out.ndim == 1 else out
    if out.ndim != 2 or out.shape[0] != n_subsets:
        raise ValueError(f"{what} must be (n_subsets,) or (n_subsets, n_eval) with n_subsets = {n_subsets}, got "
                         f"shape {np.asarray(losses).shape}")
    return out


def residualize(values: np.ndarray, covariates) -> np.ndarray:
    """The residuals of every column of ``values`` [N, E] after least-squares regression on an intercept and the
    columns of ``covariates`` [N] or [N, k]: v - X X^+ v with X = [1, covariates]."""
    c = np.asarray(covariates, dtype=float)
    x = np.column_stack([np.ones(values.shape[0]), c.reshape(values.shape[0], -1)])
    return values - x @ np.linalg.lstsq(x, values, rcond=None)[0]


def lds(scores, masks, losses, n_boot: int = 1000, seed: int = 0, covariates=None) -> LDS:
    """Linear datamodeling score (Park et al. 2023, TRAK; as ``dattri.metric.lds``, kronfluence).

    ``scores``: (n_units,) per-unit scores in the project's convention ``score[u] ~ L_eval(without u) - L_eval(with
    u)`` (positive = u helps), or (n_units, n_eval) per evaluation task. ``masks``: (n_subsets, n_units) membership
    (1 = the unit is in the subset the model was retrained on). ``losses``: measured evaluation losses of the
    retrained models, (n_subsets,) or (n_subsets, n_eval).

    The additive datamodel predicts the loss of subset S (up to a constant) as

        pred(S) = - sum_{u in S} score[u]

    with a minus sign: a helpful unit (score > 0) in the subset lowers its loss. (``dattri`` gets the same sign by
    flipping the target: it correlates + sum scores with - loss.) The LDS is Spearman(pred, loss) over subsets:
    ``mean`` for the mean evaluation loss (scores averaged over evaluation tasks when 2-D), ``per_eval`` the mean
    over evaluation tasks j of Spearman(pred_j, loss[:, j]) (with 1-D scores pred_j = pred for every j). The 95%
    intervals resample the subsets (``n_boot`` draws, ``numpy.random.default_rng(seed)``).

    ``covariates`` [N] or [N, k] (e.g. each subset's count of corrupted units) gives the *partial* LDS: the
    Spearman of pred and loss after both are residualized on an intercept and the covariates (:func:`residualize`,
    once on all subsets; the bootstrap resamples the residuals). It asks what a method predicts beyond what the
    covariates explain. A prediction that is a linear function of the covariates (the oracle that scores the
    corrupted units when the covariate counts them) has constant residuals and a NaN partial LDS.
    """
    m = np.asarray(masks, dtype=float)
    s = np.asarray(scores, dtype=float)
    if m.ndim != 2 or s.ndim not in (1, 2) or s.shape[0] != m.shape[1]:
        raise ValueError(f"masks must be (n_subsets, n_units) and scores (n_units,) or (n_units, n_eval); got "
                         f"{m.shape} and {s.shape}")
    y = _as_losses(losses, m.shape[0], "losses")
    s2 = s[:, None] if s.ndim == 1 else s
    if s2.shape[1] not in (1, y.shape[1]):
        raise ValueError(f"scores have {s2.shape[1]} evaluation columns but losses have {y.shape[1]}")
    pred = -(m @ s2)  # [N, 1] or [N, E]
    pred_mean, y_mean, pred_all = pred.mean(1, keepdims=True), y.mean(1, keepdims=True), np.broadcast_to(pred, y.shape)
    if covariates is not None:
        pred_mean, y_mean = _flat_to_zero(pred_mean, covariates), residualize(y_mean, covariates)
        pred_all, y = _flat_to_zero(pred_all, covariates), residualize(y, covariates)
    mean, mean_ci = _spearman_with_ci(pred_mean, y_mean, n_boot, seed)
    per, per_ci = _spearman_with_ci(pred_all, y, n_boot, seed)
    return LDS(mean, mean_ci, per, per_ci, m.shape[0], float(m.mean()))


def _flat_to_zero(values: np.ndarray, covariates) -> np.ndarray:
    """:func:`residualize`, with the columns whose residuals are round-off (at most 1e-9 of the values' magnitude:
    the values were linear in the covariates) set to exactly 0, so that their Spearman is NaN rather than a rank
    correlation of round-off."""
    residuals = residualize(values, covariates)
    scale = np.abs(values).max(0, keepdims=True)
    return np.where(np.abs(residuals).max(0, keepdims=True) <= 1e-9 * scale, 0.0, residuals)


def lds_ceiling(losses_a, losses_b, masks=None, n_boot: int = 1000, seed: int = 0, covariates=None) -> LDS:
    """The ceiling of the LDS: Spearman over subsets between two independent estimates of the same subsets' losses
    (each from its own retraining seeds), for the mean evaluation loss and per evaluation task, with the bootstrap
    interval of :func:`lds`. No attribution can be expected to beat it against either estimate. ``masks`` only
    supplies ``alpha`` (NaN without it). ``covariates``: the ceiling of the partial LDS (both estimates residualized
    as in :func:`lds`): how reproducible the losses are beyond what the covariates explain."""
    a = _as_losses(losses_a, np.asarray(losses_a).shape[0], "losses_a")
    b = _as_losses(losses_b, a.shape[0], "losses_b")
    if a.shape != b.shape:
        raise ValueError(f"the two estimates must have the same shape, got {a.shape} and {b.shape}")
    if covariates is not None:
        a, b = residualize(a, covariates), residualize(b, covariates)
    mean, mean_ci = _spearman_with_ci(a.mean(1, keepdims=True), b.mean(1, keepdims=True), n_boot, seed)
    per, per_ci = _spearman_with_ci(a, b, n_boot, seed)
    alpha = float(np.asarray(masks, dtype=float).mean()) if masks is not None else float("nan")
    return LDS(mean, mean_ci, per, per_ci, a.shape[0], alpha)
