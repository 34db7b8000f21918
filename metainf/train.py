"""Meta-training: converged full-batch training (for influence and leave-one-out ground truth) and
stochastic SGD/Adam meta-training that records its trajectory (for trajectory-based baselines)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from metainf.core.objective import MetaObjective, NonFiniteError, check_finite


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
    return obj.block_hessian(lam) if obj.inner.dense_blocks else obj.dense_hessian(lam)


def task_total_hessians(obj: MetaObjective, lam: Tensor) -> Tensor:
    """Per-task total Hessians D^2 L_O^k, [M, P, P], by the route of :func:`total_hessian`."""
    return obj.block_task_hessians(lam) if obj.inner.dense_blocks else obj.task_hessians(lam)


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
    keeps each step a descent step. An indefinite Hessian is used with the absolute values of its eigenvalues
    (saddle-free Newton).
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


class QuasiNewtonRun:
    """One run of :func:`chord_newton` as a stepper, so that several runs can share batched evaluations of F.

    ``point()`` is where F must be evaluated next (None once finished); ``tell(value, grad, ok)`` reports F and
    grad F there (``ok=False``: the evaluation is unusable, e.g. inner problems unsolved, and counts as non-finite);
    ``result()`` gives the outcome. :func:`chord_newton` documents the iteration and the stopping rule.
    """

    def __init__(self, lam0: Tensor, hessian: Tensor, tol: float = 1e-8, max_evals: int = 40, bfgs: bool = True):
        self.lam, self.tol, self.max_evals, self.bfgs = lam0.detach().clone(), tol, max_evals, bfgs
        factor, info = torch.linalg.cholesky_ex(hessian)
        self.failed = int(info) != 0  # H0 not positive definite: no quasi-Newton run
        self.inv = None if self.failed else torch.cholesky_inverse(factor)
        if self.inv is not None:
            self.inv = 0.5 * (self.inv + self.inv.T)
        self.value: Tensor | None = None
        self.g: Tensor | None = None
        self.gn, self.t, self.evals = float("inf"), 1.0, 0
        self._trial: Tensor | None = None
        self._direction: Tensor | None = None

    @property
    def done(self) -> bool:
        return self.failed or self.g is not None and self.gn <= self.tol

    def point(self) -> Tensor | None:
        if self.done or self.evals >= self.max_evals:
            return None
        if self.g is None:
            return self.lam
        if self._trial is None:
            self._direction = -(self.inv @ self.g)
            self._trial = self.lam + self.t * self._direction
        return self._trial

    def tell(self, value: Tensor, g: Tensor, ok: bool = True) -> None:
        self.evals += 1
        finite = ok and bool(torch.isfinite(value)) and bool(torch.isfinite(g).all())
        if self.g is None:  # the start point
            self.value, self.g, self.gn, self.failed = value, g, float(g.norm()), not finite
            return
        trial, direction, self._trial = self._trial, self._direction, None
        gn = float(g.norm()) if finite else float("inf")
        # Armijo on F, or (full step) a smaller gradient: near the optimum F changes below rounding
        if not finite or not (self.t == 1.0 and gn < self.gn
                              or float(value) <= float(self.value) + 1e-4 * self.t * float(self.g @ direction)):
            self.t *= 0.5
            self.failed = self.t < 1.0 / 64
            return
        if self.bfgs:
            s, y = trial - self.lam, g - self.g
            sy = float(s @ y)
            if sy > 1e-12 * float(s.norm() * y.norm()):  # curvature condition, else keep B
                rho, by = 1.0 / sy, self.inv @ y
                # (I - rho s y^T) B (I - rho y s^T) + rho s s^T, expanded (B symmetric)
                self.inv = (self.inv - rho * (torch.outer(s, by) + torch.outer(by, s))
                            + (rho * rho * float(y @ by) + rho) * torch.outer(s, s))
        self.lam, self.value, self.g, self.gn, self.t = trial, value, g, gn, 1.0

    def result(self) -> ConvergedResult:
        return ConvergedResult(self.lam, self.gn, self.evals, self.g is not None and self.gn <= self.tol)


def chord_newton(obj: MetaObjective, lam0: Tensor, hessian: Tensor, tol: float = 1e-8, max_evals: int = 40,
                 bfgs: bool = True) -> ConvergedResult:
    """Quasi-Newton iterations from a given curvature H0 = ``hessian`` until ||grad F(lam)|| <= ``tol``::

        lam_{j+1} = lam_j - t_j B_j grad F(lam_j),      B_0 = H0^-1 (dense, from the Cholesky factor of H0)

    With ``bfgs=False`` this is the chord (simplified Newton) method, B_j = H0^-1; with ``bfgs=True`` (default)
    B_j gets the BFGS inverse update with s = lam_{j+1} - lam_j, y = grad F(lam_{j+1}) - grad F(lam_j),
    rho = 1 / (y^T s)::

        B_{j+1} = (I - rho s y^T) B_j (I - rho y s^T) + rho s s^T      (skipped unless y^T s > 0)

    The step length t_j is 1 unless the trial point fails both tests of :func:`newton_refine` (Armijo on F, or a
    smaller gradient norm at t = 1) or has a non-finite value or gradient; then it halves. Each trial costs one
    value and gradient of F: no Hessian, no L-BFGS stage. The chord error contracts by ||I - H0^-1 Hess F|| along
    the path, so the method suits a start next to the minimiser with H0 the total Hessian there: leave-one-out
    retraining from lam* with H0 the exact total Hessian at lam* of F without the unit (task removal:
    H - tau_k H_k / M, :func:`experiments.ground_truth.unit_start_hessian`). BFGS corrects H0 along the steps, where
    soft directions of Hess F (a near-singular minimum) make the pure chord contraction slow.

    Stopping rule: ``converged`` only when ||grad F(lam)|| <= ``tol``, the criterion of :func:`train_converged`, so
    the minimiser is the same. It gives up (``converged=False``, last accepted iterate) when H0 is not positive
    definite, F is not finite at the start, the step halves below 1/64, or after ``max_evals`` evaluations of F;
    callers then fall back to :func:`train_converged`. ``iterations`` counts evaluations of F. ``min_eigenvalue``
    is not computed: as for :func:`newton_refine` started from a ``hessian``, the minimum is certified only by H0
    (positive definite, checked by the factorisation), not by the Hessian at the returned point.
    """
    run = QuasiNewtonRun(lam0, hessian, tol, max_evals, bfgs)
    while (lam := run.point()) is not None:
        try:
            run.tell(*obj.value_and_grad(lam))
        except NonFiniteError:
            run.tell(torch.tensor(float("nan")), torch.full_like(lam, float("nan")))
    return run.result()


#: meta-training counts as diverged when the meta-gradient norm exceeds this many times max(1, its first value)
DIVERGENCE_FACTOR = 1e3


class DivergenceError(NonFiniteError):
    """Meta-training diverged: its gradient grew by :data:`DIVERGENCE_FACTOR`; the message names the step size."""


@dataclass
class Trajectory:
    """lam at recorded steps, the task schedule (task indices per step) and the learning rate of every step."""

    steps: list[int] = field(default_factory=list)
    lams: list[Tensor] = field(default_factory=list)
    schedule: list[list[int]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)


def batch_objective(obj: MetaObjective, idx: list[int]) -> MetaObjective:
    """The sub-objective of one meta-batch (one entry per slot, duplicates kept): its ``grad`` is the step's
    meta-gradient g_t of :func:`train_stochastic`, so a replay that takes it reproduces the recorded run bit for bit."""
    tasks = type(obj.tasks)(*(x[idx] for x in obj.tasks))
    return MetaObjective(obj.model, obj.inner, tasks, obj.delta, obj.tau[idx], obj.chunk)


def optimizer_step(optimizer: str, lam: Tensor, m1: Tensor, m2: Tensor, g: Tensor, lr: float,
                   t: int) -> tuple[Tensor, Tensor, Tensor]:
    """One outer update (lam, m1, m2) -> (lam', m1', m2') of :func:`train_stochastic`: SGD lam - lr g, or Adam
    (beta 0.9 / 0.999, eps 1e-8, bias-corrected at step t)."""
    if optimizer == "sgd":
        return lam - lr * g, m1, m2
    if optimizer != "adam":
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    m1 = 0.9 * m1 + 0.1 * g
    m2 = 0.999 * m2 + 0.001 * g * g
    lam = lam - lr * (m1 / (1 - 0.9 ** (t + 1))) / ((m2 / (1 - 0.999 ** (t + 1))).sqrt() + 1e-8)
    return lam, m1, m2


def train_stochastic(obj: MetaObjective, lam0: Tensor, steps: int, batch: int, lr: float, optimizer: str = "sgd",
                     seed: int = 0, record_every: int = 1) -> tuple[Tensor, Trajectory]:
    """Meta-training with task mini-batches (epoch-wise permutations from ``numpy.random.default_rng(seed)``).

    Step t: lam <- lam - lr * (1/|B_t|) sum_{k in B_t} tau_k g_k(lam) - lr * delta * lam (SGD), or Adam on the
    same gradient. ``record_every`` controls which lam_t are stored (lam_0 and the final lam always are).

    Raises :class:`DivergenceError` when ||g_t|| > DIVERGENCE_FACTOR * max(1, ||g_0||) (with the outer L2 term
    delta lam in g, a blown-up lam shows in its gradient), and ``NonFiniteError`` for a non-finite gradient.
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
        g = check_finite(batch_objective(obj, idx).grad(lam), "a meta-gradient")
        norm = float(g.norm())
        reference = norm if t == 0 else reference
        if norm > DIVERGENCE_FACTOR * max(1.0, reference):
            raise DivergenceError(f"meta-training diverged: the meta-gradient norm grew from {reference:.3g} to "
                                  f"{norm:.3g} by step {t} (over {DIVERGENCE_FACTOR:g}x). Lower the outer learning "
                                  f"rate lr={lr:g} (experiments: config key outer_lr) or raise the outer L2 delta.")
        lam, m1, m2 = optimizer_step(optimizer, lam, m1, m2, g, lr, t)
        traj.schedule.append(idx)
        traj.lrs.append(lr)
        if (t + 1) % record_every == 0 or t + 1 == steps:
            traj.steps.append(t + 1)
            traj.lams.append(lam.clone())
    return lam, traj
