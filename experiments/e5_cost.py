"""E5: cost. Runtime and peak memory against the number of tasks and of parameters, every method and retraining.

For each (number of training tasks M, hidden width) on the grid, measured in one process:

- ``epoch_s``: one meta-epoch, i.e. one full-batch F value and total gradient over all M tasks (median of 3), as the
  trainer computes it (``MetaObjective.value_and_grad``: for unrolled MAML one reverse pass of the summed task
  losses, which gives F and its gradient at once; for iMAML a pass of task losses, then one of per-task total
  gradients);
- ``summed_grad_s`` (unrolled second-order MAML only): one reverse pass of the summed task losses
  (``metainf.linalg.finite_difference.data_gradient_and_losses``), the cost of one finite-difference total HVP: the
  same pass as the meta-epoch there, timed apart. Every method's time is also reported in these passes
  (``{method}_summed_grad_passes``);
- ``train_s``: the meta-training that produces lam* (recorded stochastic phase, then full-batch convergence): the
  unit of the retraining cost, measured on the training the methods explain (no second training);
- every method's scoring time for all tasks (the median over up to ``timing_repeats`` runs, repeated while they take
  under ``timing_budget_s`` in all, so that only cheap methods, whose single timings the machine's load dominates, are
  repeated; each run's time is also divided by a meta-epoch timed just before it, and the reported meta-epochs are the
  median of these ratios) and its peak resident memory (``metainf.methods.run_method``), and the
  Spearman correlation of its task scores with exact task-IF (``task_if``, CG on the exact total Hessian) at the
  same point: the accuracy side of the cheap curvatures (``task_if_fisher``: empirical-Fisher total curvature;
  ``task_if_nystrom``: a rank-3 sketch of the exact total Hessian with one block-Krylov step;
  ``task_if_truncated``: 3 CG iterations with finite-difference total HVPs, one gradient pass each;
  ``task_if_fast``: the same CG stopped at a relative residual);
- instance-IF for every support point of every task (``task_if`` and ``task_if_truncated`` with unit kind
  ``support``, a fresh method each, so the time includes the solve for v): ``{method}_support_s``;
- ``loo_all_s``: converged leave-one-out retraining of all M tasks, *extrapolated* as ``loo_setup_s`` (the start
  curvature at lam* that every retraining shares, ``ground_truth.start_curvature``, timed once) plus M times the mean
  time ``loo_per_task_s`` of ``loo_sample`` measured retrainings (the number measured is stored beside it);
- ``loop_grads_s`` vs ``batched_grads_s``: per-task total gradients by a Python loop over tasks vs one ``vmap``.

Reported ratios: each method's time in meta-epochs, in batched per-task-gradient passes (``batched_grads_s``, the
floor of any method that needs every task's total gradient) and as a speed-up over leave-one-out retraining, and
the growth exponent of each method's time in M (least-squares slope on log-log axes, per width).
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from experiments import ground_truth, scoring, setups
from experiments.base import Experiment, RunContext
from metainf.core.bilevel import TaskData
from metainf.core.objective import MetaObjective
from metainf.linalg.finite_difference import data_gradient_and_losses, supports_fd
from metainf.methods import get_method, run_method
from metainf.metrics import correlations
from metainf.runtime.interrupts import reraise_interruption

#: methods also timed on instance-IF (all M x S support points, solve included)
INSTANCE_METHODS = ("task_if", "task_if_truncated", "task_if_fast")
METHODS = ("task_if", "task_if_nystrom", "task_if_truncated", "task_if_fast", "task_if_fisher", "direct_if", "tracin",
           "dvemb_exact", "trak", "grad_dot")
_BASE = {
    "mnist_source": "digits",  # scikit-learn's 8x8 digits, as before real MNIST (metainf.data.mnist)
    "n_way": 5, "k_shot": 1, "q_query": 2, "model": "mlp", "delta": 0.1, "tol": 1e-6, "max_iter": 300,
    "outer_steps": 50, "outer_batch": 8, "outer_lr": 1.0, "outer_optimizer": "sgd", "inners": ["unrolled"],
    "unrolled": {"steps": 1, "lr": 0.4}, "proximal": {"beta": 2.0}, "n_eval_tasks": 20, "loo_sample": 2,
    "timing_repeats": 11, "timing_budget_s": 0.5,
}
# Omniglot as in E3 (12 px, outer L2 0.03): at 8 px with L2 0.1 lam* collapses to 0 at 100 tasks and every score is
# ~1e-21 (rank correlations of round-off)
_OMNIGLOT = {"image_size": 12, "delta": 0.03}
CONFIGS = {
    "smoke": {**_BASE, "tasks_grid": [10, 20], "hidden_grid": [8], "loo_sample": 2,
              "by_dataset": {"omniglot": _OMNIGLOT}},
    # quick Omniglot: width 8 only (1,205 parameters, the size of the digits' width 16) and one timed leave-one-out
    # retraining per point: there a converged retraining of one task at M = 100 takes 10 to 20 minutes (tolerance
    # 1e-6), and width 16 took over an hour per grid point
    "quick": {**_BASE, "tasks_grid": [10, 30, 100], "hidden_grid": [8, 16],
              "by_dataset": {"omniglot": {**_OMNIGLOT, "hidden_grid": [8], "loo_sample": 1}}},
    "paper": {**_BASE, "tasks_grid": [10, 30, 100, 300], "hidden_grid": [8, 32, 64], "loo_sample": 5,
              "by_dataset": {"omniglot": _OMNIGLOT}},
}


def median_time(fn, repeats: int = 3) -> float:
    fn()  # warm-up: first calls pay for tracing and allocation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _loop_grads(obj: MetaObjective, lam: torch.Tensor) -> torch.Tensor:
    """Per-task total gradients one task at a time (the reference the batched path is measured against)."""
    return torch.stack([obj.inner.total_grad(obj.model, lam, TaskData(*(x[k] for x in obj.tasks)), None)
                        for k in range(obj.n_tasks)])


def measure(ctx: RunContext, n_tasks: int, hidden: int) -> dict:
    """Every timing of one grid point (see the module docstring)."""
    cfg = {**ctx.config, "n_train_tasks": n_tasks, "hidden": [hidden]}
    sub = RunContext(**{**ctx.__dict__, "config": cfg})
    setup = setups.build_setup(sub, cfg["inners"][0])
    obj = setup.objective
    x = setup.objective.tasks.xs  # the run's dtype and device
    lam0 = setup.model.init(ctx.seed, x.dtype).to(x.device)
    out: dict = {"n_tasks": n_tasks, "hidden": hidden, "n_params": setup.model.n_params}
    out["epoch_s"] = median_time(lambda: obj.value_and_grad(lam0))
    out["batched_grads_s"] = median_time(lambda: obj.task_grads(lam0))
    if supports_fd(obj):
        out["summed_grad_s"] = median_time(lambda: data_gradient_and_losses(obj, lam0))
    if cfg["inners"][0] == "unrolled":
        out["loop_grads_s"] = median_time(lambda: _loop_grads(obj, lam0))
    fitted = setups.fit(setup, cfg, ctx.seed)
    out["train_s"] = fitted.seconds
    problem = setups.problems(setup, fitted, ctx.seed)["converged"]

    def timed(name: str, kind: str, prefix: str) -> None:
        """Score ``kind`` units with a fresh ``name``: ``{prefix}_s``, ``{prefix}_peak_mb`` (or ``{prefix}_error``),
        and ``{prefix}_epoch_ratios``: its time over a meta-epoch timed just before it, for each of up to
        ``timing_repeats`` runs (fresh instances; repeated while the runs so far took under ``timing_budget_s``)."""
        runs: list = []
        repeats, budget = cfg.get("timing_repeats", 1), cfg.get("timing_budget_s", 0.0)
        while not runs or (len(runs) < repeats and sum(r[1].seconds for r in runs) < budget):
            t0 = time.perf_counter()
            obj.value_and_grad(lam0)
            epoch = time.perf_counter() - t0
            try:
                runs.append((epoch, run_method(get_method(name), problem, kind)))
            except Exception as error:  # noqa: BLE001 - recorded as this method's error; the others' results are kept
                reraise_interruption(error)
                out[f"{prefix}_error"] = f"{type(error).__name__}: {error}"
                return
        sc = runs[0][1]
        out[f"{prefix}_s"] = statistics.median(r[1].seconds for r in runs)
        out[f"{prefix}_peak_mb"] = max(r[1].peak_rss_mb for r in runs)
        out[f"{prefix}_epoch_ratios"] = [r[1].seconds / r[0] for r in runs]
        if kind == "task":
            scores[name] = sc.values.cpu().numpy()

    scores: dict = {}
    for name in ctx.methods:
        timed(name, "task", name)
    for name in (m for m in INSTANCE_METHODS if m in ctx.methods):
        timed(name, "support", f"{name}_support")
    for name, values in scores.items():
        if "task_if" in scores and name != "task_if":
            out[f"{name}_spearman_vs_task_if"] = correlations(values, scores["task_if"])["spearman"]
    units = scoring.choose_units(obj, "task", cfg["loo_sample"], ctx.seed)
    t0 = time.perf_counter()
    curvature = ground_truth.start_curvature(obj, fitted.lam_star, "task")
    out["loo_setup_s"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as fresh:  # a timing is never resumed: no cached retraining is counted
        timing_ctx = dataclasses.replace(sub, cache_dir=Path(fresh))
        t0 = time.perf_counter()
        ground_truth.converged_loo(timing_ctx, setup, fitted, "task", units, f"e5-{n_tasks}-{hidden}", curvature)
        out["loo_per_task_s"] = (time.perf_counter() - t0) / len(units)
    out["loo_all_s"] = out["loo_setup_s"] + out["loo_per_task_s"] * n_tasks
    out["loo_measured"] = len(units)
    return out


def _ratio(p: dict, prefix: str) -> float:
    """A method's time in meta-epochs: the median of its runs' ratios to a meta-epoch timed just before each run
    (older results without them: its time over the grid point's meta-epoch)."""
    ratios = p.get(f"{prefix}_epoch_ratios")
    return statistics.median(ratios) if ratios else p[f"{prefix}_s"] / p["epoch_s"]


def _slope(x: list[float], y: list[float]) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0]) if len(x) > 1 else float("nan")


def run(ctx: RunContext) -> dict:
    torch.set_num_threads(1)
    cfg = ctx.config
    points = [measure(ctx, m, h) for h in cfg["hidden_grid"] for m in ctx.progress(cfg["tasks_grid"], "grid")]
    metrics: dict = {}
    rows = []
    for p in points:
        key = f"m{p['n_tasks']}_h{p['hidden']}"
        entry = {"epoch_s": p["epoch_s"], "train_s": p["train_s"], "loo_all_s": p["loo_all_s"]}
        if "summed_grad_s" in p:
            entry["summed_grad_s"] = p["summed_grad_s"]
        if "loop_grads_s" in p:
            entry["batched_grad_speedup"] = p["loop_grads_s"] / p["batched_grads_s"]
        for name in ctx.methods:
            if f"{name}_s" in p:
                mk = scoring.metric_key(name)
                entry[f"{mk}_epochs"] = _ratio(p, name)
                entry[f"{mk}_grad_passes"] = p[f"{name}_s"] / p["batched_grads_s"]
                if "summed_grad_s" in p:
                    entry[f"{mk}_summed_grad_passes"] = p[f"{name}_s"] / p["summed_grad_s"]
                entry[f"{mk}_speedup_vs_loo"] = p["loo_all_s"] / p[f"{name}_s"]
                rho = p.get(f"{name}_spearman_vs_task_if", 1.0 if name == "task_if" else float("nan"))
                if name != "task_if":
                    entry[f"{mk}_spearman_vs_task_if"] = rho
                rows.append({"tasks": p["n_tasks"], "params": p["n_params"], "method": name, "time_s": p[f"{name}_s"],
                             "meta_epochs": entry[f"{mk}_epochs"], "grad_passes": entry[f"{mk}_grad_passes"],
                             **({"summed_grad_passes": entry[f"{mk}_summed_grad_passes"]}
                                if "summed_grad_s" in p else {}),
                             "peak_mb": p[f"{name}_peak_mb"],
                             "speedup_vs_loo": entry[f"{mk}_speedup_vs_loo"], "spearman_vs_task_if": rho})
        for name in (m for m in INSTANCE_METHODS if f"{m}_support_s" in p):
            mk = scoring.metric_key(name)
            entry[f"{mk}_support_epochs"] = _ratio(p, f"{name}_support")
            rows.append({"tasks": p["n_tasks"], "params": p["n_params"], "method": f"{name} (all support points)",
                         "time_s": p[f"{name}_support_s"], "meta_epochs": entry[f"{mk}_support_epochs"],
                         "grad_passes": p[f"{name}_support_s"] / p["batched_grads_s"],
                         "peak_mb": p[f"{name}_support_peak_mb"]})
        rows.append({"tasks": p["n_tasks"], "params": p["n_params"], "method": "loo (all tasks, extrapolated)",
                     "time_s": p["loo_all_s"], "meta_epochs": p["loo_all_s"] / p["epoch_s"]})
        metrics[key] = entry
    growth = {}
    for h in cfg["hidden_grid"]:
        sel = [p for p in points if p["hidden"] == h]
        ms = [p["n_tasks"] for p in sel]
        for name in (*ctx.methods, *(f"{m}_support" for m in INSTANCE_METHODS), "loo_all", "train", "epoch"):
            ys = [p.get(f"{name}_s") for p in sel]
            if all(y is not None for y in ys):
                growth[f"{scoring.metric_key(name)}_h{h}"] = _slope(ms, ys)
    metrics["growth_exponent"] = growth
    return {"metrics": metrics, "series": {"points": points}, "tables": {"Cost of scoring all tasks": rows}}


EXPERIMENT = Experiment(
    id="E5", title="Cost: runtime and memory vs number of tasks and parameters, speed-up over retraining",
    datasets=("mnist", "omniglot", "miniimagenet", "fc100"), configs=CONFIGS, run=run, default_methods=METHODS,
    seeds={"smoke": (0,), "quick": (0, 1), "paper": (0, 1)},
    # one quick seed on Omniglot: its converged retrainings dominate the run (see CONFIGS)
    reproduce_datasets=("mnist", "omniglot"), dataset_seeds={"omniglot": {"quick": (0,)}},
)
