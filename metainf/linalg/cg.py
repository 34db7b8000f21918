"""The one conjugate gradient of metainf: x = A^-1 b for a symmetric positive definite A given as a matvec.

Preconditioned CG (M^-1 = ``precond``, identity by default) from ``x0`` (default 0)::

    r_0 = b - A x_0,  z_0 = M^-1 r_0,  p_0 = z_0
    alpha_i = r_i.z_i / p_i.A p_i,  x_{i+1} = x_i + alpha_i p_i,  r_{i+1} = r_i - alpha_i A p_i
    z_{i+1} = M^-1 r_{i+1},  p_{i+1} = z_{i+1} + (r_{i+1}.z_{i+1} / r_i.z_i) p_i

Two modes of the same recursion:

- tolerance (``cg``): stops at the first iterate with ||r|| / ||b|| <= ``tol`` (checked also at x0), after at most
  ``max_iter`` matvecs; non-positive curvature p'Ap <= 0 raises ``IndefiniteHessianError`` (A is then not positive
  definite, e.g. an indefinite total Hessian without enough damping); not reaching ``tol`` raises
  ``SolverNotConvergedError`` with ``strict``, else returns ``converged=False``.
- fixed (``cg_fixed``): exactly ``iters`` matvecs with no data-dependent control flow, so it runs under ``vmap``
  (the proximal inner solves). Divisions by a (numerically) zero p'Ap or r'z give a zero step instead, so the
  iteration is safe once converged; it cannot raise on indefiniteness (no host synchronisation under ``vmap``).

This module imports only torch and ``metainf.linalg.types``, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from metainf.linalg.types import IndefiniteHessianError, SolveInfo, SolverNotConvergedError

MatVec = Callable[[Tensor], Tensor]


def _guarded_ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, or 0 where |den| <= the smallest normal number (vmap-safe: no Python branch on data)."""
    ok = den.abs() > torch.finfo(den.dtype).tiny
    return torch.where(ok, num / torch.where(ok, den, 1.0), 0.0)


def _run(matvec: MatVec, b: Tensor, precond: MatVec | None, x0: Tensor | None, ax0: Tensor | None, tol: float,
         max_iter: int, fixed: bool, strict: bool) -> tuple[Tensor, SolveInfo | None]:
    """The recursion of the module docstring; ``fixed`` selects the mode (returns info None when fixed)."""
    pre = precond if precond is not None else (lambda v: v)
    x = torch.zeros_like(b) if x0 is None else x0
    r = b if x0 is None else b - (matvec(x) if ax0 is None else ax0)
    name = "cg" if precond is None else "pcg"
    bnorm = rel = 0.0
    if not fixed:
        bnorm = float(b.norm()) or 1.0
        rel = float(r.norm()) / bnorm
        if rel <= tol:
            return x, SolveInfo(name, 0, rel)
    z = pre(r)
    p, rz = z, r @ z
    for it in range(1, max_iter + 1):
        ap = matvec(p)
        pap = p @ ap
        if fixed:
            alpha = _guarded_ratio(rz, pap)
        else:
            curv = float(pap)
            if curv <= 0:
                raise IndefiniteHessianError(
                    f"CG met non-positive curvature p'Ap/p'p = {curv / max(float(p @ p), 1e-300):.3e} at iteration "
                    f"{it}: the damped total Hessian is indefinite; raise the damping or the outer L2 delta, or use "
                    "method='dense' to see the spectrum")
            alpha = rz / curv
        x = x + alpha * p
        r = r - alpha * ap
        if not fixed:
            rel = float(r.norm()) / bnorm
            if rel <= tol:
                return x, SolveInfo(name, it, rel)
        z = pre(r)
        rz_new = r @ z
        p = z + (_guarded_ratio(rz_new, rz) if fixed else rz_new / rz) * p
        rz = rz_new
    if fixed:
        return x, None
    if strict:
        raise SolverNotConvergedError(
            f"CG reached relative residual {rel:.2e} > tol {tol:.1e} after {max_iter} iterations: raise max_iter, "
            "raise the damping (better conditioning), loosen tol or use a (better) preconditioner")
    return x, SolveInfo(name, max_iter, rel, converged=False)


def cg(matvec: MatVec, b: Tensor, precond: MatVec | None = None, x0: Tensor | None = None,
       ax0: Tensor | None = None, tol: float = 1e-10, max_iter: int = 500,
       strict: bool = False) -> tuple[Tensor, SolveInfo]:
    """x ~ A^-1 b by (preconditioned) CG to a relative residual ||b - A x|| / ||b|| <= ``tol`` (module docstring).

    ``matvec`` = A (symmetric positive definite), ``precond`` = M^-1 (symmetric positive definite, e.g. a low-rank
    or Fisher model of A^-1), ``x0`` a warm start with ``ax0`` = A x0 if known (saves one matvec). ``tol=0`` runs
    exactly ``max_iter`` iterations (still checking the curvature). Returns (x, info) with ``info.iterations`` the
    matvecs spent (0 if x0 already met ``tol``), ``info.method`` "cg" or "pcg"; raises ``IndefiniteHessianError``
    on p'Ap <= 0 and, with ``strict``, ``SolverNotConvergedError`` when ``tol`` is not met."""
    x, info = _run(matvec, b, precond, x0, ax0, tol, max_iter, False, strict)
    assert info is not None
    return x, info


def cg_fixed(matvec: MatVec, b: Tensor, iters: int, x0: Tensor | None = None,
             precond: MatVec | None = None) -> Tensor:
    """Exactly ``iters`` CG iterations from ``x0`` (default 0), vmap-safe (module docstring): the same recursion as
    :func:`cg` without its stopping test and curvature check."""
    return _run(matvec, b, precond, x0, None, 0.0, iters, True, False)[0]
