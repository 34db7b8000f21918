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

Ratios, CG iterations and exponents are printed and stored in ``benchmark.extra_info``; no timing is asserted.
Conv-4 widths (16, 32, 64) are not covered yet: E5's problems are MLPs, and a Conv-4 point needs its own trained
problem (not attempted in the session that wrote this benchmark).
"""

from __future__ import annotations

import os
import statistics
import time
import types

import numpy as np
import pytest
import torch

from experiments import setups
from experiments.e5_cost import CONFIGS
from metainf.methods import get_method, run_method

CPU = torch.device("cpu")  # what a RunContext resolves --device cpu to
REPEATS = 5
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
        print(f"M={r['n_tasks']:<4d} hidden={r['hidden']:<3d} P={r['n_params']:<6d} epoch {r['epoch_s'] * 1e3:7.1f} ms  "
              f"task_if_fast {r['fast_s'] * 1e3:7.1f} ms = {r['meta_epochs']:.2f} meta-epochs ({r['cg_iters']} CG iters)")
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
