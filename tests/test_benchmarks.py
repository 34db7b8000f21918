"""Benchmarks (pytest-benchmark): the cost of influence relative to retraining, measured in the same run.

``test_task_if_vs_retraining`` is the foundation's speed claim at 40 tasks on real data (digits, the E3 problem):
the time to score every task with task-IF against the time to retrain once per task (converged leave-one-out,
warm-started). Retraining all 40 tasks is extrapolated from ``LOO_SAMPLE`` measured retrainings (stated in the
output). ``test_batched_vs_loop_task_grads`` compares vmapped per-task total gradients with a Python loop.
Ratios are printed and stored in ``extra_info``; no timing is asserted.
"""

from __future__ import annotations

import time
import types

import pytest
import torch

CPU = torch.device("cpu")  # what a RunContext resolves --device cpu to

from experiments import ground_truth, scoring, setups
from experiments.e3_loo import CONFIGS
from experiments.e5_cost import _loop_grads
from metainf.influence import InfluenceConfig, eval_vector, task_scores

LOO_SAMPLE = 4
pytestmark = pytest.mark.benchmark_short


@pytest.fixture(scope="module")
def problem():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = {**CONFIGS["quick"], "outer_steps": 50}
    ctx = types.SimpleNamespace(config=cfg, dataset="mnist", data_root=None, torch_device=CPU,
                                torch_dtype=lambda default: default, seed=0)
    setup = setups.build_setup(ctx, "unrolled")
    fitted = setups.fit(setup, cfg, 0)
    yield setup, fitted, cfg
    torch.set_num_threads(threads)


def test_task_if_vs_retraining(benchmark, problem, tmp_path) -> None:
    setup, fitted, cfg = problem
    obj, ev, lam = setup.objective, setup.eval_objective, fitted.lam_star
    icfg = InfluenceConfig(tol=1e-8, max_iter=2000)

    def score_all_tasks() -> torch.Tensor:
        v, _ = eval_vector(obj, lam, ev, icfg)
        return task_scores(obj, lam, v)

    scores = benchmark.pedantic(score_all_tasks, rounds=3, iterations=1, warmup_rounds=1)
    assert scores.shape == (obj.n_tasks,)
    ctx = types.SimpleNamespace(config=cfg, executor="serial", scheduler=None, seed=0,
                                unit_cache=lambda name: tmp_path / name)
    units = scoring.choose_units(obj, "task", LOO_SAMPLE, 0)
    t0 = time.perf_counter()
    ground_truth.converged_loo(ctx, setup, fitted, "task", units, "bench")
    per_task = (time.perf_counter() - t0) / len(units)
    retrain_all = per_task * obj.n_tasks
    ratio = retrain_all / benchmark.stats.stats.mean
    benchmark.extra_info.update({"tasks": obj.n_tasks, "task_if_s": benchmark.stats.stats.mean,
                                 "retrain_per_task_s": per_task, "retrain_all_s_extrapolated": retrain_all,
                                 "loo_measured": len(units), "speedup": ratio})
    print(f"\ntask-IF for all {obj.n_tasks} tasks: {benchmark.stats.stats.mean:.2f} s; retraining once per task: "
          f"{retrain_all:.1f} s ({per_task:.2f} s x {obj.n_tasks}, from {len(units)} measured); "
          f"task-IF is {ratio:.1f}x faster")


def test_batched_vs_loop_task_grads(benchmark, problem) -> None:
    setup, fitted, _ = problem
    obj, lam = setup.objective, fitted.lam_star
    batched = benchmark.pedantic(lambda: obj.task_grads(lam), rounds=5, iterations=1, warmup_rounds=1)
    _loop_grads(obj, lam)  # warm-up
    t0 = time.perf_counter()
    looped = _loop_grads(obj, lam)
    loop_s = time.perf_counter() - t0
    torch.testing.assert_close(batched, looped, rtol=1e-9, atol=1e-12)
    ratio = loop_s / benchmark.stats.stats.mean
    benchmark.extra_info.update({"loop_s": loop_s, "speedup": ratio})
    print(f"\nper-task total gradients, {obj.n_tasks} tasks: vmap {benchmark.stats.stats.mean * 1e3:.1f} ms, "
          f"Python loop {loop_s * 1e3:.1f} ms ({ratio:.1f}x)")
