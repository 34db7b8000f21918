"""E5's timing bookkeeping: cheap methods are timed several times, each run against a meta-epoch timed just before
it, and the reported meta-epochs are the median of those ratios (no timing is asserted)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from experiments.base import RunContext
from experiments.e5_cost import CONFIGS, run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cheap_methods_are_timed_up_to_the_repeats_and_reported_as_the_median_ratio(tmp_path: Path) -> None:
    cfg = {**CONFIGS["smoke"], "tasks_grid": [10], "hidden_grid": [8], "loo_sample": 1, "timing_repeats": 4,
           "timing_budget_s": 60.0, "outer_steps": 5, "max_iter": 30}
    ctx = RunContext(exp_id="E5", dataset="mnist", scale="smoke", config=cfg, seed=0,
                     methods=("task_if_fast", "grad_dot"), out_dir=tmp_path, data_root=None, executor="serial",
                     scheduler=None, cache_dir=tmp_path / "cache", logger=lambda metrics, step: None)
    out = run(ctx)
    point, entry = out["series"]["points"][0], out["metrics"]["m10_h8"]
    for name in ("task_if_fast", "grad_dot", "task_if_fast_support"):
        ratios = point[f"{name}_epoch_ratios"]
        assert len(ratios) == 4 and all(r > 0 for r in ratios)
    assert entry["task_if_fast_epochs"] == pytest.approx(statistics.median(point["task_if_fast_epoch_ratios"]))
    assert entry["task_if_fast_support_epochs"] == pytest.approx(
        statistics.median(point["task_if_fast_support_epoch_ratios"]))
    assert entry["task_if_fast_grad_passes"] == pytest.approx(point["task_if_fast_s"] / point["batched_grads_s"])
    assert entry["task_if_fast_summed_grad_passes"] == pytest.approx(point["task_if_fast_s"] / point["summed_grad_s"])


def test_a_slow_method_runs_once(tmp_path: Path) -> None:
    cfg = {**CONFIGS["smoke"], "tasks_grid": [10], "hidden_grid": [8], "loo_sample": 1, "timing_repeats": 5,
           "timing_budget_s": 0.0, "outer_steps": 5, "max_iter": 30}
    ctx = RunContext(exp_id="E5", dataset="mnist", scale="smoke", config=cfg, seed=0, methods=("task_if_fast",),
                     out_dir=tmp_path, data_root=None, executor="serial", scheduler=None, cache_dir=tmp_path / "c",
                     logger=lambda metrics, step: None)
    point = run(ctx)["series"]["points"][0]
    assert len(point["task_if_fast_epoch_ratios"]) == 1
