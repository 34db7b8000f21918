"""An EK-FAC model of the total Hessian, as a preconditioner factored once for task-IF's CG.

Task-IF solves (H_F + damping I) v = b with H_F = delta I + H_data, H_data = (1/M) sum_k tau_k D^2 L_O^k
(``metainf.linalg.nystrom`` for the notation). The model keeps the first-order, Gauss-Newton part of H_data::

    H_data ~ (1/M) sum_k tau_k GN_Q(theta_k),    GN_Q(theta_k) = sum_j (wq_j / |Q|) J_kj^T H_kj J_kj

the Gauss-Newton matrix of task k's query loss at its adapted parameters theta_k (J_kj: the Jacobian of the logits
of query point j in theta, H_kj: the Hessian of its cross-entropy in the logits), with d theta_k / d lam replaced by
the identity (first-order MAML; for iMAML the limit beta -> infinity). ``metainf.linalg.ekfac.pooled_ekfac_factors``
factors it layer by layer (George et al. 2018; Grosse et al. 2023), pooling the query points of all M tasks with
weights tau_k wq_j / (M |Q|), and the preconditioner is

    M^-1 r = (EK-FAC(H_data) + (delta + damping) I)^-1 r,

positive definite by construction (``ekfac_apply``; parameters outside Linear / Conv2d layers get the floor
delta + damping). What it leaves out: the second-order terms of H_F (the curvature of the inner adaptation and the
part of the query Hessian beyond Gauss-Newton), which carry the negative curvature of H_data at lam*. The cost,
paid once per problem: one batched pass over the tasks (the adapted parameters, a forward pass of the query points
and C backward passes for the C output-Hessian roots; a second pass when the tasks span several ``obj.chunk``
chunks, so that memory holds one chunk's samples, see ``pooled_ekfac_factors``) and two eigendecompositions per layer.
"""

from __future__ import annotations

from torch import Tensor

from metainf.core.objective import MetaObjective
from metainf.linalg.cg import MatVec
from metainf.linalg.ekfac import LayerFactors, ekfac_apply, pooled_ekfac_factors


def total_ekfac_factors(obj: MetaObjective, lam: Tensor, fisher: str = "ggn") -> list[LayerFactors]:
    """EK-FAC factors of (1/M) sum_k tau_k GN_Q(theta_k) (module docstring) at ``lam``."""
    obj.state_at(lam)  # the inner states (proximal: the solved theta_k) at lam
    thetas = obj.map_tasks(lambda t, s: obj.inner.adapted(obj.model, lam, t, s)).detach()
    t = obj.tasks
    weights = obj.tau.to(lam.dtype)[:, None] * t.wq / (t.wq.shape[-1] * obj.n_tasks)
    return pooled_ekfac_factors(obj.model, t.xq, t.yq, weights, thetas, fisher, obj.chunk)


def total_ekfac_preconditioner(obj: MetaObjective, lam: Tensor, reg: float, fisher: str = "ggn") -> MatVec:
    """r -> (EK-FAC(H_data) + reg I)^-1 r, factored once (module docstring); ``reg`` = delta + damping > 0."""
    if reg <= 0:
        raise ValueError(f"the EK-FAC preconditioner needs delta + damping > 0, got {reg}")
    factors = total_ekfac_factors(obj, lam, fisher)
    return lambda r: ekfac_apply(obj.model, factors, r, reg)
