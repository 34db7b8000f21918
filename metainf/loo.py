"""Converged leave-one-out retraining: the ground truth for influence functions.

Removing unit u sets its weight to 0 (no re-normalisation), then re-minimises F from lam* (warm start) with the
same optimiser to the same gradient tolerance. The effect is L_eval(lam_-u) - L_eval(lam*), in the project's sign
convention. ``noise_floor`` retrains the same removal from a perturbed start to measure what the tolerance allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metainf.objective import MetaObjective
from metainf.train import train_converged


@dataclass
class LooResult:
    effect: float  # L_eval(without) - L_eval(with)
    lam: Tensor
    grad_norm: float
    converged: bool


def removal_objective(obj: MetaObjective, kind: str, task: int, point: int | None = None) -> MetaObjective:
    """The objective with one task (``kind="task"``), support point or query point removed."""
    if kind == "task":
        tau = obj.tau.clone()
        tau[task] = 0.0
        return obj.with_weights(tau=tau)
    if kind == "support":
        ws = obj.tasks.ws.clone()
        ws[task, point] = 0.0
        return obj.with_weights(ws=ws)
    if kind == "query":
        wq = obj.tasks.wq.clone()
        wq[task, point] = 0.0
        return obj.with_weights(wq=wq)
    raise ValueError(f"unknown unit kind {kind!r}: choose 'task', 'support' or 'query'")


def retrain(obj: MetaObjective, lam_star: Tensor, eval_obj: MetaObjective, kind: str, task: int,
            point: int | None = None, tol: float = 1e-8, max_iter: int = 500, start: Tensor | None = None,
            hessian: Tensor | None = None) -> LooResult:
    """Retrain without one unit from ``start`` (default lam*) and report the evaluation-loss change.

    ``hessian`` (the total Hessian at lam* of the objective without the unit, or of the full one) only speeds up
    small models: Newton starts from it at once, as a chord curvature (``metainf.train.train_converged``; build it
    with ``metainf.train.total_hessian`` / ``task_total_hessians``, dense per-task blocks for the proximal inner
    problem). The result is fixed by the gradient tolerance on the objective without the unit.
    """
    robj = removal_objective(obj, kind, task, point)
    res = train_converged(robj, lam_star if start is None else start, tol=tol, max_iter=max_iter, hessian=hessian)
    effect = float(eval_obj.mean_loss(res.lam) - eval_obj.mean_loss(lam_star))
    return LooResult(effect, res.lam, res.grad_norm, res.converged)


def noise_floor(obj: MetaObjective, lam_star: Tensor, eval_obj: MetaObjective, kind: str, task: int,
                point: int | None = None, tol: float = 1e-8, scale: float = 1e-3, seed: int = 0,
                hessian: Tensor | None = None) -> float:
    """|effect(start lam*) - effect(start lam* + noise)|: how much two retrainings of one removal can differ
    (``hessian``: the start curvature of both, as in :func:`retrain`)."""
    gen = torch.Generator().manual_seed(seed)
    a = retrain(obj, lam_star, eval_obj, kind, task, point, tol, hessian=hessian)
    noise = torch.randn(lam_star.shape, generator=gen, dtype=lam_star.dtype) * scale
    b = retrain(obj, lam_star, eval_obj, kind, task, point, tol, start=lam_star + noise, hessian=hessian)
    return abs(a.effect - b.effect)
