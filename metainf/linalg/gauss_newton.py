"""TLXML-style Gauss-Newton total Hessian (Mitsuka et al., arXiv 2501.14271), a positive semi-definite
alternative curvature to the exact total Hessian.

For task k with query logits o_k(lam) = f(theta_k(lam), X_Q), the chain rule gives
D^2 L_O^k = J_o^T H_out J_o + sum_j (dL_O/do_j) D^2 o_j. Gauss-Newton keeps the first term only::

    GN_k = J_k^T  J_f^T H_out J_f  J_k ,     J_k = D_lam theta_k  (P x P),   J_f = d o / d theta at theta_k,
    H_out = d^2 L_O / d o^2   (block diagonal over query points; per point the CE Hessian diag(p) - p p^T,
                                weighted wq_j / |Q|)
    GN_F u = (1/M) sum_k tau_k GN_k u + delta u          (the same normalisation and delta as Hess F)

It drops both H' (the curvature of lam -> theta_k) and the network's own second-order term, so it is PSD (positive
definite with delta > 0) and needs no third derivatives. J_k u is ``inner.jvp_theta``; J_k^T w is J_k w for the
proximal problem (J_k = beta A^-1 is symmetric) and a VJP through the unrolled adaptation otherwise.
``gn_hvp(obj, lam)`` plugs in wherever ``lambda u: obj.hvp(lam, u)`` does (e.g. ``metainf.linalg.solvers.solve``);
``gn_dense`` is the matrix (as ``MetaObjective.dense_hessian``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp, vjp

from metainf.core.bilevel import InnerProblem, TaskData
from metainf.core.models import FlatModel
from metainf.core.objective import MetaObjective, check_finite
from metainf.linalg.chunked import map_chunked


def gn_task_hvp(inner: InnerProblem, model: FlatModel, lam: Tensor, t: TaskData, state: Tensor, theta: Tensor,
                u: Tensor) -> Tensor:
    """GN_k u = J_k^T J_f^T H_out J_f J_k u for one task (unbatched; ``state`` as in ``MetaObjective``, ``theta`` =
    theta_k(lam)). H_out in closed form: per query point j, (wq_j / |Q|) (diag(p_j) - p_j p_j^T) with p_j the
    softmax of its logits (the Hessian of ``weighted_ce`` in the logits)."""
    ju = inner.jvp_theta(model, lam, t, state, u)
    logits, jo = jvp(lambda x: model(x, t.xq), (theta,), (ju,))
    p = torch.softmax(logits, dim=-1)
    h_jo = (p * jo - p * (p * jo).sum(-1, keepdim=True)) * (t.wq / t.wq.shape[-1]).unsqueeze(-1)
    w = vjp(lambda x: model(x, t.xq), theta)[1](h_jo)[0]
    return inner.jac_t(model, lam, t, state, w)


def _gn_mean(obj: MetaObjective, lam: Tensor, states: Tensor, thetas: Tensor, u: Tensor) -> Tensor:
    hk = map_chunked(lambda t, st, th, w: gn_task_hvp(obj.inner, obj.model, lam, t, st, th, w),
                     (obj.tasks, states, thetas, u), (0, 0, 0, None), obj.chunk)
    return obj.tau @ hk / obj.n_tasks + obj.delta * u


def gn_hvp(obj: MetaObjective, lam: Tensor) -> Callable[[Tensor], Tensor]:
    """u -> GN_F u = (1/M) sum_k tau_k GN_k u + delta u (inner problems solved once, at ``lam``)."""
    states, thetas = obj.state_at(lam), obj.adapted_params(lam)
    return lambda u: check_finite(_gn_mean(obj, lam, states, thetas, u), "a Gauss-Newton total HVP")


def gn_dense(obj: MetaObjective, lam: Tensor, block: int = 64) -> Tensor:
    """GN_F as a dense matrix, ``block`` HVPs batched with vmap (small models only)."""
    states, thetas = obj.state_at(lam), obj.adapted_params(lam)
    eye = torch.eye(lam.numel(), dtype=lam.dtype, device=lam.device)
    h = map_chunked(lambda u: _gn_mean(obj, lam, states, thetas, u), (eye,), size=block)
    check_finite(h, "the dense Gauss-Newton total Hessian")
    return 0.5 * (h + h.T)
