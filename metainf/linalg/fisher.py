"""Empirical-Fisher (outer-product) total curvature, solved by the Woodbury identity.

The curvature is built from the per-task total gradients g_k = D_lam L_O^k (rows of G, [M, P]) that task-IF needs
anyway (one batched pass, ``MetaObjective.task_grads``), with the normalisation, task weights tau and outer L2
delta of F (``metainf.core.objective``) and the solve's extra damping::

    C = (1/M) sum_k tau_k g_k g_k^T + r I = (1/M) G_w^T G_w + r I,     G_w = diag(sqrt(tau)) G,   r = delta + damping

It replaces H_F = (1/M) sum_k tau_k D^2 L_O^k + delta I in v = (damping I + H_F)^-1 grad L_eval, so the task-IF
scores keep the project's sign, score[k] = v . g_k / M ~ L_eval(without k) - L_eval(with k). By Woodbury::

    C^-1 b = (1/r) [ b - G_w^T (r M I + G_w G_w^T)^-1 G_w b ]

costs O(M^2 P + M^3) (one Cholesky of the M x M kernel, whose eigenvalues are >= r M) instead of a total HVP per
iteration. C has rank-M structure: with r <= 0 and M < P it is singular, so ``r > 0`` is required.

Measured (E4, E5): at a converged lam* the task gradients are small (sum_k tau_k g_k = -M delta lam*), so
(1/M) G^T G is far below delta I and C is close to r I: the scores are then close to grad-dot scores. For the same
reason C is no useful preconditioner for CG on the exact total Hessian (iteration counts unchanged); it is offered
as ``precond="fisher"`` of ``task_if_truncated`` for comparison (E4's ``cg{k}_fisher`` rows), beside its diagonal
(``metainf.linalg.diagonal``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metainf.linalg.types import IndefiniteHessianError, SolveInfo


@dataclass(frozen=True)
class FisherCurvature:
    """C = (1/M) G_w^T G_w + r I with the Cholesky factor L L^T = r M I + G_w G_w^T of its Woodbury kernel."""

    rows: Tensor  # G_w = diag(sqrt(tau)) G, [M, P]
    reg: float  # r = delta + damping > 0
    chol: Tensor  # [M, M], lower triangular

    @property
    def n_tasks(self) -> int:
        return self.rows.shape[0]

    def matvec(self, v: Tensor) -> Tensor:
        """C v (``metainf.linalg.curvature.Curvature``)."""
        return fisher_matvec(self, v)

    def solve(self, b: Tensor) -> tuple[Tensor, SolveInfo]:
        """C^-1 b by Woodbury, with its relative residual (``metainf.linalg.curvature.Curvature``)."""
        x = fisher_inverse(self, b)
        rel = float((fisher_matvec(self, x) - b).norm()) / (float(b.norm()) or 1.0)
        return x, SolveInfo("fisher", 1, rel, self.reg)


def fisher_curvature(grads: Tensor, reg: float, tau: Tensor | None = None) -> FisherCurvature:
    """Factor C = (1/M) sum_k tau_k g_k g_k^T + reg I from the per-task total gradients ``grads`` [M, P].

    Raises ``IndefiniteHessianError`` if ``reg <= 0`` (C is then singular whenever M < P) and ``ValueError`` for
    negative task weights or non-finite gradients.
    """
    if not reg > 0:
        raise IndefiniteHessianError(
            f"the empirical-Fisher curvature (1/M) G^T G + r I needs r = delta + damping > 0, got r = {reg:.3e}: "
            "G^T G has rank <= M (the number of tasks), so without it the curvature is singular; set the outer L2 "
            "delta or the damping above 0")
    if not torch.isfinite(grads).all():
        raise ValueError("the per-task total gradients hold NaN/inf: the Fisher curvature cannot be formed")
    m = grads.shape[0]
    tau = torch.ones(m, dtype=grads.dtype, device=grads.device) if tau is None else tau.to(grads.dtype)
    if (tau < 0).any():
        raise ValueError("task weights tau must be >= 0 for the empirical-Fisher curvature (it uses sqrt(tau))")
    rows = tau.sqrt().unsqueeze(1) * grads
    kernel = rows @ rows.T + reg * m * torch.eye(m, dtype=grads.dtype, device=grads.device)
    return FisherCurvature(rows, float(reg), torch.linalg.cholesky(kernel))


def fisher_matvec(c: FisherCurvature, u: Tensor) -> Tensor:
    """C u = G_w^T (G_w u) / M + r u."""
    return c.rows.T @ (c.rows @ u) / c.n_tasks + c.reg * u


def fisher_inverse(c: FisherCurvature, b: Tensor) -> Tensor:
    """C^-1 b = (1/r) [b - G_w^T (r M I + G_w G_w^T)^-1 G_w b]  (Woodbury; two triangular solves)."""
    y = torch.cholesky_solve((c.rows @ b).unsqueeze(1), c.chol).squeeze(1)
    return (b - c.rows.T @ y) / c.reg


def fisher_dense(c: FisherCurvature) -> Tensor:
    """C as a dense P x P matrix (tests and small models only)."""
    p = c.rows.shape[1]
    return c.rows.T @ c.rows / c.n_tasks + c.reg * torch.eye(p, dtype=c.rows.dtype, device=c.rows.device)


def fisher_solve(grads: Tensor, b: Tensor, reg: float, tau: Tensor | None = None) -> tuple[Tensor, SolveInfo]:
    """x = C^-1 b for the empirical-Fisher curvature of ``grads`` (see ``fisher_curvature``), by Woodbury.

    ``SolveInfo.min_eigenvalue`` is r, the smallest eigenvalue of C when M < P (a lower bound otherwise).
    """
    return fisher_curvature(grads, reg, tau).solve(b)
