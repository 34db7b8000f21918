"""Benchmark (opt-in): converged leave-one-out retraining of 40 tasks fanned out on a Dask ``LocalCluster``.

Issue "Scale" asks that retraining 40 tasks on a loopback ``LocalCluster`` with 2 workers gives the same numbers
as the local process-pool executor and is faster than one worker. The problem is E3's quick problem on digits
(565-parameter MLP, 40 tasks), the retraining is :func:`experiments.ground_truth.converged_loo`, unchanged. Measured in
one run: Dask with 1 worker (the reference), Dask with 2 workers (the benchmark), the local executor with 2
processes. The numbers must be bitwise equal; the speed-up of 2 workers over 1 is printed and stored in
``extra_info``, not asserted.

It retrains 120 times (about 5 minutes on 2 idle cores), so it only runs when asked::

    METAINF_BENCH_DASK=1 .venv/bin/python -m pytest -q -s tests/test_benchmark_dask.py
"""

from __future__ import annotations

import functools
import os
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

CPU = torch.device("cpu")  # what a RunContext resolves --device cpu to

from experiments import ground_truth, scoring, setups
from experiments.e3_loo import CONFIGS
from metainf.runtime import executor

pytestmark = pytest.mark.skipif(os.environ.get("METAINF_BENCH_DASK") != "1",
                                reason="opt-in benchmark (5 min): set METAINF_BENCH_DASK=1")
N_TASKS = 40


@pytest.fixture(scope="module")
def problem():
    pytest.importorskip("distributed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = {**CONFIGS["quick"], "n_train_tasks": N_TASKS}
    ctx = types.SimpleNamespace(config=cfg, dataset="mnist", data_root=None, torch_device=CPU,
                                torch_dtype=lambda default: default, seed=0)
    setup = setups.build_setup(ctx, "unrolled")
    fitted = setups.fit(setup, cfg, 0)
    yield setup, fitted, cfg
    torch.set_num_threads(threads)


def _retrain_all(setup, fitted, cfg, cache: Path, name: str, n_workers: int,
                 monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """Converged LOO of every task with ``name`` ("dask" or "local") and ``n_workers``, no cache reuse."""
    monkeypatch.setattr(ground_truth, "run_units", functools.partial(executor.run_units, n_workers=n_workers))
    ctx = types.SimpleNamespace(config=cfg, executor=name, scheduler=None, seed=0,
                                unit_cache=lambda tag: cache / f"{name}-{n_workers}-{tag}")
    units = scoring.choose_units(setup.objective, "task", N_TASKS, 0)
    return ground_truth.converged_loo(ctx, setup, fitted, "task", units, "bench-dask")


def test_dask_two_workers_vs_one(benchmark, problem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup, fitted, cfg = problem
    t0 = time.perf_counter()
    one = _retrain_all(setup, fitted, cfg, tmp_path, "dask", 1, monkeypatch)
    one_s = time.perf_counter() - t0
    two = benchmark.pedantic(_retrain_all, args=(setup, fitted, cfg, tmp_path, "dask", 2, monkeypatch),
                             rounds=1, iterations=1)
    two_s = benchmark.stats.stats.mean
    t0 = time.perf_counter()
    local = _retrain_all(setup, fitted, cfg, tmp_path, "local", 2, monkeypatch)
    local_s = time.perf_counter() - t0
    np.testing.assert_array_equal(two, one)
    np.testing.assert_array_equal(two, local)
    speedup = one_s / two_s
    benchmark.extra_info.update({"tasks": N_TASKS, "dask_1_worker_s": one_s, "dask_2_workers_s": two_s,
                                 "local_2_workers_s": local_s, "speedup_2_over_1": speedup})
    print(f"\nconverged LOO of {N_TASKS} tasks: Dask 1 worker {one_s:.1f} s, Dask 2 workers {two_s:.1f} s "
          f"({speedup:.2f}x), local executor 2 workers {local_s:.1f} s; numbers bitwise equal")
