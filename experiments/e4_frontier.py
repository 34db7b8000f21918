"""E4's accuracy-cost frontier: every task-IF estimator on E4's problem, its accuracy against its cost.

Problem: the trained unrolled (MAML) or proximal (iMAML) problem of ``experiments.e4_ablations`` at lam*, with its
converged leave-one-task-out effects (computed there once, passed in, never recomputed). Every estimator is one
*row*, scored with the project's sign (``score[u] ~ L_eval(without u) - L_eval(with u)``, positive = helps) by one
vector v ~ (damping I + H_F)^-1 grad L_eval: task scores v . g_k / M, support / query scores
v^T d(grad F)/d(ws, wq) (``metainf.influence``). Rows (``frontier`` section of E4's config):

- ``exact``: E4's exact path, the dense solve with the dense total Hessian (``MetaObjective.dense_hessian``, its
  columns batched): the reference of "exact" below;
- ``task_if_cg``: registry ``task_if`` (CG to ``solve_tol``);
- ``cg{k}`` / ``cg{k}_<precond>``: registry ``task_if_truncated`` with ``cg_iters`` = k, for k in ``cg_iters``, and
  ``precond`` in ``preconds``: none, ``fisher`` (empirical-Fisher curvature by Woodbury), ``diag_fisher`` (its
  diagonal, Jacobi), ``diag_hutchinson`` (a Hutchinson estimate of diag(H_F) from 8 batched HVPs, paid by every
  run; ``metainf.linalg.diagonal``) or ``ekfac`` (an EK-FAC model of the Gauss-Newton part of H_F over every task's
  query points at its adapted parameters, factored by every run; ``metainf.linalg.total_ekfac``);
- ``nystrom{r}``: registry ``task_if_nystrom`` at rank r (its default one block-Krylov step), for r in
  ``nystrom_ranks``; ``nystrom{r}_pcg{k}``: the same sketch as preconditioner of k CG iterations on the exact H_F
  (Nystrom-PCG, ``pcg_iters``), for k in ``nystrom_pcg``;
- ``fisher``: registry ``task_if_fisher`` (empirical-Fisher curvature, Woodbury); ``fast``: registry ``task_if_fast``;
- E4's own paths (:class:`VectorIF`): ``gn`` (TLXML Gauss-Newton curvature, CG to ``solve_tol``),
  ``neumann{J}`` (J Neumann terms on the exact H_F, step 1 / lambda_max from ``power_iters`` power iterations,
  which each run pays), ``lissa`` (``lissa`` section of the config), and for the proximal problem ``ekfac`` (EK-FAC
  inner iHVPs, CG total solve: the objective's inner solver replaced, as in the ablation grid).

Per row:

- accuracy: Spearman of its task scores with the ``exact`` row's (``task_spearman``) and with the LOO effects
  (``task_spearman_loo``); of its support / query scores with the ``exact`` row's (``support_spearman``,
  ``query_spearman``). E4 has no leave-one-point-out ground truth (retraining every point is beyond the run's budget),
  so support and query points are scored against exact instance-IF only.
- cost: ``repeats`` timed runs after one untimed warm-up run (whose scores are the ones scored), each with a fresh
  method through ``metainf.methods.run_method``, each divided by one meta-epoch ``ref.value_and_grad(lam0)`` timed
  just before it in the same process (``ref``: a copy of the training objective with its own cache of inner
  solutions, warmed up at the initial lam0, so neither side pays inner solves: the methods reuse those at lam*).
  ``task_*`` times scoring all tasks, ``instance_*`` scoring all support points (the query points come from the same
  pass; ``timed_kinds`` lists the kinds timed: with ``task`` alone the support / query frontiers take the tasks'
  cost). Reported: median, 25th and 75th percentiles and IQR of the meta-epoch ratios (``*_epochs_*``) and of the
  seconds (``*_seconds_*``), and ``peak_mb``, the largest peak RSS of the timed runs.
- ``task_pareto`` / ``support_pareto`` / ``query_pareto`` (1 or 0): no other row is at most as costly (median
  meta-epochs) and at least as accurate (tasks: Spearman with LOO; support / query: Spearman with exact), with one
  of the two strict. Rows whose run failed (an indefinite curvature, a diverging series) carry ``status`` and
  ``error`` and are on no frontier.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from metainf.core.bilevel import make_inner
from metainf.core.objective import MetaObjective
from metainf.core.problem import AttributionProblem
from metainf.influence import instance_scores, task_scores
from metainf.linalg.batches import task_batch_hvp
from metainf.linalg.gauss_newton import gn_hvp
from metainf.linalg.neumann import power_iteration
from metainf.linalg.solvers import solve
from metainf.linalg.types import IndefiniteHessianError, SolverNotConvergedError
from metainf.methods import get_method, run_method
from metainf.methods.base import AttributionMethod
from metainf.metrics import correlations

#: the frontier part of E4's quick config; smoke overrides some keys
FRONTIER = {"cg_iters": [1, 2, 3, 5, 10],
            "preconds": ["none", "fisher", "diag_fisher", "diag_hutchinson", "ekfac"],
            "nystrom_ranks": [3, 10],
            "nystrom_pcg": [3], "neumann_depths": [5, 20, 50], "repeats": 5,
            "timed_kinds": ["task", "support"]}
KINDS = ("task", "support", "query")
#: the frontier table's numeric columns
TABLE_COLUMNS = ("task_spearman", "task_spearman_loo", "support_spearman", "query_spearman", "task_epochs_median",
                 "task_epochs_q25", "task_epochs_q75", "instance_epochs_median", "peak_mb", "task_pareto",
                 "support_pareto", "query_pareto")
#: names under which NaN means undefined (a correlation with constant scores or effects; a failed row's cells)
UNDEFINED_OK = frozenset({"task_spearman", "task_spearman_loo", "support_spearman", "query_spearman",
                          *TABLE_COLUMNS})
#: errors that make a row fail (recorded, the other rows go on): an indefinite curvature, a solve or series that does
#: not converge, an estimator that does not apply to the inner problem; any other error (a bad config) stops the run
_FAILURES = (IndefiniteHessianError, SolverNotConvergedError, NotImplementedError)


@dataclass
class VectorIF:
    """Task-IF / instance-IF from v = ``solve_v(problem)`` (one solve per problem, cached): task scores
    v . g_k / M, support / query scores v^T d(grad F)/d(ws, wq) (``metainf.influence``); an ``AttributionMethod``."""

    name: str
    solve_v: Callable[[AttributionProblem], Tensor]
    kinds: tuple[str, ...] = KINDS
    needs_trajectory: bool = False
    _v: dict = field(default_factory=dict, repr=False)

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        if id(problem) not in self._v:
            self._v = {id(problem): self.solve_v(problem)}
        v = self._v[id(problem)]
        if kind == "task":
            return task_scores(problem.objective, problem.lam, v)
        support, query = instance_scores(problem.objective, problem.lam, v)
        return support if kind == "support" else query


@dataclass(frozen=True)
class Row:
    """One estimator: ``make()`` builds a fresh method (no cache shared between timed runs) for ``problem``."""

    name: str
    make: Callable[[], AttributionMethod]
    problem: AttributionProblem


def _exact_hvp(problem: AttributionProblem) -> Callable[[Tensor], Tensor]:
    return lambda u: problem.objective.hvp(problem.lam, u)


def _dense_v(problem: AttributionProblem, damping: float) -> Tensor:
    h = problem.objective.dense_hessian(problem.lam)
    return solve(lambda u: h @ u, problem.eval_objective.mean_loss_grad(problem.lam), "dense", damping)[0]


def _gn_v(problem: AttributionProblem, damping: float, tol: float, max_iter: int) -> Tensor:
    b = problem.eval_objective.mean_loss_grad(problem.lam)
    return solve(gn_hvp(problem.objective, problem.lam), b, "cg", damping, tol, max_iter)[0]


def _cg_v(problem: AttributionProblem, damping: float, tol: float, max_iter: int) -> Tensor:
    b = problem.eval_objective.mean_loss_grad(problem.lam)
    return solve(_exact_hvp(problem), b, "cg", damping, tol, max_iter)[0]


def _series_v(problem: AttributionProblem, method: str, depth: int, damping: float, cfg: dict, seed: int) -> Tensor:
    """J terms of the Neumann series or of LiSSA on the exact H_F, step 1 / lambda_max (power iteration)."""
    obj, lam = problem.objective, problem.lam
    hvp = _exact_hvp(problem)
    b = problem.eval_objective.mean_loss_grad(lam)
    top = power_iteration(lambda u: hvp(u) + damping * u, b, cfg["power_iters"], seed)
    if top <= 0:
        raise IndefiniteHessianError(f"power iteration found lambda_max = {top:.3e} <= 0: no series converges")
    options: dict = {"eta": 1.0 / top, "seed": seed, "strict": False}
    if method == "lissa":
        lis = cfg["lissa"]
        options |= {"batch_hvp": task_batch_hvp(obj, lam), "n_units": obj.n_tasks,
                    "batch_size": min(lis["batch_size"], obj.n_tasks), "repeats": lis["repeats"]}
    return solve(hvp, b, method, damping, cfg["solve_tol"], depth, **options)[0]


def frontier_rows(obj: MetaObjective, ev: MetaObjective, lam: Tensor, cfg: dict, kind: str, seed: int) -> list[Row]:
    """Every row of the module docstring for one trained problem (``kind``: ``unrolled`` or ``proximal``)."""
    fr, damping = cfg["frontier"], cfg["damping"]
    problem = AttributionProblem(obj, lam, ev, seed=seed)
    tol, max_iter = cfg["solve_tol"], cfg["cg_max_iter"]

    def registry(name: str, **options) -> Callable[[], AttributionMethod]:
        return lambda: get_method(name, damping=damping, **options)

    def own(name: str, solve_v: Callable[[AttributionProblem], Tensor]) -> Callable[[], AttributionMethod]:
        return lambda: VectorIF(name, solve_v)

    rows = [Row("exact", own("exact", lambda p: _dense_v(p, damping)), problem),
            Row("task_if_cg", registry("task_if", tol=tol, max_iter=max_iter), problem)]
    for k in fr["cg_iters"]:
        for pre in fr["preconds"]:
            rows.append(Row(f"cg{k}" + ("" if pre == "none" else f"_{pre}"),
                            registry("task_if_truncated", cg_iters=k, precond=pre, tol=tol), problem))
    for r in fr["nystrom_ranks"]:
        rows.append(Row(f"nystrom{r}", registry("task_if_nystrom", k=r, seed=seed), problem))
        rows += [Row(f"nystrom{r}_pcg{k}", registry("task_if_nystrom", k=r, pcg_iters=k, pcg_tol=tol, seed=seed),
                     problem) for k in fr["nystrom_pcg"]]
    rows += [Row("fisher", registry("task_if_fisher"), problem), Row("fast", registry("task_if_fast"), problem),
             Row("gn", own("gn", lambda p: _gn_v(p, damping, tol, max_iter)), problem)]
    rows += [Row(f"neumann{j}", own(f"neumann{j}", lambda p, j=j: _series_v(p, "neumann", j, damping, cfg, seed)),
                 problem) for j in fr["neumann_depths"]]
    depth = cfg["lissa"]["depth"]
    rows.append(Row(f"lissa{depth}", own("lissa", lambda p: _series_v(p, "lissa", depth, damping, cfg, seed)),
                    problem))
    if kind == "proximal":
        ekfac = make_inner("proximal", **cfg["proximal"], inner_solver="ekfac", cg_iters=cfg["cg_iters"])
        ek_problem = AttributionProblem(obj.with_inner(ekfac), lam, ev.with_inner(ekfac), seed=seed)
        rows.append(Row("ekfac", own("ekfac", lambda p: _cg_v(p, damping, tol, max_iter)), ek_problem))
    return rows


def _quartiles(values: list[float], prefix: str) -> dict[str, float]:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return {f"{prefix}_median": float(q50), f"{prefix}_q25": float(q25), f"{prefix}_q75": float(q75),
            f"{prefix}_iqr": float(q75 - q25)}


def time_row(row: Row, epoch: Callable[[], object], kind: str, repeats: int) -> tuple[list[float], list[float],
                                                                                       float]:
    """(seconds, meta-epoch ratios, peak RSS MB) of ``repeats`` runs of a fresh ``row`` method scoring ``kind``
    units, each after one meta-epoch ``epoch()`` timed just before it."""
    seconds, ratios, peak = [], [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        epoch()
        t_epoch = time.perf_counter() - t0
        sc = run_method(row.make(), row.problem, kind)
        seconds.append(sc.seconds)
        ratios.append(sc.seconds / t_epoch)
        peak = max(peak, sc.peak_rss_mb)
    return seconds, ratios, peak


def pareto_mask(cost: list[float], accuracy: list[float]) -> list[bool]:
    """True where no other point has cost <= and accuracy >= with one of them strict (lower cost, higher accuracy
    are better). Points with a NaN cost or accuracy are never on the frontier and dominate nothing."""
    c, a = np.asarray(cost, dtype=float), np.asarray(accuracy, dtype=float)
    ok = np.isfinite(c) & np.isfinite(a)
    mask = []
    for i in range(len(c)):
        dominated = ok & (c <= c[i]) & (a >= a[i]) & ((c < c[i]) | (a > a[i]))
        mask.append(bool(ok[i] and not dominated.any()))
    return mask


def _flat(scores: Tensor) -> np.ndarray:
    return scores.detach().reshape(-1).cpu().numpy()


def measure_row(row: Row, epoch: Callable[[], object], fr: dict) -> tuple[dict, dict, dict]:
    """(metrics, scores by kind, raw timings) of one row; a failed row's metrics carry ``status`` and ``error``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a truncated series warns; its accuracy is the measure
            method = row.make()
            scores = {k: _flat(run_method(method, row.problem, k).values) for k in KINDS}  # warm-up run, scored
            metrics: dict = {"status": "ok", "repeats": fr["repeats"]}
            raw: dict = {}
            for kind in fr["timed_kinds"]:
                prefix = "task" if kind == "task" else "instance"
                seconds, ratios, peak = time_row(row, epoch, kind, fr["repeats"])
                metrics |= {**_quartiles(ratios, f"{prefix}_epochs"), **_quartiles(seconds, f"{prefix}_seconds")}
                metrics["peak_mb"] = max(metrics.get("peak_mb", 0.0), peak)
                raw |= {f"{prefix}_seconds": seconds, f"{prefix}_epoch_ratios": ratios}
    except _FAILURES as error:
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"}, {}, {}
    return metrics, scores, raw


def _spearman(s: np.ndarray | None, ref: np.ndarray) -> float:
    return float("nan") if s is None else correlations(s, ref)["spearman"]


def frontier(obj: MetaObjective, ev: MetaObjective, lam: Tensor, lam0: Tensor, loo: np.ndarray, cfg: dict,
             kind: str, seed: int) -> tuple[dict, dict, list[dict]]:
    """(metrics ``{row: {...}}``, series ``{row: {scores, timings}}``, table rows) of every frontier row at lam*.

    ``loo``: the converged leave-one-task-out effects of E4 (same order as the tasks); ``lam0``: where the
    reference meta-epoch is timed (module docstring)."""
    fr = cfg["frontier"]
    ref = MetaObjective(obj.model, obj.inner, obj.tasks, obj.delta, obj.tau, obj.chunk)  # its own inner-state cache
    ref.value_and_grad(lam0)  # warm-up: the inner solutions at lam0 are cached from here on
    epoch = lambda: ref.value_and_grad(lam0)  # noqa: E731
    measured = {row.name: measure_row(row, epoch, fr) for row in frontier_rows(obj, ev, lam, cfg, kind, seed)}
    exact = measured["exact"][1]
    if not exact:
        raise RuntimeError(f"E4 frontier {kind}: the exact row failed ({measured['exact'][0]['error']})")
    metrics = {name: m for name, (m, _, _) in measured.items()}
    for name, (m, scores, _) in measured.items():
        if m["status"] == "ok":
            m |= {f"{k}_spearman": _spearman(scores.get(k), exact[k]) for k in KINDS}
            m["task_spearman_loo"] = _spearman(scores["task"], np.asarray(loo, dtype=float))
    ok = [n for n, m in metrics.items() if m["status"] == "ok"]
    for k, accuracy in (("task", "task_spearman_loo"), ("support", "support_spearman"), ("query", "query_spearman")):
        cost = "task_epochs_median" if k == "task" or "support" not in fr["timed_kinds"] else "instance_epochs_median"
        marks = pareto_mask([metrics[n][cost] for n in ok], [metrics[n][accuracy] for n in ok])
        for n, on in zip(ok, marks):
            metrics[n][f"{k}_pareto"] = int(on)
    series = {name: {"scores": {k: s.tolist() for k, s in scores.items()}, **raw}
              for name, (_, scores, raw) in measured.items()}
    table = [{"inner": kind, "estimator": n, **{c: metrics[n].get(c, float("nan")) for c in TABLE_COLUMNS}}
             for n in metrics]
    return metrics, series, table

