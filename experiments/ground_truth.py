"""Ground truth of the experiments: converged leave-one-out from lam* (with its exact start curvature) and
trajectory-specific leave-one-out, in the project's sign convention L_eval(without u) - L_eval(with u), cached per
unit through :func:`metainf.runtime.executor.run_units`, so an interrupted run resumes without redoing finished
retrainings."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from experiments.base import RunContext
from experiments.scoring import Unit
from experiments.setups import Fitted, Setup
from metainf.core.objective import MetaObjective
from metainf.groundtruth.converged import LooResult, retrain, retrain_many
from metainf.groundtruth.trajectory import trajectory_loo_many
from metainf.methods import AttributionProblem
from metainf.runtime.executor import run_units
from metainf.train import DENSE_NEWTON_MAX_PARAMS, task_total_hessians, total_hessian

#: per-task Hessians (exact start curvature for task removal) are formed only below this size; above it, H is used
MAX_TASK_HESSIAN_BYTES = 500 * 2**20


def _converged_unit(obj: MetaObjective, lam: Tensor, ev: MetaObjective, kind: str, task: int, point: int | None,
                    tol: float, max_iter: int, hessian: Tensor | None) -> float:
    res = retrain(obj, lam, ev, kind, task, point, tol=tol, max_iter=max_iter, hessian=hessian)
    if not res.converged:
        raise RuntimeError(f"leave-one-out retraining of {kind} unit ({task}, {point}) stopped at gradient norm "
                           f"{res.grad_norm:.2e} > tol {tol:.1e}: raise max_iter or the outer L2 delta")
    return res.effect


def start_curvature(obj: MetaObjective, lam: Tensor, kind: str,
                    h: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(H, H_k): the total Hessian of F at lam* (``h`` if given) and, for task removal, the per-task total Hessians
    [M, P, P]; (None, None) above ``DENSE_NEWTON_MAX_PARAMS``. Built by ``metainf.train.total_hessian`` (dense per-task
    blocks for the proximal inner problem)."""
    if lam.numel() > DENSE_NEWTON_MAX_PARAMS:
        return None, None
    h = total_hessian(obj, lam) if h is None else h
    per_task_bytes = obj.n_tasks * lam.numel() ** 2 * lam.element_size()
    hk = task_total_hessians(obj, lam) if kind == "task" and per_task_bytes <= MAX_TASK_HESSIAN_BYTES else None
    return h, hk


def block_curvature(obj: MetaObjective, lam: Tensor) -> tuple[Tensor, Tensor]:
    """(H, H_k) for the proximal inner problem from ONE pass of dense per-task blocks::

        H_k = D^2 L_O^k (``task_total_hessians``),    H = delta I + (1/M) sum_k tau_k H_k   (symmetrised)

    the matrices of :func:`start_curvature` (``total_hessian`` forms the same blocks again for H)."""
    hk = task_total_hessians(obj, lam)
    h = (obj.delta * torch.eye(lam.numel(), dtype=lam.dtype, device=lam.device)
         + torch.einsum("k,kij->ij", obj.tau, hk) / obj.n_tasks)
    return 0.5 * (h + h.T), hk


def unit_start_hessian(obj: MetaObjective, curvature: tuple[Tensor | None, Tensor | None], task: int) -> Tensor | None:
    """The exact total Hessian at lam* of F without task ``task`` (H - tau_k H_k / M) when H_k is known, else H."""
    h, hk = curvature
    if h is None or hk is None:
        return h
    return h - obj.tau[task] * hk[task] / obj.n_tasks


def converged_many(obj: MetaObjective, lam: Tensor, ev: MetaObjective, kind: str, units: list[Unit], tol: float,
                   max_iter: int, curvature: tuple[Tensor | None, Tensor | None], batch: int,
                   eval_star: float) -> list[LooResult]:
    """``metainf.groundtruth.converged.retrain_many`` of ``units`` from their exact start Hessians
    (:func:`unit_start_hessian`); raises if one of them did not reach ``tol``."""
    hessians = [unit_start_hessian(obj, curvature, k) for k, _ in units]
    results = retrain_many(obj, lam, ev, [(kind, k, j) for k, j in units], hessians, tol=tol, max_iter=max_iter,
                           batch=batch, eval_star=eval_star)
    for (k, j), res in zip(units, results):
        if not res.converged:
            raise RuntimeError(f"leave-one-out retraining of {kind} unit ({k}, {j}) stopped at gradient norm "
                               f"{res.grad_norm:.2e} > tol {tol:.1e}: raise max_iter or the outer L2 delta")
    return results


def _converged_batch(*args: Any) -> list[float]:
    """The effects of :func:`converged_many` (one cached job of :func:`converged_loo`)."""
    return [res.effect for res in converged_many(*args)]


def converged_loo(ctx: RunContext, setup: Setup, fitted: Fitted, kind: str, units: list[Unit], tag: str,
                  curvature: tuple[Tensor | None, Tensor | None] | None = None) -> np.ndarray:
    """Converged leave-one-out effects of ``units`` (warm start from lam*, same optimiser, gradient tolerance).

    For small models the Newton stage starts from the exact total Hessian of the objective without the unit
    at lam* (tasks: H - tau_k H_k / M) or from H (points), ``curvature`` = :func:`start_curvature` (computed if
    None); the result is fixed by the tolerance, not by this choice. With ``loo_batch: n`` in the config (and a
    start curvature) the units are retrained n at a time by ``metainf.groundtruth.converged.retrain_many``: quasi-Newton
    runs from those Hessians sharing batched evaluations of F, falling back to the plain path per unit; one cached job
    per batch.
    """
    cfg, obj, lam = ctx.config, setup.objective, fitted.lam_star
    curvature = start_curvature(obj, lam, kind) if curvature is None else curvature
    batch = cfg.get("loo_batch")
    if batch and curvature[0] is not None:
        eval_star = float(setup.eval_objective.mean_loss(lam))
        args = {f"{kind}-{b}-{b + len(units[b:b + batch])}": (obj, lam, setup.eval_objective, kind, units[b:b + batch],
                                                             cfg["tol"], cfg["max_iter"], curvature, batch, eval_star)
                for b in range(0, len(units), batch)}
        out = run_units(_converged_batch, args, executor="serial" if ctx.executor == "serial" else ctx.executor,
                        scheduler=ctx.scheduler, cache_dir=ctx.unit_cache(f"loo-{tag}-{kind}-batched"),
                        cache_key=f"{ctx.seed}", desc=f"converged LOO {tag} {kind}")
        return np.array([e for u in args for e in out[u]])
    args = {}
    for k, j in units:
        args[f"{kind}-{k}-{j}"] = (obj, lam, setup.eval_objective, kind, k, j, cfg["tol"], cfg["max_iter"],
                                   unit_start_hessian(obj, curvature, k))
    out = run_units(_converged_unit, args, executor="serial" if ctx.executor == "serial" else ctx.executor,
                    scheduler=ctx.scheduler, cache_dir=ctx.unit_cache(f"loo-{tag}-{kind}"),
                    cache_key=f"{ctx.seed}", desc=f"converged LOO {tag} {kind}")
    return np.array([out[u] for u in args])


def trajectory_loo(problem: AttributionProblem, kind: str, units: list[Unit]) -> np.ndarray:
    """Trajectory-specific leave-one-out (every occurrence masked) for ``units``."""
    return trajectory_loo_many(problem, kind, units, "all").cpu().numpy()
