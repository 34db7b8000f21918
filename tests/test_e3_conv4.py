"""E3's Conv-4 part (experiments.e3_conv4) end to end at a tiny size: the LDS numbers it reports are recomputed
from its own series with scipy, the ceiling is the Spearman of the two estimates, and an interrupted run resumes
from the saved retraining batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from experiments import e3_conv4, scoring
from experiments.base import RunContext
from experiments.e3_loo import CONV4_PROBLEM, EXPERIMENT as E3
from replication.config import resolve_config
from replication.results import bad_numbers, to_jsonable

pytestmark = pytest.mark.usefixtures("one_thread")


def _ctx(tmp_path: Path) -> tuple[RunContext, dict]:
    cfg = resolve_config(E3, "smoke", "omniglot", {})
    methods = ("task_if_truncated", "task_if_fast", "tracin_cp", "random")
    ctx = RunContext("E3", "omniglot", "smoke", cfg, 0, methods, tmp_path, None, "serial", None, tmp_path / "cache",
                     lambda metrics, step=None: None)
    return ctx, cfg["conv4"]


def test_conv4_part_reports_lds_it_can_back_up(tmp_path: Path) -> None:
    ctx, cfg = _ctx(tmp_path)
    # after 100 steps H_F has negative eigenvalues near -lambda_max, which CG meets (recorded as skipped); twice the
    # estimate of lambda_max (5 power iterations underestimate it) makes every solve positive definite
    cfg = {**cfg, "damping_factor": 2.0}
    assert cfg["model"] == "conv4" and cfg["dtype"] == "float32"
    methods = scoring.part_methods(ctx.methods, cfg["methods"], E3.default_methods)
    metrics, series, rows = e3_conv4.run_conv4(ctx, CONV4_PROBLEM, cfg, methods)
    masks = np.array(series["masks"], dtype=float)
    a, b = np.array(series["losses_a"]), np.array(series["losses_b"])
    assert masks.shape == (cfg["lds"]["n_subsets"], cfg["n_train_tasks"])
    assert np.allclose(masks.sum(1), round(cfg["lds"]["alpha"] * cfg["n_train_tasks"]))
    # the ceiling is Spearman(A, B) of the mean evaluation loss over subsets
    assert metrics["lds"]["lds_ceiling"] == pytest.approx(stats.spearmanr(a.mean(1), b.mean(1))[0])
    truth = 0.5 * (a + b)
    for method in ("task_if_truncated", "task_if_fast", "tracin_cp", "random", "oracle"):
        s = np.array(series["scores"][method])
        expected = stats.spearmanr(-(masks @ s), truth.mean(1))[0]
        assert metrics[method]["task_lds"] == pytest.approx(expected), method
        assert metrics[method]["task_lds_ci95_low"] <= metrics[method]["task_lds_ci95_high"]
    assert series["scores"]["oracle"] == [-float(c) for c in series["corrupted"]]
    # partial LDS: both sides residualized on the subsets' corrupted counts (an independent least-squares fit here)
    count = masks @ np.array(series["corrupted"], dtype=float)
    x = np.column_stack([np.ones_like(count), count])
    resid = lambda v: v - x @ np.linalg.lstsq(x, v, rcond=None)[0]  # noqa: E731
    s = np.array(series["scores"]["tracin_cp"])
    assert metrics["tracin_cp"]["task_lds_partial"] == pytest.approx(
        stats.spearmanr(resid(-(masks @ s)), resid(truth.mean(1)))[0])
    assert metrics["lds"]["lds_ceiling_partial"] == pytest.approx(
        stats.spearmanr(resid(a.mean(1)), resid(b.mean(1)))[0])
    assert np.isnan(metrics["oracle"]["task_lds_partial"])  # the oracle's prediction is the count itself
    # ... which the runner's check of non-finite numbers accepts (E3 declares it), and nothing else is undefined
    payload = to_jsonable({"metrics": metrics, "rows": rows})
    assert not list(bad_numbers(payload, undefined_ok=E3.undefined_ok))
    assert list(bad_numbers(payload))  # without the declaration the NaN would stop the run
    # task_if_fast's own column per evaluation task: the mean over evaluation tasks of each task's Spearman
    own = np.array(series["scores_per_eval"]["task_if_fast"])
    assert own.shape == (cfg["n_train_tasks"], truth.shape[1])
    expected = np.mean([stats.spearmanr(-(masks @ own[:, j]), truth[:, j])[0] for j in range(truth.shape[1])])
    assert metrics["task_if_fast"]["task_lds_per_eval_own"] == pytest.approx(expected)
    solve = metrics["task_if_fast"]["per_eval_solve"]
    assert solve["n_eval"] == truth.shape[1] and solve["projected_converged"] and solve["cold_converged"]
    assert solve["precond"] == cfg["per_eval"]["options"]["precond"] == "diag_hutchinson"  # shared by the solves
    assert solve["cold_vs_projected_rel_diff"] < 0.2  # both stop at relative residual 0.05, from different starts
    assert "per_eval_solve" not in metrics["tracin_cp"]
    assert metrics["warmstart"]["noise_floor"] > 0 and len(series["warmstart_effects"]) == cfg["warmstart"]["n_units"]
    assert {r["method"] for r in rows} == {*methods, "oracle"}
    assert metrics["n_params"] > 0 and metrics["full"]["acc"] >= 0


def test_conv4_part_resumes_its_retrainings(tmp_path: Path) -> None:
    """The LDS retraining batches are saved under the seed's cache folder; a rerun loads them, same numbers."""
    ctx, cfg = _ctx(tmp_path)
    first, series, _ = e3_conv4.run_conv4(ctx, CONV4_PROBLEM, cfg, ("random",))
    saved = sorted((tmp_path / "cache" / f"{CONV4_PROBLEM}-lds").glob("*.pt"))
    assert len(saved) == cfg["lds"]["n_subsets"] * 2 // cfg["lds"]["batch"]
    again, series_again, _ = e3_conv4.run_conv4(ctx, CONV4_PROBLEM, cfg, ("random",))
    assert series_again["losses_a"] == series["losses_a"] and again["lds"]["lds_ceiling"] == first["lds"]["lds_ceiling"]
