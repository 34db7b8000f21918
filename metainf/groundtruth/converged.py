"""Converged leave-one-out retraining: the ground truth for influence functions.

Removing unit u sets its weight to 0 (no re-normalisation), then re-minimises F from lam* (warm start) with the
same optimiser to the same gradient tolerance. The effect is L_eval(lam_-u) - L_eval(lam*), in the project's sign
convention. ``noise_floor`` retrains the same removal from a perturbed start to measure what the tolerance allows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from metainf.core.objective import MetaObjective, stacked_value_and_grad
from metainf.runtime.seeding import seeded_randn
from metainf.train import QuasiNewtonRun, chord_newton, train_converged

LOG = logging.getLogger(__name__)


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
            hessian: Tensor | None = None, chord: bool = False, eval_star: float | None = None) -> LooResult:
    """Retrain without one unit from ``start`` (default lam*) and report the evaluation-loss change.

    ``hessian`` (the total Hessian at lam* of the objective without the unit, or of the full one) only speeds up
    small models: Newton starts from it at once, as a chord curvature (``metainf.train.train_converged``; build it
    with ``metainf.train.total_hessian`` / ``task_total_hessians``, dense per-task blocks for the proximal inner
    problem). With ``chord=True`` (and ``hessian``) the retraining is first tried by the chord iteration
    lam <- lam - H0^-1 grad F_-u(lam) alone (:func:`metainf.train.chord_newton`: one gradient per step, no line
    search or L-BFGS stage), falling back to ``train_converged`` from ``start`` if it does not reach the tolerance
    at a steady contraction. Either way the result is fixed by the gradient tolerance on the objective without the
    unit: ||grad F_-u|| <= tol. ``eval_star`` is L_eval(lam*) (``eval_obj.mean_loss(lam_star)``) if already known.
    """
    robj = removal_objective(obj, kind, task, point)
    start = lam_star if start is None else start
    res = None
    if chord and hessian is not None:
        res = chord_newton(robj, start, hessian, tol=tol)
    if res is None or not res.converged:
        res = train_converged(robj, start, tol=tol, max_iter=max_iter, hessian=hessian)
    effect = float(eval_obj.mean_loss(res.lam) - (eval_obj.mean_loss(lam_star) if eval_star is None else eval_star))
    return LooResult(effect, res.lam, res.grad_norm, res.converged)


#: a leave-one-out unit: (kind, task, point), point None for a task
Job = tuple[str, int, int | None]


def retrain_many(obj: MetaObjective, lam_star: Tensor, eval_obj: MetaObjective, jobs: list[Job],
                 hessians: list[Tensor], tol: float = 1e-8, max_iter: int = 500, starts: list[Tensor] | None = None,
                 batch: int = 16, max_evals: int = 40, eval_star: float | None = None) -> list[LooResult]:
    """:func:`retrain` with ``chord=True`` for many units (``jobs``: (kind, task, point)) sharing evaluations.

    Up to ``batch`` quasi-Newton runs (:class:`metainf.train.QuasiNewtonRun`, the iteration of
    :func:`metainf.train.chord_newton` from H0 = ``hessians[i]``, start ``starts[i]`` or lam*) advance in lockstep:
    every step evaluates the F_-u of all active runs in one vmapped pass over batch x M task copies
    (:func:`metainf.core.objective.stacked_value_and_grad`, inner problems warm-started from each run's last solutions,
    first from those of ``obj`` at lam*), and a finished run's slot goes to the next job. On small models vmap's
    per-call overhead dominates, so a batch of 16 costs a few single evaluations. The stopping rule is that of
    :func:`retrain`, ||grad F_-u|| <= tol; a run that gives up falls back to ``retrain`` (plain path) for its unit.
    L_eval at the retrained points is evaluated batched the same way; ``eval_star`` is L_eval(lam*) if known.
    """
    n = len(jobs)
    starts = [lam_star] * n if starts is None else starts
    weights = []
    for kind, task, point in jobs:
        robj = removal_objective(obj, kind, task, point)
        weights.append((robj.tau, robj.tasks.ws, robj.tasks.wq))
    state0 = obj.state_at(lam_star)
    runs: dict[int, QuasiNewtonRun] = {}
    states: dict[int, Tensor] = {}
    finished: dict[int, QuasiNewtonRun] = {}
    queue = list(range(n))
    while queue or runs:
        while queue and len(runs) < batch:
            i = queue.pop(0)
            runs[i] = QuasiNewtonRun(starts[i], hessians[i], tol, max_evals)
            states[i] = state0
        points = {i: r.point() for i, r in runs.items()}
        for i in [i for i, pt in points.items() if pt is None]:
            finished[i] = runs.pop(i)
            states.pop(i)
            del points[i]
        if not points:
            continue
        idx = list(points)
        out = stacked_value_and_grad(
            obj, torch.stack([points[i] for i in idx]), torch.stack([weights[i][0] for i in idx]),
            torch.stack([weights[i][1] for i in idx]), torch.stack([weights[i][2] for i in idx]),
            torch.stack([states[i] for i in idx]) if isinstance(state0, Tensor) and state0.ndim == 2 else None,
            warn=False)
        for pos, i in enumerate(idx):
            # a point whose inner problems missed the tolerance is rejected like a non-finite one (step halved)
            runs[i].tell(out.values[pos], out.grads[pos], bool(out.inner_ok[pos]))
            if out.states is not None and bool(out.inner_ok[pos]):
                states[i] = out.states[pos]
    results: list[LooResult | None] = [None] * n
    good = [i for i in range(n) if finished[i].result().converged]
    base = float(eval_obj.mean_loss(lam_star)) if eval_star is None else eval_star
    ev_state = eval_obj.state_at(lam_star)
    ones = torch.ones(eval_obj.n_tasks, dtype=lam_star.dtype, device=lam_star.device)
    for b in range(0, len(good), batch):
        idx = good[b:b + batch]
        lams = torch.stack([finished[i].lam for i in idx])
        losses = stacked_value_and_grad(
            eval_obj, lams, ones.expand(len(idx), -1), eval_obj.tasks.ws.expand(len(idx), -1, -1),
            eval_obj.tasks.wq.expand(len(idx), -1, -1), ev_state if ev_state.ndim == 2 else None,
            with_grad=False).losses
        for pos, i in enumerate(idx):
            res = finished[i].result()
            results[i] = LooResult(float(losses[pos].mean() - base), res.lam, res.grad_norm, True)
    for i in range(n):
        if results[i] is None:
            kind, task, point = jobs[i]
            # an expected, handled event (e.g. a start where F is not finite): logged for debugging, not warned
            LOG.debug("batched quasi-Newton retraining of %s unit (%s, %s) stopped at gradient norm %.2e after %d "
                      "evaluations: falling back to the plain path (L-BFGS, then Newton)", kind, task, point,
                      finished[i].gn, finished[i].evals)
            results[i] = retrain(obj, lam_star, eval_obj, kind, task, point, tol, max_iter, start=starts[i],
                                 hessian=hessians[i], eval_star=base)
    return results


def noise_floor(obj: MetaObjective, lam_star: Tensor, eval_obj: MetaObjective, kind: str, task: int,
                point: int | None = None, tol: float = 1e-8, scale: float = 1e-3, seed: int = 0,
                hessian: Tensor | None = None, chord: bool = False) -> float:
    """|effect(start lam*) - effect(start lam* + noise)|: how much two retrainings of one removal can differ
    (``hessian``, ``chord``: the start curvature and path of both, as in :func:`retrain`; with ``chord`` the two
    retrainings share batched evaluations, :func:`retrain_many`)."""
    gen = torch.Generator().manual_seed(seed)
    noise = seeded_randn(*lam_star.shape, generator=gen, dtype=lam_star.dtype, device=lam_star.device) * scale
    if chord and hessian is not None:
        a, b = retrain_many(obj, lam_star, eval_obj, [(kind, task, point)] * 2, [hessian] * 2, tol,
                            starts=[lam_star, lam_star + noise])
        return abs(a.effect - b.effect)
    a = retrain(obj, lam_star, eval_obj, kind, task, point, tol, hessian=hessian)
    b = retrain(obj, lam_star, eval_obj, kind, task, point, tol, start=lam_star + noise, hessian=hessian)
    return abs(a.effect - b.effect)
