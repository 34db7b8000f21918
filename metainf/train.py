"""Meta-training: converged full-batch training (for influence and leave-one-out ground truth) and
stochastic SGD/Adam meta-training that records its trajectory (for trajectory-based baselines)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from metainf.bilevel import ProximalInner
from metainf.objective import MetaObjective, check_finite


@dataclass
class ConvergedResult:
    lam: Tensor
    grad_norm: float
    iterations: int
    converged: bool
    min_eigenvalue: float | None = None  # of the total Hessian at lam, when the dense Newton stage ran


#: models up to this many parameters are polished with dense Newton steps (the dense total Hessian is cheap)
DENSE_NEWTON_MAX_PARAMS = 3000


def total_hessian(obj: MetaObjective, lam: Tensor) -> Tensor:
    """The exact dense total Hessian Hess F (``hprime="exact"``) by the cheaper route for the inner problem.

    Proximal: from dense per-task blocks, beta^2 A_k^-1 Hess phi_k A_k^-1 (:meth:`MetaObjective.block_hessian`, exact
    inner solves); each of the P implicit HVP columns of :meth:`MetaObjective.dense_hessian` would run three CG
    solves per task. Unrolled: the P vmapped HVP columns. The same matrix either way.
    """
    return obj.block_hessian(lam) if isinstance(obj.inner, ProximalInner) else obj.dense_hessian(lam)


def task_total_hessians(obj: MetaObjective, lam: Tensor) -> Tensor:
    """Per-task total Hessians D^2 L_O^k, [M, P, P], by the route of :func:`total_hessian`."""
    return obj.block_task_hessians(lam) if isinstance(obj.inner, ProximalInner) else obj.task_hessians(lam)


def train_converged(obj: MetaObjective, lam0: Tensor, tol: float = 1e-8, max_iter: int = 500,
                    history: int = 20, newton: bool | None = None, hessian: Tensor | None = None) -> ConvergedResult:
    """Minimise F until ||grad F||_2 <= tol, starting from ``lam0``.

    Full-batch L-BFGS (strong Wolfe) brings lam into the basin; for small models (``newton=None`` means
    ``n_params <= DENSE_NEWTON_MAX_PARAMS``) damped Newton steps on the dense total Hessian (:func:`total_hessian`)
    then reach the tolerance in a few iterations (:func:`newton_refine`, reusing ``hessian`` if given). The
    minimiser is defined by the gradient tolerance alone, not by the path, so both stages target the same point.
    """
    use_newton = lam0.numel() <= DENSE_NEWTON_MAX_PARAMS if newton is None else newton
    lam = lam0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([lam], lr=1.0, max_iter=max_iter, history_size=history, tolerance_grad=0.0,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")
    count = {"n": 0}
    # L-BFGS alone to the final tolerance, or to a loose one before Newton takes over
    lbfgs_tol = max(tol, 1e-4) if use_newton else tol

    def closure() -> Tensor:
        count["n"] += 1
        with torch.no_grad():
            value, g = obj.value_and_grad(lam.detach())
        check_finite(value, "the meta-objective")
        lam.grad = g
        if float(g.norm()) <= lbfgs_tol:  # stop the inner L-BFGS loop early: zero gradient ends it
            lam.grad = torch.zeros_like(g)
        return value

    if float(obj.grad(lam0).norm()) > lbfgs_tol:
        opt.step(closure)
    lam_out = lam.detach()
    if use_newton:
        refined = escape_saddles(obj, newton_refine(obj, lam_out, tol=tol, hessian=hessian), tol)
        refined.iterations += count["n"]
        return refined
    gn = float(obj.grad(lam_out).norm())
    return ConvergedResult(lam_out, gn, count["n"], gn <= tol)


def escape_saddles(obj: MetaObjective, res: ConvergedResult, tol: float, max_escapes: int = 5) -> ConvergedResult:
    """Make a stationary point a local minimum: while the total Hessian has a negative eigenvalue, step along its
    eigenvector (the sign and length, from a short list, with the lowest F) and run Newton again.

    A gradient tolerance alone also accepts saddle points; influence functions and leave-one-out retraining both
    assume a minimum (H_F positive definite), so ``min_eigenvalue`` is recorded with the result. It is the smallest
    eigenvalue of the last Hessian Newton factorised (at or next to the returned point); the dense Hessian at the
    returned point is computed only when that one is not positive definite or Newton did not report it.
    """
    for _ in range(max_escapes + 1):
        if not res.converged or res.min_eigenvalue is not None and res.min_eigenvalue > 0:
            return res
        evals, evecs = torch.linalg.eigh(total_hessian(obj, res.lam))
        res.min_eigenvalue = float(evals[0])
        if evals[0] > 0:
            return res
        direction = evecs[:, 0]
        trials = [res.lam + sign * length * direction for length in (0.03, 0.1, 0.3, 1.0) for sign in (1.0, -1.0)]
        values = torch.stack([obj.value(t) for t in trials])
        start = trials[int(torch.argmin(torch.nan_to_num(values, nan=float("inf"))))]
        res = newton_refine(obj, start, tol=tol)
    return res


def newton_refine(obj: MetaObjective, lam0: Tensor, tol: float = 1e-8, max_steps: int = 50,
                  hessian: Tensor | None = None) -> ConvergedResult:
    """Newton iterations lam <- lam - t H^-1 grad F(lam) until ||grad F|| <= tol.

    ``hessian`` (for instance the total Hessian at lam* when retraining a leave-one-out neighbour) is reused as a
    fixed curvature (chord method) while the gradient norm falls at least 2x per step; otherwise the dense total
    Hessian at the current point is recomputed (:func:`total_hessian`). A backtracking (Armijo) line search on F
    keeps each step a descent step. An indefinite Hessian is used with the absolute values of its eigenvalues (saddle-free Newton).
    """
    lam = lam0.detach().clone()
    value, g = obj.value_and_grad(lam)
    check_finite(value, "the meta-objective")
    h, factor, gn_prev, last_min_eig = hessian, None, float("inf"), None
    for step in range(max_steps):
        gn = float(g.norm())
        if gn <= tol:
            return ConvergedResult(lam, gn, step, True, last_min_eig)
        if h is None or gn > 0.5 * gn_prev:  # no curvature yet, or the reused one no longer contracts fast
            h, factor = total_hessian(obj, lam), None
        if factor is None:
            evals, evecs = torch.linalg.eigh(h)
            last_min_eig = float(evals[0])
            # saddle-free modification: |eigenvalues|, floored, so the direction is always a descent direction
            factor = (evals.abs().clamp_min(1e-12 * float(evals.abs().max())), evecs)
        evals, evecs = factor
        direction = -(evecs @ ((evecs.T @ g) / evals))
        t, slope = 1.0, float(g @ direction)
        while True:
            trial = lam + t * direction
            trial_value, trial_g = obj.value_and_grad(trial)
            finite = bool(torch.isfinite(trial_value)) and bool(torch.isfinite(trial_g).all())
            # Armijo on F, or (full step) a smaller gradient: near the optimum F changes below rounding
            if finite and (float(trial_value) <= float(value) + 1e-4 * t * slope
                           or t == 1.0 and float(trial_g.norm()) < gn) or t < 1e-8:
                break
            t *= 0.5
        check_finite(trial_value, "the meta-objective")
        gn_prev, lam, value, g = gn, trial, trial_value, trial_g
    gn = float(g.norm())
    return ConvergedResult(lam, gn, max_steps, gn <= tol, last_min_eig)


@dataclass
class Trajectory:
    """lam at recorded steps, the task schedule (task indices per step) and the learning rate of every step."""

    steps: list[int] = field(default_factory=list)
    lams: list[Tensor] = field(default_factory=list)
    schedule: list[list[int]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)


def train_stochastic(obj: MetaObjective, lam0: Tensor, steps: int, batch: int, lr: float, optimizer: str = "sgd",
                     seed: int = 0, record_every: int = 1) -> tuple[Tensor, Trajectory]:
    """Meta-training with task mini-batches (epoch-wise permutations from ``numpy.random.default_rng(seed)``).

    Step t: lam <- lam - lr * (1/|B_t|) sum_{k in B_t} tau_k g_k(lam) - lr * delta * lam (SGD), or Adam on the
    same gradient. ``record_every`` controls which lam_t are stored (lam_0 and the final lam always are).
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    rng = np.random.default_rng(seed)
    m = obj.n_tasks
    order: list[int] = []
    lam = lam0.detach().clone()
    traj = Trajectory(steps=[0], lams=[lam.clone()])
    m1 = torch.zeros_like(lam)
    m2 = torch.zeros_like(lam)
    for t in range(steps):
        if len(order) < batch:
            order += rng.permutation(m).tolist()
        idx, order = order[:batch], order[batch:]
        sub = MetaObjective(obj.model, obj.inner, type(obj.tasks)(*(x[idx] for x in obj.tasks)), obj.delta,
                            obj.tau[idx], obj.chunk)
        g = check_finite(sub.grad(lam), "a meta-gradient")
        if optimizer == "sgd":
            lam = lam - lr * g
        else:
            m1 = 0.9 * m1 + 0.1 * g
            m2 = 0.999 * m2 + 0.001 * g * g
            lam = lam - lr * (m1 / (1 - 0.9 ** (t + 1))) / ((m2 / (1 - 0.999 ** (t + 1))).sqrt() + 1e-8)
        traj.schedule.append(idx)
        traj.lrs.append(lr)
        if (t + 1) % record_every == 0 or t + 1 == steps:
            traj.steps.append(t + 1)
            traj.lams.append(lam.clone())
    return lam, traj
