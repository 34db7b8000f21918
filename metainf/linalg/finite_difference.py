"""Total HVPs as difference quotients of the meta-gradient, and the task and evaluation gradients in one pass.

For unrolled (second-order) MAML the total Hessian H_F is the Jacobian of the meta-gradient, so::

    H_F u = (d(lam + eps u) - d(lam)) / eps + delta u + O(eps),      d(lam) = (1/M) sum_k tau_k g_k(lam)

costs one reverse pass of the weighted task losses at lam + eps u, vmapped over tasks (``data_gradient``; d(lam) is
known from the task gradients that task-IF needs anyway): the meta-gradient a trainer needs, without per-task
gradients. In E5 (100 tasks, digits) that is about 0.5 of a meta-epoch (whose F value and per-task gradients take
two batched passes) and 0.75 of a batched per-task-gradient pass, against about 2 meta-epochs for the
forward-over-reverse HVP (``MetaObjective.hvp``). The finite-difference Hessian-vector product is the one DARTS (Liu et al.
2019) uses for its second-order bilevel term. The step is eps = sqrt(machine eps) (1 + ||lam||) / ||u||, which
balances the O(eps) truncation against the O(machine eps / eps) rounding: in float64 the product is accurate to
about 1e-7 relative (``tests/test_finite_difference.py``).

Only the unrolled inner problem qualifies: a proximal inner solution is accurate to its stationarity tolerance,
which a difference quotient would divide by eps, and the first-order MAML Jacobian is not symmetric (CG needs a
symmetric operator).

``task_and_eval_grads`` computes the per-task total gradients G of the training tasks and the evaluation gradient
b = grad L_eval (the mean total gradient of the evaluation tasks) in one ``vmap`` over both task sets, instead of two.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from metainf.core.bilevel import TaskData
from metainf.core.objective import MetaObjective, check_finite

HVP_MODES: tuple[str, ...] = ("auto", "fd", "autodiff")


def supports_fd(obj: MetaObjective) -> bool:
    """Whether finite-difference total HVPs apply: unrolled second-order MAML (see the module docstring)."""
    return not obj.inner.stationary and obj.inner.symmetric_jacobian


def _check_fd(obj: MetaObjective) -> None:
    if obj.inner.stationary:
        raise NotImplementedError(
            "finite-difference total HVPs need the unrolled inner problem: a proximal inner solution is only "
            "accurate to its stationarity tolerance, which the difference quotient would amplify; use hvp='autodiff'")
    if not obj.inner.symmetric_jacobian:
        raise NotImplementedError(
            "the first-order MAML meta-gradient map has a non-symmetric Jacobian, so CG cannot solve with it: use "
            "second-order MAML or a trajectory method (dvemb_exact)")


def data_gradient(obj: MetaObjective, lam: Tensor) -> Tensor:
    """d(lam) = (1/M) sum_k tau_k g_k(lam) = D_lam (1/M) sum_k tau_k L_O^k(lam) (unrolled second-order MAML): one
    ``torch.autograd`` reverse pass through the task losses, vmapped ``obj.chunk`` tasks at a time."""
    inner, model = obj.inner, obj.model
    point = lam.detach().requires_grad_(True)
    losses = obj.map_tasks(lambda t, s: inner.outer_loss(model, point, t))
    total = obj.tau.to(lam.dtype) @ check_finite(losses, "a task loss") / obj.n_tasks
    return torch.autograd.grad(total, point)[0]


def task_and_eval_grads(obj: MetaObjective, eval_obj: MetaObjective, lam: Tensor) -> tuple[Tensor, Tensor]:
    """(G [M, P], b [P]): ``obj.task_grads(lam)`` and ``eval_obj.mean_loss_grad(lam)``, in one batched pass when
    both are unrolled second-order MAML with the same model and inner problem and tasks of the same shapes (else in
    two). b is the unweighted mean of the evaluation tasks' total gradients (their point weights apply)."""
    t, e = obj.tasks, eval_obj.tasks
    fusable = (supports_fd(obj) and eval_obj.inner is obj.inner and eval_obj.model is obj.model
               and all(a.shape[1:] == c.shape[1:] and a.dtype == c.dtype for a, c in zip(t, e)))
    if not fusable:
        return obj.task_grads(lam), eval_obj.mean_loss_grad(lam)
    joint = MetaObjective(obj.model, obj.inner, TaskData(*(torch.cat([a, c]) for a, c in zip(t, e))),
                          chunk=obj.chunk)
    # the unrolled inner problem keeps no state: map total_grad directly (task_grads would first adapt every task)
    both = check_finite(joint.map_tasks(lambda tk, s: obj.inner.total_grad(obj.model, lam, tk, s)),
                        "a per-task total gradient")
    return both[:obj.n_tasks], both[obj.n_tasks:].mean(0)


def fd_hessian_operator(obj: MetaObjective, lam: Tensor, data_grad: Tensor | None = None,
                        rel_step: float | None = None) -> Callable[[Tensor], Tensor]:
    """u -> H_F u ~ (d(lam + eps u) - d(lam)) / eps + delta u (see the module docstring).

    ``data_grad`` is d(lam) = (1/M) sum_k tau_k g_k(lam) if known (e.g. ``obj.tau @ G / M``), else computed once.
    ``rel_step`` defaults to sqrt(machine eps) of lam's dtype; eps = rel_step (1 + ||lam||) / ||u||.
    Raises ``NotImplementedError`` for a proximal or first-order inner problem."""
    _check_fd(obj)
    base = data_gradient(obj, lam) if data_grad is None else data_grad
    step = torch.finfo(lam.dtype).eps ** 0.5 if rel_step is None else rel_step
    scale = step * (1.0 + float(lam.norm()))

    def hvp(u: Tensor) -> Tensor:
        norm = float(u.norm())
        if norm == 0.0:
            return torch.zeros_like(u)
        eps = scale / norm
        return check_finite((data_gradient(obj, lam + eps * u) - base) / eps + obj.delta * u, "a finite-difference total Hessian-vector product")

    return hvp
