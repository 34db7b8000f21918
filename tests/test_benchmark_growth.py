"""Benchmark (pytest-benchmark): how the cost of ``task_if_fast`` grows with the number of tasks and of parameters.

Each point is E5's problem (``experiments/e5_cost.py``, quick config: 8x8 digits, unrolled second-order MAML, MLP,
float64), trained as E5 trains it, and the cost is reported as E5 reports it: the time to score every task with a
fresh ``task_if_fast`` in meta-epochs, one meta-epoch being one F value and total gradient over the same M tasks at
the initial point. Both are timed ``REPEATS`` times, interleaved in the same process (the machine's load drifts), and
the ratio is median / median. The growth exponent is the least-squares slope of log(seconds) on log(M) (also of
log(meta-epochs), which is 0 for a method that costs a fixed number of meta-epochs).

- ``test_fast_task_if_growth_in_tasks`` (``slow``, opt-in: ``METAINF_BENCH_GROWTH=1``, about 3 min): M = 10, 30,
  100, 300 at hidden width 16;
- ``test_fast_task_if_growth_in_parameters`` (``slow``, opt-in as above, about 3 min): MLP hidden widths 8, 16, 32, 64
  at M = 100;
- ``test_fast_task_if_cost_short`` (``benchmark_short``, for CI): M = 10 and 30 at width 8, a few seconds.

- ``test_fast_task_if_growth_in_conv4_width`` (``slow``, opt-in as above, about 15 min): Conv-4 widths 16, 32 and
  64 in E1's learning regime (16 px Omniglot, float32, 40% noisy tasks, E1's Adam budget) at M = ``CONV4_TASKS``,
  scored with E1's damping rule (lam_T is not a minimum; ``experiments.regime.damping_rule``), as the Conv-4 parts of
  E2 and E3 run ``task_if_fast``. The full budget matters: after 60 steps CG did not reach its tolerance in 50
  iterations at widths 16 and 32 (H_F far from positive there, so H_F + damping I is nearly singular).

Ratios, CG iterations and exponents are printed and stored in ``benchmark.extra_info``; no timing is asserted.
"""

from __future__ import annotations

import os
import statistics
import time
import types

import numpy as np
import pytest
import torch

from experiments import regime, setups
from experiments.e1_removal import regime_config
from experiments.e5_cost import CONFIGS
from metainf.methods import get_method, run_method

CPU = torch.device("cpu")  # what a RunContext resolves --device cpu to
REPEATS = 5
#: the Conv-4 points: training tasks, repeats (a width-64 meta-epoch takes seconds)
CONV4_TASKS, CONV4_REPEATS = 50, 3
opt_in = pytest.mark.skipif(os.environ.get("METAINF_BENCH_GROWTH") != "1",
                            reason="opt-in benchmark (6 min): set METAINF_BENCH_GROWTH=1")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def measure(n_tasks: int, hidden: int, repeats: int = REPEATS) -> tuple[dict, object]:
    """(timings, problem) of one grid point: fitted as E5 fits it; meta-epoch and task_if_fast timed interleaved
    ``repeats`` times."""
    cfg = {**CONFIGS["quick"], "n_train_tasks": n_tasks, "hidden": [hidden]}
    ctx = types.SimpleNamespace(config=cfg, dataset="mnist", data_root=None, torch_device=CPU,
                                torch_dtype=lambda default: default, seed=0)
    setup = setups.build_setup(ctx, "unrolled")
    obj = setup.objective
    lam0 = setup.model.init(0, obj.tasks.xs.dtype)
    problem = setups.problems(setup, setups.fit(setup, cfg, 0), 0)["converged"]
    obj.value_and_grad(lam0)  # warm-up, as E5
    run_method(get_method("task_if_fast"), problem, "task")
    epochs, fast = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        obj.value_and_grad(lam0)
        epochs.append(time.perf_counter() - t0)
        method = get_method("task_if_fast")
        fast.append(run_method(method, problem, "task").seconds)
    epoch_s, fast_s = statistics.median(epochs), statistics.median(fast)
    return {"n_tasks": n_tasks, "hidden": hidden, "n_params": setup.model.n_params, "epoch_s": epoch_s,
            "fast_s": fast_s, "meta_epochs": fast_s / epoch_s, "cg_iters": method.last_info.iterations}, problem


def slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of log y on log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def sweep(benchmark, points: list[tuple[int, int]], along: str) -> list[dict]:
    rows = []
    for m, h in points:
        row, problem = measure(m, h)
        rows.append(row)
    # the largest point, timed again by pytest-benchmark
    benchmark.pedantic(lambda: run_method(get_method("task_if_fast"), problem, "task"), rounds=3, iterations=1,
                       warmup_rounds=1)
    xs = [r[along] for r in rows]
    growth = {"seconds": slope(xs, [r["fast_s"] for r in rows]),
              "meta_epochs": slope(xs, [r["meta_epochs"] for r in rows]),
              "epoch": slope(xs, [r["epoch_s"] for r in rows])}
    benchmark.extra_info.update({"points": rows, f"growth_exponent_in_{along}": growth})
    print()
    for r in rows:
        print(f"M={r['n_tasks']:<4d} hidden={r['hidden']:<3d} P={r['n_params']:<6d} "
              f"epoch {r['epoch_s'] * 1e3:7.1f} ms  "
              f"task_if_fast {r['fast_s'] * 1e3:7.1f} ms = {r['meta_epochs']:.2f} meta-epochs "
              f"({r['cg_iters']} CG iters)")
    print(f"growth exponent in {along}: task_if_fast seconds {growth['seconds']:.2f}, meta-epochs "
          f"{growth['meta_epochs']:.2f}, meta-epoch seconds {growth['epoch']:.2f}")
    return rows


@opt_in
@pytest.mark.slow
def test_fast_task_if_growth_in_tasks(benchmark) -> None:
    rows = sweep(benchmark, [(m, 16) for m in (10, 30, 100, 300)], "n_tasks")
    assert all(r["cg_iters"] >= 1 for r in rows)


@opt_in
@pytest.mark.slow
def test_fast_task_if_growth_in_parameters(benchmark) -> None:
    rows = sweep(benchmark, [(100, h) for h in (8, 16, 32, 64)], "n_params")
    assert [r["n_params"] for r in rows] == sorted(r["n_params"] for r in rows)


@pytest.mark.benchmark_short
def test_fast_task_if_cost_short(benchmark) -> None:
    rows = sweep(benchmark, [(10, 8), (30, 8)], "n_tasks")
    assert len(rows) == 2


def measure_conv4(width: int, repeats: int = CONV4_REPEATS) -> tuple[dict, object, float]:
    """(timings, problem, damping) of one Conv-4 point (module docstring): meta-epoch at lam_0 and ``task_if_fast``
    at lam_T with the regime's damping, timed interleaved ``repeats`` times."""
    cfg = {**regime_config("quick", "omniglot"), "width": width, "n_train_tasks": CONV4_TASKS}
    ctx = types.SimpleNamespace(config=cfg, dataset="omniglot", data_root=None, torch_device=CPU,
                                torch_dtype=lambda default: default, seed=0)
    fit = regime.fit_regime(ctx, "unrolled")
    obj, problem = fit.problem.objective, fit.problem
    obj.value_and_grad(fit.lam0)  # warm-up
    epochs, fast = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        obj.value_and_grad(fit.lam0)
        epochs.append(time.perf_counter() - t0)
        method = get_method("task_if_fast", damping=fit.damping)
        fast.append(run_method(method, problem, "task").seconds)
    epoch_s, fast_s = statistics.median(epochs), statistics.median(fast)
    return {"n_tasks": CONV4_TASKS, "width": width, "n_params": fit.setup.model.n_params, "epoch_s": epoch_s,
            "fast_s": fast_s, "meta_epochs": fast_s / epoch_s, "cg_iters": method.last_info.iterations,
            "damping": fit.damping}, problem, fit.damping


@opt_in
@pytest.mark.slow
def test_fast_task_if_growth_in_conv4_width(benchmark) -> None:
    rows = []
    for width in (16, 32, 64):
        row, problem, damping = measure_conv4(width)
        rows.append(row)
    benchmark.pedantic(lambda: run_method(get_method("task_if_fast", damping=damping), problem, "task"), rounds=1,
                       iterations=1)
    xs = [r["n_params"] for r in rows]
    growth = {"seconds": slope(xs, [r["fast_s"] for r in rows]),
              "meta_epochs": slope(xs, [r["meta_epochs"] for r in rows]),
              "epoch": slope(xs, [r["epoch_s"] for r in rows])}
    benchmark.extra_info.update({"points": rows, "growth_exponent_in_n_params": growth})
    print()
    for r in rows:
        print(f"Conv-4 width {r['width']:<3d} P={r['n_params']:<7d} epoch {r['epoch_s']:7.2f} s  task_if_fast "
              f"{r['fast_s']:7.2f} s = {r['meta_epochs']:.2f} meta-epochs ({r['cg_iters']} CG iters, damping "
              f"{r['damping']:.3g})")
    print(f"growth exponent in parameters: task_if_fast seconds {growth['seconds']:.2f}, meta-epochs "
          f"{growth['meta_epochs']:.2f}, meta-epoch seconds {growth['epoch']:.2f}")
    assert xs == sorted(xs) and all(r["cg_iters"] >= 1 for r in rows)
