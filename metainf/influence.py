"""Task-IF, instance-IF, direct-IF and model editing for a trained meta-objective.

Sign convention (``metainf/methods/base.py``)::

    score[u] ~ L_eval(trained without u) - L_eval(trained with u)        (positive: u helps)

Derivation. With unit weights omega (task weights tau, point weights ws/wq), lam*(omega) solves grad F = 0, so
d lam*/d omega_u = -H_F^-1 d_omega_u grad F. Removing u is Delta omega_u = -1, hence::

    Delta lam_u   ~  H_F^-1 d_omega_u grad F                     (model edit:  lam_-u = lam* + Delta lam_u)
    score[u]      =  grad L_eval^T Delta lam_u = v^T d_omega_u grad F,     v = (damping I + H_F)^-1 grad L_eval

with H_F = (1/M) sum_k D^2 L_O^k + delta I the total Hessian of F. One solve for v scores every unit:

    task k          d_tau_k grad F = g_k / M               -> task-IF score  v . g_k / M
                    (the paper's task-IF(D_k) = -(delta I + H_Total)^-1 g_k = -M Delta lam_k in sum form)
    query point j   d_wq grad F = D_lam[l_j / |Q|] / M     -> (J_k v) . grad l_j / (M |Q|)
    support point j d_ws grad F = -D_lam P_j / M           -> the paper's two-stage proxy P, full or frozen D_lam P

Direct-IF (the paper's naive baseline) ignores the dependence of theta_k on lam: it uses grad_theta L_O(theta_k)
as the task gradient and sum_k Hess_theta L_O(theta_k) as the Hessian (the first-order-MAML reading, since with a
proximal inner problem the literal partial d_lam L_O is zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad, jvp

from metainf.core.bilevel import TaskData, parse_hprime, query_loss
from metainf.core.objective import MetaObjective
from metainf.linalg.chunked import map_chunked
from metainf.linalg.gamma import check_gamma
from metainf.linalg.solvers import SolveInfo, solve


@dataclass
class InfluenceConfig:
    solver: str = "cg"
    damping: float = 0.0
    hprime: str = "exact"
    tol: float = 1e-10
    max_iter: int = 500


def hessian_operator(obj: MetaObjective, lam: Tensor, hprime: str):
    """u -> H_F u for the solvers, which assume H_F symmetric. The exact Jacobian of the first-order MAML
    meta-gradient, Hess L_O(theta_k) J_k, is not: that combination raises ``NotImplementedError``.

    In the Gamma modes (``gamma``, ``gamma_scaled:c``) it first runs :func:`metainf.linalg.gamma.check_gamma`,
    which warns (``RuntimeWarning``) when Gamma_F exceeds lambda_max of the rest of H_F, i.e. when the solve
    degenerates to v ~ grad L_eval / Gamma_F and task-IF to gradient similarity."""
    if parse_hprime(hprime)[0] == "gamma":
        check_gamma(obj, lam, hprime)
    if hprime == "exact" and not obj.symmetric_jacobian:
        raise NotImplementedError(
            "influence functions solve with the total Hessian and assume it symmetric, but the Jacobian of the "
            "first-order MAML meta-gradient, Hess L_O(theta_k) d theta_k/d lam, is not: use hprime='drop' or "
            "'gamma' (the symmetric J^T Hess L_O J), second-order MAML, or a trajectory method (dvemb_exact)")
    return lambda u: obj.hvp(lam, u, hprime)


def eval_vector(obj: MetaObjective, lam: Tensor, eval_obj: MetaObjective,
                cfg: InfluenceConfig) -> tuple[Tensor, SolveInfo]:
    """v = (damping I + H_F)^-1 grad L_eval: the single solve shared by every score."""
    b = eval_obj.mean_loss_grad(lam)
    return solve(hessian_operator(obj, lam, cfg.hprime), b, cfg.solver, cfg.damping, cfg.tol, cfg.max_iter)


def task_scores(obj: MetaObjective, lam: Tensor, v: Tensor, grads: Tensor | None = None) -> Tensor:
    """score[k] = v . g_k / M for every training task (``grads``: the per-task total gradients g_k at lam, [M, P],
    if already computed)."""
    return (obj.task_grads(lam) if grads is None else grads) @ v / obj.n_tasks


def instance_scores(obj: MetaObjective, lam: Tensor, v: Tensor, variant: str = "full") -> tuple[Tensor, Tensor]:
    """(support scores [M, S], query scores [M, Q]) = v^T d(grad F)/d(ws, wq)."""
    state = obj.state_at(lam)
    inner, model = obj.inner, obj.model
    s, q = map_chunked(lambda tk, st: inner.weight_scores(model, lam, tk, st, v, variant), (obj.tasks, state),
                       size=obj.chunk)
    tau = obj.tau.unsqueeze(1)
    return tau * s / obj.n_tasks, tau * q / obj.n_tasks


def edit_tasks(obj: MetaObjective, lam: Tensor, removed: list[int], cfg: InfluenceConfig) -> Tensor:
    """lam* + Delta lam for removing a set of tasks at once: lam* + H_F^-1 sum_k g_k / M (first-order, additive)."""
    b = obj.task_grads(lam)[removed].sum(0) / obj.n_tasks
    dlam, _ = solve(hessian_operator(obj, lam, cfg.hprime), b, cfg.solver, cfg.damping, cfg.tol, cfg.max_iter)
    return lam + dlam


def edit_instances(obj: MetaObjective, lam: Tensor, es: Tensor, eq: Tensor, cfg: InfluenceConfig) -> Tensor:
    """lam* + H_F^-1 sum_k d(grad F)/d(ws_k, wq_k)[es_k, eq_k] for removal masks es [M, S], eq [M, Q]."""
    state = obj.state_at(lam)
    inner, model = obj.inner, obj.model
    b = torch.zeros_like(lam)
    for k in sorted(set(torch.nonzero(es.any(1) | eq.any(1)).flatten().tolist())):
        t = TaskData(*(x[k] for x in obj.tasks))
        b = b + obj.tau[k] * inner.dgrad_dweights(model, lam, t, state[k], es[k].to(lam.dtype), eq[k].to(lam.dtype))
    dlam, _ = solve(hessian_operator(obj, lam, cfg.hprime), b / obj.n_tasks, cfg.solver, cfg.damping, cfg.tol,
                    cfg.max_iter)
    return lam + dlam


def direct_task_scores(obj: MetaObjective, lam: Tensor, eval_obj: MetaObjective, cfg: InfluenceConfig) -> Tensor:
    """Direct-IF: theta_k's dependence on lam ignored (J = I); Hessian (1/M) sum_k Hess_theta L_O(theta_k) + delta I."""
    model = obj.model
    thetas = obj.adapted_params(lam)
    eval_thetas = eval_obj.adapted_params(lam)
    gfun = grad(query_loss, argnums=1)

    def partial_grads(o: MetaObjective, th: Tensor) -> Tensor:
        return map_chunked(lambda t, s: gfun(model, s, t), (o.tasks, th), size=o.chunk)

    g = partial_grads(obj, thetas)
    b = partial_grads(eval_obj, eval_thetas).mean(0)

    def hvp(u: Tensor) -> Tensor:
        hk = map_chunked(lambda t, s: jvp(lambda z: gfun(model, z, t), (s,), (u,))[1], (obj.tasks, thetas),
                         size=obj.chunk)
        return obj.tau @ hk / obj.n_tasks + obj.delta * u

    v, _ = solve(hvp, b, cfg.solver, cfg.damping, cfg.tol, cfg.max_iter)
    return g @ v / obj.n_tasks
