"""TRAK on the meta-objective: randomly projected gradient features and a projected empirical-Fisher kernel.

Features are the per-task total gradients g_k (the loss-gradient features of dattri's ``TRAKAttributor``, one
model) projected by a Gaussian matrix P in R^{k x p} with i.i.d. N(0, 1/k) entries: phi_k = P g_k,
phi_eval = P grad L_eval. With Phi the [M, k] feature matrix (rows weighted by the task weights tau)::

    K = Phi^T diag(tau) Phi + M delta P P^T + damping I                     (k x k)
    score[k] = phi_eval^T K^-1 phi_k                                          (positive: task k helps)

This is influence with the Hessian replaced by the projected empirical Fisher of the task gradients,
H ~ (1/M) sum_k tau_k g_k g_k^T + delta I, so score[k] ~ grad L_eval^T H^-1 g_k / M in the suite's convention.
Points use the same kernel and their unit gradients G_u = d(grad F)/d omega_u (see :mod:`metainf.methods.static`):
score[u] = M phi_eval^T K^-1 P G_u, the task case being G_k = g_k / M. Everything reduces to one vector
v = M P^T K^-1 phi_eval with score[u] = v . G_u, so no per-point feature is formed.

Differences from classification TRAK: one trained model (no retraining ensemble) with an optional ensemble over
``n_projections`` independent projections (seeds ``problem.seed + i``, scores averaged), and no (1 - p) output
reweighting Q (a task has no single correct-class probability; the loss gradient already carries each query
point's (1 - p) factor). ``proj_dim=None`` or ``proj_dim >= p`` uses P = I (exact, no projection); K is inverted
with a Hermitian pseudo-inverse, so an exactly singular kernel (delta = damping = 0, k > M) gets the minimum-norm
solution. With P = I the scores equal dattri's ``TRAKAttributor`` with ``proj_type="identity"``, Q = 1 and
``regularization = (M delta + damping) / p`` (dattri divides gradients by sqrt(p)), averaged over test tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metainf.influence import instance_scores, task_scores
from metainf.methods.base import AttributionProblem
from metainf.runtime.seeding import seeded_randn


def gaussian_projection(p: int, k: int, seed: int, dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
    """P in R^{k x p} with N(0, 1/k) entries, from ``torch.Generator().manual_seed(seed)`` (the same P on any
    ``device``; ``seeded_randn``)."""
    return seeded_randn(k, p, generator=torch.Generator().manual_seed(seed), dtype=dtype, device=device) / k ** 0.5


@dataclass
class TRAK:
    """Projected-gradient TRAK scores (module docstring) for tasks, support and query points."""

    proj_dim: int | None = 512
    n_projections: int = 1
    damping: float = 0.0
    name: str = "trak"
    kinds: tuple[str, ...] = ("task", "support", "query")
    needs_trajectory: bool = False

    def __post_init__(self) -> None:
        if self.n_projections < 1 or (self.proj_dim is not None and self.proj_dim < 1):
            raise ValueError(f"trak needs n_projections >= 1 and proj_dim >= 1 or None, got "
                             f"n_projections={self.n_projections}, proj_dim={self.proj_dim}")

    def eval_vector(self, problem: AttributionProblem) -> Tensor:
        """v = M P^T K^-1 P grad L_eval, averaged over the projection ensemble."""
        obj, lam = problem.objective, problem.lam
        g = obj.task_grads(lam)
        b = problem.eval_objective.mean_loss_grad(lam)
        m, p = g.shape
        k = p if self.proj_dim is None else min(self.proj_dim, p)
        exact = k == p
        v = torch.zeros_like(b)
        for i in range(1 if exact else self.n_projections):
            proj = (torch.eye(p, dtype=b.dtype, device=b.device) if exact else
                    gaussian_projection(p, k, problem.seed + i, b.dtype, b.device))
            phi = g @ proj.T
            kernel = phi.T @ (obj.tau[:, None] * phi) + m * obj.delta * proj @ proj.T
            kernel = kernel + self.damping * torch.eye(kernel.shape[0], dtype=b.dtype, device=b.device)
            v = v + proj.T @ (torch.linalg.pinv(kernel, hermitian=True) @ (proj @ b))
        return m * v / (1 if exact else self.n_projections)

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        v = self.eval_vector(problem)
        if kind == "task":
            return task_scores(problem.objective, problem.lam, v)
        support, query = instance_scores(problem.objective, problem.lam, v, "full")
        return support if kind == "support" else query
