"""metainf.metrics.lds against a hand computation and against dattri's LDS."""

import math
import warnings

import numpy as np
import pytest
import torch

from metainf.metrics import column_spearman, correlations, lds, lds_ceiling, mean_ci95, residualize

SCORES = np.array([1.0, 2.0, 3.0])
MASKS = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 0, 0]])  # summed scores 3, 5, 4, 1
LOSSES = np.array([[0.5, 0.2], [0.3, 0.9], [0.1, 0.5], [0.9, 0.35]])


def test_lds_hand_computed():
    # pred = -(3, 5, 4, 1) has ranks (3, 1, 2, 4).
    # eval task 0: losses (0.5, 0.3, 0.1, 0.9), ranks (3, 2, 1, 4): sum d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8
    # eval task 1: losses (0.2, 0.9, 0.5, 0.35), ranks (1, 4, 3, 2): sum d^2 = 18, rho = 1 - 6*18/60 = -0.8
    # mean loss: (0.35, 0.6, 0.3, 0.625), ranks (2, 3, 1, 4): sum d^2 = 6, rho = 1 - 36/60 = 0.4
    out = lds(SCORES, MASKS, LOSSES)
    assert out.mean == pytest.approx(0.4)
    assert out.per_eval == pytest.approx(0.0)
    assert out.n_subsets == 4 and out.alpha == pytest.approx(7 / 12)
    one = lds(SCORES, MASKS, LOSSES[:, 0])
    assert one.mean == pytest.approx(0.8) and one.per_eval == pytest.approx(0.8)


def test_lds_sign_helpful_units_lower_the_loss():
    rng = np.random.default_rng(0)
    masks = rng.random((30, 12)) < 0.5
    helps = rng.normal(size=12)
    losses = 1.0 - masks @ helps  # exactly additive: each unit lowers the loss by its score
    out = lds(helps, masks, losses)
    assert out.mean == pytest.approx(1.0) and out.mean_ci95 == pytest.approx((1.0, 1.0))
    assert lds(-helps, masks, losses).mean == pytest.approx(-1.0)


def test_lds_interval_seeded_and_covers_point():
    rng = np.random.default_rng(1)
    masks = rng.random((40, 20)) < 0.5
    scores = rng.normal(size=20)
    losses = -(masks @ scores)[:, None] + rng.normal(scale=2.0, size=(40, 3))
    a, b = lds(scores, masks, losses, seed=3), lds(scores, masks, losses, seed=3)
    assert a == b
    assert a.mean_ci95[0] <= a.mean <= a.mean_ci95[1]
    assert a.per_eval_ci95[0] <= a.per_eval <= a.per_eval_ci95[1]
    assert 0.0 < a.mean_ci95[1] - a.mean_ci95[0] < 1.0


def test_lds_matches_dattri():
    metric = pytest.importorskip("dattri.metric")
    rng = np.random.default_rng(2)
    n_units, n_subsets, n_eval = 20, 30, 5
    indices = np.stack([rng.choice(n_units, 10, replace=False) for _ in range(n_subsets)])
    masks = np.zeros((n_subsets, n_units))
    np.put_along_axis(masks, indices, 1.0, axis=1)
    scores = rng.normal(size=(n_units, n_eval))
    losses = -(masks @ scores) + rng.normal(scale=1.5, size=(n_subsets, n_eval))
    # dattri correlates +sum of scores with its target, which it flips to -loss (calculate_lds_ground_truth)
    ref, _ = metric.lds(torch.tensor(scores), (torch.tensor(-losses), torch.tensor(indices)))
    ours = column_spearman(-(masks @ scores), losses)
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-12)
    assert lds(scores, masks, losses).per_eval == pytest.approx(float(ref.mean()))


def test_lds_ceiling():
    rng = np.random.default_rng(4)
    truth = rng.normal(size=(25, 4))
    same = lds_ceiling(truth, truth.copy(), masks=np.ones((25, 3)))
    assert same.mean == pytest.approx(1.0) and same.per_eval == pytest.approx(1.0) and same.alpha == 1.0
    noisy = lds_ceiling(truth + rng.normal(scale=3.0, size=truth.shape),
                        truth + rng.normal(scale=3.0, size=truth.shape))
    assert noisy.per_eval < 0.6


def test_lds_bad_shapes():
    with pytest.raises(ValueError, match="n_subsets"):
        lds(SCORES, MASKS, LOSSES[:3])
    with pytest.raises(ValueError, match="masks must be"):
        lds(SCORES[:2], MASKS, LOSSES)


def test_partial_lds_sees_only_what_the_covariate_does_not_explain():
    """Losses = 3 x (corrupted count) + the effect of a few clean 'key' units + noise. The oracle (scores the
    corrupted units) reaches a high plain LDS but its partial LDS is undefined (its prediction is the count); a
    method that scores only the key units is weak on the plain LDS and strong on the partial one; the partial
    ceiling of two noisy estimates falls with the noise."""
    rng = np.random.default_rng(0)
    n_units, n_subsets = 40, 60
    corrupted = np.zeros(n_units)
    corrupted[:16] = 1
    key = np.zeros(n_units)
    key[20:24] = 1
    masks = (rng.random((n_subsets, n_units)) < 0.5).astype(float)
    count = masks @ corrupted
    signal = 3.0 * count - 1.0 * (masks @ key)  # key units help: they lower the loss
    a = signal + rng.normal(0, 0.3, n_subsets)
    b = signal + rng.normal(0, 0.3, n_subsets)
    y = 0.5 * (a + b)
    oracle, keys = lds(-corrupted, masks, y), lds(key, masks, y)
    assert oracle.mean > 0.8 and keys.mean < 0.5
    assert math.isnan(lds(-corrupted, masks, y, covariates=count).mean)
    assert lds(key, masks, y, covariates=count).mean > 0.8
    assert lds_ceiling(a, b, masks, covariates=count).mean > 0.8
    noisy = lds_ceiling(signal + rng.normal(0, 5.0, n_subsets), signal + rng.normal(0, 5.0, n_subsets), masks,
                        covariates=count)
    assert noisy.mean < lds_ceiling(a, b, masks, covariates=count).mean


def test_residualize_removes_the_covariates_exactly():
    rng = np.random.default_rng(1)
    c = rng.normal(size=(30, 2))
    v = np.column_stack([2.0 + c @ [1.0, -3.0], rng.normal(size=30)])
    r = residualize(v, c)
    assert np.abs(r[:, 0]).max() < 1e-12
    x = np.column_stack([np.ones(30), c])
    assert np.abs(x.T @ r).max() < 1e-10  # residuals orthogonal to the intercept and the covariates


def test_correlations_tell_spearman_from_pearson():
    """A monotone but nonlinear pair: Spearman (ranks) is exactly 1, Pearson is not; hand values for a linear pair."""
    x = np.arange(1.0, 8.0)
    got = correlations(x, x ** 3)
    assert got["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert got["pearson"] < 0.95
    # pred [1, 2, 3] against [1, 3, 2]: Pearson 0.5 by hand; ranks are the values, so Spearman 0.5 too
    assert correlations([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx({"pearson": 0.5, "spearman": 0.5})
    # pred [0, 1, 10] against [0, 1, 2]: Spearman 1; Pearson (x - 11/3).(y - 1) / (|x - 11/3| |y - 1|) by hand
    x, y = np.array([0.0, 1.0, 10.0]), np.array([0.0, 1.0, 2.0])
    pearson = ((x - x.mean()) @ (y - 1)) / (np.linalg.norm(x - x.mean()) * np.linalg.norm(y - 1))
    assert correlations(x, y) == pytest.approx({"pearson": pearson, "spearman": 1.0})


def test_correlations_of_a_constant_array_are_nan_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pred, actual in (([2.0, 2.0, 2.0], [1.0, 3.0, 2.0]), ([1.0, 3.0, 2.0], [0.0, 0.0, 0.0])):
            got = correlations(pred, actual)
            assert np.isnan(got["pearson"]) and np.isnan(got["spearman"])


def test_mean_ci95_hand_computed():
    """[0, 1, 2]: mean 1, sample standard deviation 1 (n - 1 in the denominator), half-width 1.96 / sqrt(3)."""
    mean, half = mean_ci95(torch.tensor([0.0, 1.0, 2.0]))
    assert mean == pytest.approx(1.0)
    assert half == pytest.approx(1.96 / math.sqrt(3))
    assert math.isnan(mean_ci95(torch.tensor([4.0]))[1])  # one value: no interval
