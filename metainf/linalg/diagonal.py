"""Diagonal models of the damped total Hessian A = H_F + damping I, as Jacobi preconditioners for CG.

Task-IF solves A v = b with H_F = H_data + delta I, H_data = (1/M) sum_k tau_k D^2 L_O^k (``metainf.linalg.nystrom``
for the notation). A diagonal model D ~ diag(A) gives the preconditioner M^-1 r = r / D, applied in O(P); it
rescales parameters whose curvatures differ by orders of magnitude (the layers of a Conv-4), and does nothing for
a spectrum that is spread within every coordinate. Two models, both positive by construction (r = delta + damping
> 0 is the floor):

``fisher`` (free: the task gradients G [M, P] are already formed for the scores)
    D = (1/M) sum_k tau_k g_k^2 + r          (the diagonal of the empirical-Fisher curvature, ``metainf.linalg.fisher``)
``hutchinson`` (s batched total HVPs, factored once, reused by every solve)
    D = |(1/s) sum_j z_j * (H_data z_j)| + r,  z_j Rademacher      (Bekas, Kokiopoulou & Saad 2007)

The Hutchinson estimate is unbiased for diag(H_data) and its absolute value keeps the preconditioner positive
where H_data is indefinite (lam_T is not a minimum).
"""

from __future__ import annotations

import torch
from torch import Tensor

from metainf.core.objective import MetaObjective, check_finite
from metainf.linalg.cg import MatVec

def fisher_diagonal(grads: Tensor, tau: Tensor, reg: float) -> Tensor:
    """D = (1/M) sum_k tau_k g_k^2 + reg, [P], from the per-task total gradients ``grads`` [M, P]."""
    if reg <= 0:
        raise ValueError(f"a diagonal preconditioner needs delta + damping > 0, got {reg}")
    return (tau.to(grads.dtype)[:, None] * grads.square()).sum(0) / grads.shape[0] + reg


def hutchinson_diagonal(obj: MetaObjective, lam: Tensor, n_probes: int, reg: float, hprime: str = "exact",
                        seed: int = 0, chunk: int | None = 32) -> Tensor:
    """D = |(1/s) sum_j z_j * (H_data z_j)| + reg, [P], from ``n_probes`` = s Rademacher probes in batched total
    HVPs (``MetaObjective.data_hvps``, ``chunk`` probes at a time)."""
    if reg <= 0:
        raise ValueError(f"a diagonal preconditioner needs delta + damping > 0, got {reg}")
    if n_probes < 1:
        raise ValueError(f"hutchinson needs at least 1 probe, got {n_probes}")
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randint(0, 2, (n_probes, lam.numel()), generator=gen) * 2 - 1).to(lam.dtype).to(lam.device)
    hz = check_finite(obj.data_hvps(lam, z, hprime, block=chunk or n_probes), "a Hutchinson probe's HVP")
    return (z * hz).mean(0).abs() + reg


def jacobi(diagonal: Tensor) -> MatVec:
    """M^-1 r = r / D for a positive diagonal D (vectors [P] or blocks [P, n])."""
    def apply(r: Tensor) -> Tensor:
        return r / (diagonal if r.ndim == 1 else diagonal[:, None])
    return apply
