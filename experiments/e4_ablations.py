"""E4: ablation of the acceleration strategies (paper section 4) on a small MLP problem.

Every combination of

- inner solver for the proximal inner iHVPs A^-1 v: ``dense`` / ``cg`` (``cg_iters`` fixed iterations) / ``ekfac``
  (the unrolled inner problem has no inner solve: only ``autodiff``);
- total solver for v = (damping I + H)^-1 grad L_eval: ``dense``, ``cg`` (to ``solve_tol``), ``neumann`` at every
  depth J in ``neumann_depths`` (all read off one run of the series, each timed at its own term), ``lissa``
  (task mini-batches of ``lissa.batch_size``, ``lissa.depth`` terms);
- curvature: H' ``exact`` / ``drop`` / ``gamma`` (``metainf.core.bilevel.parse_hprime``) or the TLXML Gauss-Newton
  ``gn`` (``metainf.linalg.gauss_newton``);
- the empirical-Fisher curvature ``fisher``, (1/M) sum_k tau_k g_k g_k^T + delta I from the task gradients the scores
  need anyway, solved exactly by Woodbury (total solver ``woodbury``, no HVP);

is scored against the exact path (proximal: dense / dense / exact; unrolled: dense / exact) by Pearson, Spearman and
the relative error ||s - s_exact|| / ||s_exact|| of the task scores s_k = v . g_k / M, and against converged
leave-one-task-out retraining by Spearman (``loo_batch`` tasks at a time by
``metainf.groundtruth.converged.retrain_many``, each to ||grad F_-k|| <= ``tol``;
``metainf.groundtruth.converged.retrain`` one by one without it). Wall time of a configuration = evaluation
gradient + task gradients (with its inner solver) + the solve (+ the shared power iteration for Neumann / LiSSA);
the inner solutions theta_k(lam*) come with the trained model and are shared. Memory is the process RSS sampled
during the configuration (``PeakSampler``): its peak and its growth over the RSS at the start (RSS rarely shrinks,
so a configuration run after a larger one shows little growth). Reported per inner problem: the fastest
configuration whose Spearman with LOO is within ``loo_margin`` of the exact path's (or above it), and its speed-up
over retraining every task (timed in the same run, including the dense Hessian that the Newton stage of retraining
reuses); beside it, the same for the frontier's estimators below (``frontier_speedup``: the fastest row within the
margin, by its median time, and ``task_if_fast``'s own speed-up, :func:`frontier_speedups`). Non-local removals
(``_loo_effects``: lam* is no longer near a minimum of F without the task, or retraining moved more than
``JUMP_RATIO`` times the first-order shift or more than ``FAR_SHIFT`` ||lam*||) are counted (``loo_nonlocal``); no
first-order estimate sees them, and the exact path's Spearman with LOO over the other tasks is reported beside the
full one (``spearman_loo_local``).

Frontier (``experiments.e4_frontier``, config section ``frontier``): on the same trained problems and LOO effects,
every estimator (exact solve, CG to tolerance, truncated CG with and without the Fisher preconditioner, Nystrom and
Nystrom-PCG, Fisher, ``task_if_fast``, Gauss-Newton, Neumann, LiSSA, EK-FAC inner solves) is scored against exact
task-IF / instance-IF and LOO, timed ``frontier.repeats`` times in meta-epochs (median and IQR), and marked when it is
Pareto-optimal: ``<inner>.frontier.<row>.*``, the table "E4 accuracy-cost frontier" and one figure per inner problem.

Problem: 3-way 2-shot 4-query tasks on 4x4 images (digits or Omniglot resized), a tanh MLP with 4 hidden units
(83 parameters), outer L2 delta = 0.05, proximal beta = 1. Label-permuted tasks carry little meta-learnable signal
for so small a model: with 5-way tasks or a larger delta the meta-parameters collapse to lam* = 0 at 40 tasks, and
with a smaller delta the total Hessian becomes near-singular (LOO slow and nonlinear). Omniglot uses 8x8 images
(275 parameters): at 4x4 (and at 6x6 for MAML) the problem collapses (lam* = 0, every LOO effect 0,
``loo_effect_std`` = 0, so Spearman with LOO is undefined and ``best`` is ``"none"``). At quick scale Omniglot keeps
20 training tasks: the LOO reference of the proximal problem re-solves every inner problem with dense inner
Hessians, which at 275 parameters and 40 tasks does not fit the default run's budget.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from experiments import e4_frontier
from experiments.base import ConfigError, Experiment, RunContext
from experiments.ground_truth import block_curvature, converged_many, unit_start_hessian
from experiments.setups import load_opts
from metainf.core.bilevel import HPRIME_MODES, PROXIMAL_INNER_SOLVERS, InnerProblem, make_inner, parse_hprime
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective, pool_tensors
from metainf.data.registry import load_split
from metainf.data.tasks import sample_task_pool
from metainf.groundtruth.converged import retrain
from metainf.linalg.fisher import fisher_solve
from metainf.linalg.gamma import check_gamma
from metainf.linalg.gauss_newton import gn_dense, gn_hvp
from metainf.linalg.neumann import power_iteration
from metainf.metrics import correlations
from metainf.runtime.memory import PeakSampler
from metainf.linalg.solvers import solve
from metainf.linalg.types import IndefiniteHessianError, SolveInfo, SolverNotConvergedError
from metainf.train import train_converged

_BASE = {
    "mnist_source": "digits",  # scikit-learn's 8x8 digits, as before real MNIST (metainf.data.mnist)
    "n_way": 3, "k_shot": 2, "q_query": 4, "hidden": 4, "image_size": 4, "delta": 5e-2, "tol": 1e-6, "max_iter": 300,
    "damping": 0.0, "inners": ["proximal", "unrolled"], "unrolled": {"steps": 1, "lr": 0.4}, "proximal": {"beta": 1.0},
    "inner_solvers": ["dense", "cg", "ekfac"], "cg_iters": 10,
    "curvatures": ["exact", "drop", "gamma", "gn", "fisher"],
    "neumann_depths": [5, 10, 20, 50, 100], "power_iters": 10, "solve_tol": 1e-8, "cg_max_iter": 200,
    "lissa": {"depth": 50, "batch_size": 2, "repeats": 1}, "loo_margin": 0.02, "loo_batch": 16,
    "frontier": e4_frontier.FRONTIER,
}
CONFIGS = {
    # smoke: the paper's grid without the Gauss-Newton curvature, LiSSA 20 terms, 5 inner CG iterations; a frontier of
    # fewer rows, timed twice on tasks only (< 3 min)
    "smoke": {**_BASE, "n_train_tasks": 8, "n_eval_tasks": 8, "curvatures": ["exact", "drop", "gamma", "fisher"],
              "cg_iters": 5, "solve_tol": 1e-6, "cg_max_iter": 100,
              "lissa": {"depth": 20, "batch_size": 2, "repeats": 1}, "by_dataset": {"omniglot": {"image_size": 8}},
              "frontier": {**e4_frontier.FRONTIER, "cg_iters": [1, 3], "nystrom_ranks": [3], "nystrom_pcg": [],
                           "neumann_depths": [5], "repeats": 2, "timed_kinds": ["task"]}},
    # Omniglot's frontier times tasks only (its support / query panels take the tasks' cost): every total HVP of its
    # proximal problem (275 parameters) costs several times the digits' one, and timing support points too would
    # double the frontier's cost
    "quick": {**_BASE, "n_train_tasks": 40, "n_eval_tasks": 20, "lissa": {"depth": 50, "batch_size": 10, "repeats": 1},
              "by_dataset": {"omniglot": {"image_size": 8, "n_train_tasks": 20,
                                          "frontier": {**e4_frontier.FRONTIER, "timed_kinds": ["task"]}}}},
    # paper: Omniglot at 8x8 as at smaller scales (6x6 collapses MAML at width 4; unverified at width 6)
    "paper": {**_BASE, "n_train_tasks": 100, "n_eval_tasks": 50, "image_size": 6, "hidden": 6, "cg_iters": 30,
              "power_iters": 20, "lissa": {"depth": 100, "batch_size": 20, "repeats": 2},
              "by_dataset": {"omniglot": {"image_size": 8}}},
}

T = TypeVar("T")
#: a leave-one-out retraining that moved lam* more than this many times its first-order shift counts as non-local
JUMP_RATIO = 3.0
#: ... and so does one that moved lam* by more than this fraction of ||lam*||
FAR_SHIFT = 0.5
_NONE = {k: float("nan") for k in ("spearman", "rel_err", "seconds", "speedup_vs_loo")}
_KEEP = ("inner_solver", "total_solver", "curvature", "status", "iterations", "pearson", "spearman", "rel_err",
         "pearson_loo", "spearman_loo", "seconds", "peak_mb", "rss_growth_mb", "speedup_vs_loo")
_NO_MEM = (float("nan"), float("nan"))
Solve = Callable[[], tuple[Tensor, SolveInfo]]


def _inner_variants(kind: str, cfg: dict, solvers: list[str] | None = None) -> dict[str, InnerProblem]:
    if kind == "unrolled":
        return {"autodiff": make_inner("unrolled", **cfg["unrolled"])}
    return {s: make_inner("proximal", **cfg["proximal"], inner_solver=s, cg_iters=cfg["cg_iters"])
            for s in (solvers or cfg["inner_solvers"])}


def _operators(obj: MetaObjective, lam: Tensor, curvature: str):
    """(hvp, mini-batch hvp over task subsets, dense matrix) for one curvature."""
    if curvature == "gn":
        return (gn_hvp(obj, lam), lambda u, idx: gn_hvp(obj.subset(lam, idx), lam)(u),
                lambda: gn_dense(obj, lam))
    return (lambda u: obj.hvp(lam, u, curvature), lambda u, idx: obj.subset(lam, idx).hvp(lam, u, curvature),
            lambda: obj.dense_hessian(lam, curvature))


def _timed(fn: Callable[[], T]) -> tuple[T, float, tuple[float, float]]:
    """(fn(), wall seconds, (peak RSS, its growth over the RSS at the start) in MB)."""
    sampler = PeakSampler()
    start = sampler.peak
    with sampler:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return out, seconds, (sampler.peak, sampler.peak - start)


def _status(error: Exception) -> str:
    if isinstance(error, IndefiniteHessianError):
        return "indefinite"
    return "diverged" if "diverges" in str(error) else "not_converged"


class _Recorder:
    """Collects one row per configuration: task scores s_k = v . g_k / M, cost and solver status."""

    def __init__(self, grads: Tensor, t_shared: float, mem_shared: tuple[float, float], base: dict):
        self.grads, self.t_shared, self.mem_shared, self.base, self.rows = grads, t_shared, mem_shared, base, []

    def add(self, total: str, x: Tensor | None, seconds: float, mem: tuple[float, float], status: str,
            iterations: int | None = None, rel_residual: float = float("nan")) -> None:
        m = self.grads.shape[0]
        self.rows.append({**self.base, "total_solver": total, "status": status, "iterations": iterations,
                          "rel_residual": rel_residual, "seconds": self.t_shared + seconds,
                          "peak_mb": max(self.mem_shared[0], mem[0]), "rss_growth_mb": max(self.mem_shared[1], mem[1]),
                          "scores": (self.grads @ x / m).tolist() if x is not None else [float("nan")] * m})

    def attempt(self, total: str, fn: Solve, extra_seconds: float = 0.0) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # truncation is recorded as a status
                (x, info), seconds, mem = _timed(fn)
        except (IndefiniteHessianError, SolverNotConvergedError) as error:
            self.add(total, None, float("nan"), _NO_MEM, _status(error))
            return
        self.add(total, x, seconds + extra_seconds, mem, "ok" if info.converged else "truncated", info.iterations,
                 info.rel_residual)

    def neumann(self, hvp, b: Tensor, damping: float, top: float, t_pow: float, cfg: dict, seed: int) -> None:
        """One Neumann run to max(J); the truncation at each J is recorded with the time at its own term."""
        depths = sorted(cfg["neumann_depths"])
        seen: dict[int, tuple[Tensor, float, float]] = {}
        final, failure = None, "indefinite"
        sampler = PeakSampler()
        start = sampler.peak
        with sampler:
            t0 = time.perf_counter()

            def keep(j: int, x: Tensor, rel: float) -> None:
                if j in depths:
                    seen[j] = (x, time.perf_counter() - t0, rel)

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    if top > 0:
                        x, info = solve(hvp, b, "neumann", damping, cfg["solve_tol"], depths[-1], eta=1.0 / top,
                                        seed=seed, strict=False, callback=keep)
                        final = (x, time.perf_counter() - t0, info.rel_residual)
            except SolverNotConvergedError as error:
                failure = _status(error)
        for j in depths:
            if j in seen or final is not None:  # a series that met the tolerance early is its own truncation
                x, seconds, rel = seen.get(j, final)
                self.add(f"neumann{j}", x, seconds + t_pow, (sampler.peak, sampler.peak - start),
                         "ok" if rel <= cfg["solve_tol"] else "truncated", j, rel)
            else:
                self.add(f"neumann{j}", None, float("nan"), _NO_MEM, failure)


def _shared_vectors(obj: MetaObjective, ev: MetaObjective, lam: Tensor) -> tuple[Tensor, Tensor]:
    """(grad L_eval, task gradients g_k [M, P]) with the objectives' inner solver."""
    return ev.mean_loss_grad(lam), obj.task_grads(lam)


def _curvature_rows(rec: _Recorder, obj: MetaObjective, lam: Tensor, b: Tensor, curvature: str, cfg: dict,
                    seed: int) -> list[dict]:
    """Every total solver for one (inner solver, curvature); the Fisher curvature only by its exact Woodbury solve
    (any other solver would reach the same scores, at more cost)."""
    damping, lis, m = cfg["damping"], cfg["lissa"], obj.n_tasks
    if curvature == "fisher":
        rec.attempt("woodbury", lambda: fisher_solve(rec.grads, b, obj.delta + damping, obj.tau))
        return rec.rows
    hvp, batch_hvp, dense = _operators(obj, lam, curvature)

    def dense_solve() -> tuple[Tensor, SolveInfo]:
        h = dense()
        return solve(lambda u: h @ u, b, "dense", damping)

    rec.attempt("dense", dense_solve)
    rec.attempt("cg", lambda: solve(hvp, b, "cg", damping, cfg["solve_tol"], cfg["cg_max_iter"]))
    top, t_pow, _ = _timed(lambda: power_iteration(lambda u: hvp(u) + damping * u, b, cfg["power_iters"], seed))
    rec.neumann(hvp, b, damping, top, t_pow, cfg, seed)
    if top > 0:
        rec.attempt("lissa", lambda: solve(hvp, b, "lissa", damping, cfg["solve_tol"], lis["depth"],
                                           batch_hvp=batch_hvp, n_units=m, batch_size=min(lis["batch_size"], m),
                                           repeats=lis["repeats"], eta=1.0 / top, seed=seed, strict=False),
                    extra_seconds=t_pow)
    else:
        rec.add("lissa", None, float("nan"), _NO_MEM, "indefinite")
    return rec.rows


def _grid(obj: MetaObjective, ev: MetaObjective, lam: Tensor, cfg: dict, kind: str, seed: int) -> list[dict]:
    """Scores, time and memory of every (inner solver, total solver, curvature) for one inner problem."""
    rows = []
    for solver_name, inner in _inner_variants(kind, cfg).items():
        obj_v = obj.with_inner(inner)
        (b, grads), t_shared, mem_shared = _timed(partial(_shared_vectors, obj_v, ev.with_inner(inner), lam))
        for curvature in cfg["curvatures"]:
            rec = _Recorder(grads, t_shared, mem_shared, {"inner_solver": solver_name, "curvature": curvature})
            rows += _curvature_rows(rec, obj_v, lam, b, curvature, cfg, seed)
    return rows


def _agreement(rows: list[dict], ref: dict, actual: np.ndarray, t_loo: float) -> None:
    s_ref = np.asarray(ref["scores"])
    for r in rows:
        s = np.asarray(r["scores"])
        ok = bool(np.isfinite(s).all())
        nan = {"pearson": float("nan"), "spearman": float("nan")}
        exact = correlations(s, s_ref) if ok else nan
        loo = correlations(s, actual) if ok else nan
        r.update({"pearson": exact["pearson"], "spearman": exact["spearman"],
                  "rel_err": float(np.linalg.norm(s - s_ref) / np.linalg.norm(s_ref)) if ok else float("nan"),
                  "pearson_loo": loo["pearson"], "spearman_loo": loo["spearman"],
                  "speedup_vs_loo": t_loo / r["seconds"] if ok else float("nan")})


def frontier_speedups(frontier: dict[str, dict], ref_loo: float, margin: float, t_loo: float) -> dict[str, dict]:
    """The frontier's side of the speed-up over retraining: ``fastest``, the frontier row with the smallest median
    wall time of scoring all tasks (``task_seconds_median``, over ``frontier.repeats`` runs) whose Spearman with LOO is
    at least ``ref_loo - margin`` (``estimator`` "none" and NaN figures when no row is, or LOO is undefined), and
    ``fast``, the registered default ``task_if_fast`` whether or not it is within the margin (``within_margin``
    1 / 0). Each with ``seconds``, ``spearman_loo`` and ``speedup_vs_loo`` = ``t_loo`` / ``seconds``."""

    def entry(name: str) -> dict:
        m = frontier[name]
        return {"seconds": m["task_seconds_median"], "spearman_loo": m["task_spearman_loo"],
                "speedup_vs_loo": t_loo / m["task_seconds_median"]}

    ok = [n for n, m in frontier.items() if m["status"] == "ok"]
    good = [n for n in ok if frontier[n]["task_spearman_loo"] >= ref_loo - margin]  # NaN compares False
    undefined = {k: float("nan") for k in ("seconds", "spearman_loo", "speedup_vs_loo")}
    name = min(good, key=lambda n: frontier[n]["task_seconds_median"]) if good else "none"
    fastest = {"estimator": name, **(entry(name) if good else undefined)}
    fast = {**(entry("fast") if "fast" in ok else undefined), "within_margin": int("fast" in good)}
    return {"fastest": fastest, "fast": fast}


def _name(r: dict) -> str:
    return f"{r['inner_solver']}-{r['total_solver']}-{r['curvature'].replace(':', '').replace('.', 'p')}"


def _loo_effects(ctx: RunContext, obj: MetaObjective, ev: MetaObjective, lam: Tensor,
                 kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Converged leave-one-task-out effects L_eval(lam*_-k) - L_eval(lam*) for every task, retrained to ``tol``, and
    which removals are *non-local* (None without ``loo_batch``): retraining left the neighbourhood that a
    first-order estimate describes, because

    - the exact total Hessian of F without task k at lam*, H - tau_k H_k / M, is not positive definite (lam* is not
      near a minimum of F_-k: retraining moves away along negative curvature), or
    - the retrained point moved more than ``JUMP_RATIO`` times the first-order shift,
      ||lam*_-k - lam*|| > JUMP_RATIO ||H^-1 tau_k g_k / M|| (it fell into another minimum), or
    - it moved more than ``FAR_SHIFT`` ||lam*|| (e.g. a collapse to lam = 0 that the first-order shift, itself of
      the size of lam*, also points to: the problem sits at a bifurcation).

    With ``loo_batch: n`` the tasks are retrained n at a time by ``metainf.groundtruth.converged.retrain_many``
    (quasi-Newton from those start Hessians, batched evaluations of F, the plain path where a start Hessian is not
    positive definite and as fallback); otherwise one at a time by ``metainf.groundtruth.converged.retrain`` from H.
    Both stop at ||grad F_-k|| <= tol. The time includes the start curvature."""
    cfg = ctx.config
    batch = cfg.get("loo_batch")
    if not batch:
        h_star = obj.dense_hessian(lam)
        return np.array([retrain(obj, lam, ev, "task", k, tol=cfg["tol"], max_iter=cfg["max_iter"],
                                 hessian=h_star).effect
                         for k in ctx.progress(range(obj.n_tasks), desc=f"LOO {kind}")]), None
    curvature = block_curvature(obj, lam)
    units = [(k, None) for k in range(obj.n_tasks)]
    results = converged_many(obj, lam, ev, "task", units, cfg["tol"], cfg["max_iter"], curvature, batch,
                             float(ev.mean_loss(lam)))
    unstable = np.array([int(torch.linalg.cholesky_ex(unit_start_hessian(obj, curvature, k))[1]) != 0
                         for k, _ in units])
    first_order = torch.linalg.solve(curvature[0], (obj.task_grads(lam) * obj.tau[:, None]).T / obj.n_tasks)
    shift = np.array([float((res.lam - lam).norm()) for res in results])
    jumped = (shift > JUMP_RATIO * first_order.norm(dim=0).cpu().numpy()) | (shift > FAR_SHIFT * float(lam.norm()))
    return np.array([res.effect for res in results]), unstable | jumped


def _local_spearman(scores: list[float], actual: np.ndarray, nonlocal_: np.ndarray | None) -> float:
    """Spearman of ``scores`` with the LOO effects over the local removals only (NaN if fewer than 3 or unknown)."""
    if nonlocal_ is None or int((~nonlocal_).sum()) < 3 or float(actual[~nonlocal_].std()) == 0.0:
        return float("nan")
    return correlations(np.asarray(scores)[~nonlocal_], actual[~nonlocal_])["spearman"]


def run(ctx: RunContext) -> dict:
    cfg = ctx.config
    torch.set_num_threads(1)  # tiny per-task kernels: more threads only cost synchronisation on 2 cores
    data = {s: load_split(ctx.dataset, s, ctx.data_root, **load_opts(cfg, ctx.dataset)) for s in ("train", "val")}
    ptr = sample_task_pool(data["train"], cfg["n_train_tasks"], cfg["n_way"], cfg["k_shot"], cfg["q_query"],
                           seed=ctx.seed)
    pev = sample_task_pool(data["val"], cfg["n_eval_tasks"], cfg["n_way"], cfg["k_shot"], cfg["q_query"],
                           seed=ctx.seed + 1000)
    model = build_model("mlp", ptr.input_shape, cfg["n_way"], hidden=(cfg["hidden"],))
    dtype, device = ctx.torch_dtype(), ctx.torch_device
    model.module.to(device)
    lam0 = model.init(ctx.seed, dtype).to(device)
    metrics, series, grid_rows, best_rows, frontier_rows = {}, {}, [], [], []
    for kind in cfg["inners"]:
        ref_inner = next(iter(_inner_variants(kind, cfg, ["dense"]).values()))
        obj = MetaObjective(model, ref_inner, pool_tensors(ptr, dtype, device), delta=cfg["delta"], chunk=None)
        ev = MetaObjective(model, ref_inner, pool_tensors(pev, dtype, device), chunk=None)
        fit = train_converged(obj, lam0, tol=cfg["tol"], max_iter=cfg["max_iter"])
        lam = fit.lam
        ev.state_at(lam)
        t0 = time.perf_counter()
        actual, nonlocal_ = _loo_effects(ctx, obj, ev, lam, kind)
        t_loo = time.perf_counter() - t0
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always", RuntimeWarning)
            gamma = check_gamma(obj, lam, "gamma", power_iters=cfg["power_iters"], seed=ctx.seed)
        rows = _grid(obj, ev, lam, cfg, kind, ctx.seed)
        ref = next(r for r in rows if r["total_solver"] == "dense" and r["curvature"] == "exact"
                   and r["inner_solver"] in ("dense", "autodiff"))
        if ref["status"] != "ok":
            raise RuntimeError(f"E4 {kind}: the exact path (dense total solve of the exact total Hessian) failed "
                               f"({ref['status']}); raise 'damping' or 'delta', or train to a smaller 'tol'")
        _agreement(rows, ref, actual, t_loo)
        # NaN comparisons are False: failed configurations never qualify (nor any, if LOO effects are constant)
        good = [r for r in rows if r["spearman_loo"] >= ref["spearman_loo"] - cfg["loo_margin"]]
        best = min(good, key=lambda r: r["seconds"]) if good else {"spearman_loo": float("nan"), **_NONE}
        summary = ("spearman_loo", "spearman", "rel_err", "seconds", "speedup_vs_loo")
        metrics[kind] = {
            "exact_path": {**{k: ref[k] for k in ("spearman_loo", "pearson_loo", "seconds", "speedup_vs_loo")},
                           "spearman_loo_local": _local_spearman(ref["scores"], actual, nonlocal_)},
            "loo_nonlocal": float("nan") if nonlocal_ is None else int(nonlocal_.sum()),
            "best": {"config": _name(best) if good else "none", **{k: best[k] for k in summary}},
            "loo_s": t_loo, "loo_effect_std": float(actual.std()), "lam_norm": float(lam.norm()),
            "train_grad_norm": fit.grad_norm, "n_params": model.n_params,
            "gamma": {"gamma": gamma.gamma, "lambda_max_rest": gamma.lambda_max_rest,
                      "ratio": gamma.gamma / gamma.lambda_max_rest},
            "configs": {_name(r): {k: r[k] for k in _KEEP} for r in rows},
        }
        series[kind] = {"loo": actual.tolist(), "scores": {_name(r): r["scores"] for r in rows},
                        "nonlocal": None if nonlocal_ is None else nonlocal_.tolist()}
        grid_rows += [{"inner": kind, **{k: v for k, v in r.items() if k != "scores"}} for r in rows]
        metrics[kind]["frontier"], series[kind]["frontier"], table = e4_frontier.frontier(obj, ev, lam, lam0, actual,
                                                                                          cfg, kind, ctx.seed)
        frontier_rows += table
        metrics[kind]["frontier_speedup"] = speedups = frontier_speedups(metrics[kind]["frontier"],
                                                                         ref["spearman_loo"], cfg["loo_margin"], t_loo)
        best_rows.append({"inner": kind, "best_config": metrics[kind]["best"]["config"],
                          "best_spearman_loo": best["spearman_loo"], "exact_spearman_loo": ref["spearman_loo"],
                          "best_s": best["seconds"], "exact_s": ref["seconds"], "loo_s": t_loo,
                          "nonlocal_removals": metrics[kind]["loo_nonlocal"],
                          "exact_spearman_loo_local": metrics[kind]["exact_path"]["spearman_loo_local"],
                          "speedup_vs_loo": best["speedup_vs_loo"],
                          "frontier_fastest": speedups["fastest"]["estimator"],
                          "frontier_fastest_s": speedups["fastest"]["seconds"],
                          "frontier_fastest_speedup_vs_loo": speedups["fastest"]["speedup_vs_loo"],
                          "fast_s": speedups["fast"]["seconds"], "fast_spearman_loo": speedups["fast"]["spearman_loo"],
                          "fast_speedup_vs_loo": speedups["fast"]["speedup_vs_loo"]})
    return {"metrics": metrics, "series": series,
            "tables": {"E4 fastest configuration within the LOO margin": best_rows, "E4 ablation grid": grid_rows,
                       "E4 accuracy-cost frontier": frontier_rows}}


#: curvatures of the grid besides the H' modes of :func:`metainf.core.bilevel.parse_hprime`
MODEL_CURVATURES = ("gn", "fisher")


def validate(scale: str, config: dict) -> None:
    """Refuse, before anything runs, a curvature or proximal inner solver that the grid would fail on midway."""
    bad = []
    for curvature in config["curvatures"]:
        try:
            if curvature not in MODEL_CURVATURES:
                parse_hprime(curvature)
        except ValueError:
            bad.append(f"curvature {curvature!r} (use {', '.join(MODEL_CURVATURES)}, {', '.join(HPRIME_MODES)})")
    bad += [f"inner solver {s!r} (use {', '.join(PROXIMAL_INNER_SOLVERS)})"
            for s in config["inner_solvers"] if s not in PROXIMAL_INNER_SOLVERS]
    if bad:
        raise ConfigError(f"E4 {scale}: unknown " + "; ".join(bad))


EXPERIMENT = Experiment(
    id="E4", title="Ablation of the acceleration strategies: inner solver x total solver x H' / curvature",
    datasets=("omniglot", "mnist"), configs=CONFIGS, run=run, default_methods=("task_if",),
    seeds={"smoke": (0,), "quick": (0, 1), "paper": (0, 1, 2)},
    # one quick seed on Omniglot keeps `metainf-repro all --scale quick` under 45 minutes on 2 cores
    reproduce_datasets=("mnist", "omniglot"), dataset_seeds={"omniglot": {"quick": (0,)}}, validate=validate,
    # NaN here means undefined: correlations with constant LOO effects, residuals of direct solves, failed configs
    undefined_ok=frozenset({"spearman", "pearson", "spearman_loo", "pearson_loo", "spearman_loo_local",
                            "exact_spearman_loo", "exact_spearman_loo_local", "best_spearman_loo", "rel_err",
                            "rel_residual", "seconds", "best_s", "speedup_vs_loo", "loo_nonlocal",
                            "nonlocal_removals", "scores", "best", "frontier_speedup", "frontier_fastest_s",
                            "frontier_fastest_speedup_vs_loo", "fast_s", "fast_spearman_loo", "fast_speedup_vs_loo"})
    | e4_frontier.UNDEFINED_OK,
)
