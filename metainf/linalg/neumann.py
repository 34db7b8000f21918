"""Neumann-series and LiSSA inverse-HVPs x ~ A^-1 b with A = damping I + H (the paper's section 4.3).

With A symmetric and every eigenvalue in (0, 2/eta), and by default eta = 1 / lambda_max(A) from power iteration::

    A^-1 = eta sum_{i>=0} (I - eta A)^i ,      x_J = eta sum_{i=0}^{J-1} p_i ,      p_i = (I - eta A)^i b

J is the truncation depth (number of terms, one HVP each). The residual of the truncated series is free:
b - A x_J = (I - eta A)^J b = p_J, so the stopping rule ||p_J|| <= tol ||b|| costs no extra HVP. In exact arithmetic
||p_i|| never grows while every eigenvalue lies in (0, 2/eta); growth beyond ``GROWTH`` x the smallest residual so
far therefore means an eigenvalue <= 0 (an indefinite Hessian) or eta too large, and raises
``SolverNotConvergedError``. Reaching J terms above ``tol`` raises too (``strict``) or warns and returns the
truncated series with ``SolveInfo.converged = False``.

LiSSA (Agarwal et al. 2017) replaces A by unbiased mini-batch estimates A_j (random task subsets, epoch-wise
permutations from ``numpy.random.default_rng(seed)`` as in ``metainf.train.train_stochastic``)::

    y_0 = b ,   y_j = b + (I - eta A_j) y_{j-1} ,   x = eta y_{J-1}          (averaged over ``repeats`` runs)

so with every batch holding all tasks it equals the Neumann series term for term. Its residual is measured once at
the end with the full operator.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from metainf.linalg.types import IndefiniteHessianError, SolveInfo, SolverNotConvergedError
from metainf.runtime.seeding import seeded_randn

Operator = Callable[[Tensor], Tensor]
BatchOperator = Callable[[Tensor, Sequence[int]], Tensor]

GROWTH = 1.5


def power_iteration(op: Operator, like: Tensor, iters: int = 20, seed: int = 0) -> float:
    """Rayleigh quotient v^T op(v) of the dominant (largest |eigenvalue|) direction after ``iters`` HVPs.

    For a positive semi-definite operator it is a lower bound on lambda_max that tightens with ``iters``.
    """
    gen = torch.Generator().manual_seed(seed)
    v = seeded_randn(*like.shape, generator=gen, dtype=like.dtype, device=like.device)
    v = v / v.norm()
    rayleigh = 0.0
    for _ in range(iters):
        w = op(v)
        rayleigh = float(v @ w)
        norm = w.norm()
        if float(norm) == 0.0:
            return 0.0
        v = w / norm
    return rayleigh


def step_size(op: Operator, like: Tensor, power_iters: int, seed: int) -> float:
    """eta = 1 / lambda_max(A) by power iteration; a non-positive dominant eigenvalue raises."""
    top = power_iteration(op, like, power_iters, seed)
    if top <= 0:
        raise IndefiniteHessianError(
            f"power iteration found a dominant eigenvalue {top:.3e} <= 0: the damped total Hessian is not positive "
            "definite, so no Neumann/LiSSA series converges; raise the damping or the outer L2 delta")
    return 1.0 / top


def _not_converged(method: str, info: SolveInfo, tol: float, strict: bool, advice: str) -> None:
    msg = (f"{method} reached relative residual {info.rel_residual:.2e} > tol {tol:.1e} after J={info.iterations} "
           f"terms (eta={1.0 / info.max_eigenvalue:.3e}): {advice}")
    if strict:
        raise SolverNotConvergedError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def neumann_solve(op: Operator, b: Tensor, depth: int, tol: float, eta: float | None = None, power_iters: int = 20,
                  seed: int = 0, strict: bool = True,
                  callback: Callable[[int, Tensor, float], None] | None = None) -> tuple[Tensor, SolveInfo]:
    """x = eta sum_{i<J} (I - eta A)^i b, stopping early once ||b - A x|| <= tol ||b||; ``op(u) = A u``.

    ``callback(j, x_j, rel_residual_j)`` sees every truncation j <= J (all depths of an ablation from one run)."""
    eta = step_size(op, b, power_iters, seed) if eta is None else eta
    bnorm = float(b.norm()) or 1.0
    x, p, best, rel = torch.zeros_like(b), b, 1.0, 1.0
    for j in range(1, depth + 1):
        x = x + eta * p
        p = p - eta * op(p)
        rel = float(p.norm()) / bnorm
        if not np.isfinite(rel) or rel > GROWTH * best:
            raise SolverNotConvergedError(
                f"the Neumann series diverges: relative residual grew to {rel:.2e} at term {j} (best {best:.2e}), "
                f"so the damped total Hessian has an eigenvalue outside (0, 2/eta = {2 / eta:.3e}): it is indefinite "
                "(raise the damping or the outer L2 delta) or eta is too large (lower eta)")
        best = min(best, rel)
        if callback is not None:
            callback(j, x, rel)
        if rel <= tol:
            return x, SolveInfo("neumann", j, rel, converged=True, max_eigenvalue=1.0 / eta)
    info = SolveInfo("neumann", depth, rel, converged=False, max_eigenvalue=1.0 / eta)
    _not_converged("the Neumann series", info, tol, strict,
                   "raise the depth J (max_iter) or the damping (better conditioning), or loosen tol")
    return x, info


def lissa_solve(batch_op: BatchOperator, full_op: Operator, b: Tensor, n_units: int, batch_size: int, depth: int,
                tol: float, eta: float | None = None, repeats: int = 1, power_iters: int = 20, seed: int = 0,
                strict: bool = True) -> tuple[Tensor, SolveInfo]:
    """LiSSA estimate of A^-1 b; ``batch_op(u, idx)`` is an unbiased estimate of A u = ``full_op(u)`` from the
    units ``idx``. ``eta`` defaults to 1 / lambda_max(A) (power iteration on ``full_op``), which also gives the
    final residual (one full HVP)."""
    if not 1 <= batch_size <= n_units:
        raise ValueError(f"LiSSA batch_size must be in [1, {n_units}], got {batch_size}")
    if eta is None:
        eta = step_size(full_op, b, power_iters, seed)
    rng = np.random.default_rng(seed)
    order: list[int] = []
    bnorm = float(b.norm()) or 1.0
    total = torch.zeros_like(b)
    for _ in range(repeats):
        y = b
        for j in range(1, depth):
            if len(order) < batch_size:
                order += rng.permutation(n_units).tolist()
            idx, order = order[:batch_size], order[batch_size:]
            y = b + y - eta * batch_op(y, idx)
            size = float(y.norm()) / bnorm
            if not np.isfinite(size) or size > GROWTH * (j + 1):  # |y_j| <= (j + 1) |b| while the series converges
                raise SolverNotConvergedError(
                    f"LiSSA diverges: |y_{j}| = {size:.2e} |b| > {GROWTH * (j + 1):.1f} |b|, so a mini-batch Hessian "
                    f"has an eigenvalue outside (0, 2/eta = {2 / eta:.3e}); use larger batches, a smaller eta or more "
                    "damping")
        total = total + eta * y
    x = total / repeats
    rel = float((full_op(x) - b).norm()) / bnorm
    info = SolveInfo("lissa", depth, rel, converged=rel <= tol, max_eigenvalue=1.0 / eta)
    if not info.converged:
        _not_converged("LiSSA", info, tol, strict,
                       "raise the depth J (max_iter), the batch size or repeats, or the damping, or loosen tol")
    return x, info
