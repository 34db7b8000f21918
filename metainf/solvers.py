"""Inverse total-Hessian-vector products (delta I + H)^-1 b behind one interface.

``solve(hvp, b, method, damping)`` with ``hvp(u) = H u``. Methods: ``dense`` (H formed column by column,
eigen-checked, solved exactly) and ``cg`` (conjugate gradient to a relative residual ``tol``). An indefinite
(damped) Hessian raises ``IndefiniteHessianError``; a CG run that does not reach ``tol`` raises
``SolverNotConvergedError``. Both messages say what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


class IndefiniteHessianError(ValueError):
    """The damped total Hessian has a non-positive eigenvalue / curvature."""


class SolverNotConvergedError(RuntimeError):
    """An iterative solver stopped before reaching its tolerance."""


@dataclass
class SolveInfo:
    method: str
    iterations: int
    rel_residual: float
    min_eigenvalue: float | None = None


def solve(hvp: Callable[[Tensor], Tensor], b: Tensor, method: str = "cg", damping: float = 0.0, tol: float = 1e-10,
          max_iter: int = 500) -> tuple[Tensor, SolveInfo]:
    """x = (damping I + H)^-1 b."""
    op = (lambda u: hvp(u) + damping * u) if damping else hvp
    if method == "dense":
        eye = torch.eye(b.numel(), dtype=b.dtype)
        h = torch.stack([op(eye[i]) for i in range(b.numel())], dim=1)
        h = 0.5 * (h + h.T)
        evals, evecs = torch.linalg.eigh(h)
        lo = float(evals[0])
        if lo <= 0:
            raise IndefiniteHessianError(
                f"the damped total Hessian is indefinite (smallest eigenvalue {lo:.3e}): raise the damping above "
                f"{-lo:.3e} (e.g. --damping) or the outer L2 delta, or train closer to a minimum")
        x = evecs @ ((evecs.T @ b) / evals)
        res = float((op(x) - b).norm() / b.norm().clamp_min(1e-300))
        return x, SolveInfo("dense", b.numel(), res, lo)
    if method == "cg":
        x = torch.zeros_like(b)
        r = b.clone()
        p, rs = r.clone(), r @ r
        bnorm = float(b.norm()) or 1.0
        for it in range(1, max_iter + 1):
            ap = op(p)
            curv = float(p @ ap)
            if curv <= 0:
                raise IndefiniteHessianError(
                    f"CG met non-positive curvature {curv:.3e} at iteration {it}: the damped total Hessian is "
                    "indefinite; raise the damping or the outer L2 delta, or use method='dense' to see the spectrum")
            alpha = rs / curv
            x = x + alpha * p
            r = r - alpha * ap
            rs_new = r @ r
            if float(rs_new.sqrt()) / bnorm <= tol:
                return x, SolveInfo("cg", it, float(rs_new.sqrt()) / bnorm)
            p = r + (rs_new / rs) * p
            rs = rs_new
        raise SolverNotConvergedError(
            f"CG reached relative residual {float(rs.sqrt()) / bnorm:.2e} > tol {tol:.1e} after {max_iter} iterations: "
            "raise max_iter, raise the damping (better conditioning) or loosen tol")
    raise ValueError(f"unknown solver {method!r}: choose 'dense' or 'cg'")
