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
- successive right-hand sides (``cg_successive``): the tolerance mode for the rows b_1, ..., b_E of B, each
  started from the Galerkin projection of its solution onto the solutions found before it (Fischer 1998; see there).
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
         max_iter: int, fixed: bool, strict: bool) -> tuple[Tensor, SolveInfo | None, Tensor]:
    """The recursion of the module docstring; ``fixed`` selects the mode (returns info None when fixed). The third
    value is the recursion's last residual r = b - A x (exact in exact arithmetic)."""
    pre = precond if precond is not None else (lambda v: v)
    x = torch.zeros_like(b) if x0 is None else x0
    r = b if x0 is None else b - (matvec(x) if ax0 is None else ax0)
    name = "cg" if precond is None else "pcg"
    bnorm = rel = 0.0
    if not fixed:
        bnorm = float(b.norm()) or 1.0
        rel = float(r.norm()) / bnorm
        if rel <= tol:
            return x, SolveInfo(name, 0, rel), r
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
                return x, SolveInfo(name, it, rel), r
        z = pre(r)
        rz_new = r @ z
        p = z + (_guarded_ratio(rz_new, rz) if fixed else rz_new / rz) * p
        rz = rz_new
    if fixed:
        return x, None, r
    if strict:
        raise SolverNotConvergedError(
            f"CG reached relative residual {rel:.2e} > tol {tol:.1e} after {max_iter} iterations: raise max_iter, "
            "raise the damping (better conditioning), loosen tol or use a (better) preconditioner")
    return x, SolveInfo(name, max_iter, rel, converged=False), r


def cg(matvec: MatVec, b: Tensor, precond: MatVec | None = None, x0: Tensor | None = None,
       ax0: Tensor | None = None, tol: float = 1e-10, max_iter: int = 500,
       strict: bool = False) -> tuple[Tensor, SolveInfo]:
    """x ~ A^-1 b by (preconditioned) CG to a relative residual ||b - A x|| / ||b|| <= ``tol`` (module docstring).

    ``matvec`` = A (symmetric positive definite), ``precond`` = M^-1 (symmetric positive definite, e.g. a low-rank
    or Fisher model of A^-1), ``x0`` a warm start with ``ax0`` = A x0 if known (saves one matvec). ``tol=0`` runs
    exactly ``max_iter`` iterations (still checking the curvature). Returns (x, info) with ``info.iterations`` the
    matvecs spent (0 if x0 already met ``tol``), ``info.method`` "cg" or "pcg"; raises ``IndefiniteHessianError``
    on p'Ap <= 0 and, with ``strict``, ``SolverNotConvergedError`` when ``tol`` is not met."""
    x, info, _ = _run(matvec, b, precond, x0, ax0, tol, max_iter, False, strict)
    assert info is not None
    return x, info


def cg_fixed(matvec: MatVec, b: Tensor, iters: int, x0: Tensor | None = None,
             precond: MatVec | None = None) -> Tensor:
    """Exactly ``iters`` CG iterations from ``x0`` (default 0), vmap-safe (module docstring): the same recursion as
    :func:`cg` without its stopping test and curvature check."""
    return _run(matvec, b, precond, x0, None, 0.0, iters, True, False)[0]


def cg_successive(matvec: MatVec, rhs: Tensor, precond: MatVec | None = None, tol: float = 1e-10,
                  max_iter: int = 500, strict: bool = False,
                  project: bool = True) -> tuple[Tensor, list[SolveInfo]]:
    """X[j] ~ A^-1 rhs[j] for every row of ``rhs`` [E, n] by :func:`cg`, one after another, sharing A and ``precond``
    (a preconditioner factored once serves every row).

    With ``project`` (default) row j starts from the A-orthogonal (Galerkin) projection of its solution onto the
    span of the solutions found before it, X_<j = [x_1 .. x_{j-1}] (P. F. Fischer 1998, "Projection techniques for
    iterative solution of Ax = b with successive right-hand sides")::

        x0 = X_<j^T c,   (X_<j A X_<j^T) c = X_<j b_j,   A x_i = b_i - r_i

    where r_i is CG's final residual of row i, so the start costs no matvec; x0 minimises the A-norm error over that
    span, so it is never worse than 0 (up to the residuals r_i, at most ``tol`` of each row). Right-hand sides that
    are correlated (the gradients of evaluation tasks at the same lam) then need fewer iterations. ``project=False``
    solves every row from 0 (the reference). Returns (X [E, n], one ``SolveInfo`` per row); raises as :func:`cg`."""
    if rhs.dim() != 2:
        raise ValueError(f"rhs must be [E, n] (one right-hand side per row), got shape {tuple(rhs.shape)}")
    xs: list[Tensor] = []
    axs: list[Tensor] = []
    infos: list[SolveInfo] = []
    for b in rhs:
        x0 = ax0 = None
        if project and xs:
            x_prev, ax_prev = torch.stack(xs), torch.stack(axs)
            gram = x_prev @ ax_prev.T
            gram_inv = torch.linalg.pinv(0.5 * (gram + gram.T), hermitian=True, rtol=torch.finfo(b.dtype).eps ** 0.5)
            c = gram_inv @ (x_prev @ b)
            x0, ax0 = c @ x_prev, c @ ax_prev
        x, info, r = _run(matvec, b, precond, x0, ax0, tol, max_iter, False, strict)
        assert info is not None
        xs.append(x)
        axs.append(b - r)
        infos.append(info)
    return torch.stack(xs), infos
