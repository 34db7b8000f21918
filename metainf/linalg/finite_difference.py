"""Total HVPs as difference quotients of the meta-gradient, and the task and evaluation gradients in one pass.

For unrolled (second-order) MAML the total Hessian H_F is the Jacobian of the meta-gradient, so::

    H_F u = (d(lam + eps u) - d(lam)) / eps + delta u + O(eps),      d(lam) = (1/M) sum_k tau_k g_k(lam)

costs one reverse pass of the weighted task losses at lam + eps u, vmapped over tasks (``data_gradient``, i.e.
``MetaObjective.losses_and_data_grad``): the meta-gradient a trainer takes, without per-task gradients. So one
finite-difference HVP costs one meta-epoch of an unrolled trainer (``MetaObjective.value_and_grad`` is the same
pass), cheaper than a batched per-task-gradient pass (``scripts/profile_fast.py``) and than the forward-over-reverse
HVP (``MetaObjective.hvp``, about 2 meta-epochs of the per-task trainer). The finite-difference Hessian-vector product
is the one DARTS (Liu et al. 2019) uses for its second-order bilevel term. The step is
eps = sqrt(machine eps) (1 + ||lam||) / ||u||, which balances the O(eps) truncation against the O(machine eps / eps)
rounding: in float64 the product is accurate to about 1e-7 relative (``tests/test_finite_difference.py``). In float32 it
is not accurate at any step (:func:`fd_is_accurate`), so ``hvp="auto"`` (:func:`prefer_fd`) uses it in float64 only.

Only the unrolled inner problem qualifies: a proximal inner solution is accurate to its stationarity tolerance,
which a difference quotient would divide by eps, and the first-order MAML Jacobian is not symmetric (CG needs a
symmetric operator).

``task_and_eval_grads`` computes the per-task total gradients G of the training tasks and the evaluation gradient
b = grad L_eval (the mean total gradient of the evaluation tasks) in one ``vmap`` over both task sets, instead of two.
A solve whose only per-task output is G v (task scores) needs less: ``losses_and_gradients`` gives d(lam), b and the
task losses in one reverse pass of summed losses (no per-task gradients), and ``FDHessian`` records the task losses
of each HVP pass, whose differences are the directional derivatives G u of the directions CG applied it to; v lies
in their span, so G v follows (``FDHessian.projected_task_grads``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import vmap

from metainf.core.bilevel import TaskData
from metainf.core.objective import MetaObjective, check_finite
from metainf.linalg.chunked import chunks

HVP_MODES: tuple[str, ...] = ("auto", "fd", "autodiff")


def supports_fd(obj: MetaObjective) -> bool:
    """Whether finite-difference total HVPs apply: unrolled second-order MAML (see the module docstring)."""
    return not obj.inner.stationary and obj.inner.symmetric_jacobian


def fd_is_accurate(lam: Tensor) -> bool:
    """Whether a difference quotient of the meta-gradient is an accurate total HVP in ``lam``'s dtype: float64 only.

    In float32 no step works. On E3's quick Conv-4 problem (ReLU, max-pool, 200 tasks, lam_T after 500 Adam steps)
    the forward quotient at the default step (sqrt(eps) = 3.5e-4 relative) is off by 104% of ||H_F u|| (cosine 0.77
    with the autodiff HVP); the best step (1e-2, central differences) still leaves 19%: rounding dominates small
    steps, the kinks of ReLU and max-pool large ones (``python scripts/probe_fd_hvp_float32.py``). CG on it stops at
    the tolerance, with task scores at Spearman 0.91 from the autodiff ones."""
    return lam.dtype == torch.float64


def prefer_fd(obj: MetaObjective, lam: Tensor) -> bool:
    """What ``hvp="auto"`` takes: finite differences where they apply (:func:`supports_fd`) and are accurate
    (:func:`fd_is_accurate`), else the autodiff (forward-over-reverse) HVP."""
    return supports_fd(obj) and fd_is_accurate(lam)


def _check_fd(obj: MetaObjective) -> None:
    if obj.inner.stationary:
        raise NotImplementedError(
            "finite-difference total HVPs need the unrolled inner problem: a proximal inner solution is only "
            "accurate to its stationarity tolerance, which the difference quotient would amplify; use hvp='autodiff'")
    if not obj.inner.symmetric_jacobian:
        raise NotImplementedError(
            "the first-order MAML meta-gradient map has a non-symmetric Jacobian, so CG cannot solve with it: use "
            "second-order MAML or a trajectory method (dvemb_exact)")


def data_gradient_and_losses(obj: MetaObjective, lam: Tensor) -> tuple[Tensor, Tensor]:
    """(d(lam), [L_O^k(lam)]_k) with d(lam) = (1/M) sum_k tau_k g_k(lam) = D_lam (1/M) sum_k tau_k L_O^k(lam)
    (unrolled MAML): one reverse pass of the weighted task losses per chunk of ``obj.chunk`` tasks
    (``MetaObjective.losses_and_data_grad``); the task losses [M] are those of its forward pass."""
    losses, d = obj.losses_and_data_grad(lam)
    return d, losses


def data_gradient(obj: MetaObjective, lam: Tensor) -> Tensor:
    """d(lam) = (1/M) sum_k tau_k g_k(lam) (see ``data_gradient_and_losses``)."""
    return data_gradient_and_losses(obj, lam)[0]


def _fusable(obj: MetaObjective, eval_obj: MetaObjective) -> bool:
    """Whether the training and evaluation tasks can share one vmapped pass (see ``task_and_eval_grads``)."""
    return (supports_fd(obj) and eval_obj.inner is obj.inner and eval_obj.model is obj.model
            and all(a.shape[1:] == c.shape[1:] and a.dtype == c.dtype for a, c in zip(obj.tasks, eval_obj.tasks)))


def losses_and_gradients(obj: MetaObjective, eval_obj: MetaObjective, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(L [M], d [P], b [P]): the training task losses L_O^k(lam), d(lam) = (1/M) sum_k tau_k g_k(lam) and
    b = grad L_eval = the unweighted mean of the evaluation tasks' total gradients, without per-task gradients.

    When the two task sets can share a pass (as in ``task_and_eval_grads``), one reverse pass of
    (1/M) sum_k tau_k L_O^k(lam_0) + (1/E) sum_e L_O^e(lam_1) at lam_0 = lam_1 = lam gives d and b as the gradients
    with respect to the two copies; else ``data_gradient_and_losses`` and ``eval_obj.mean_loss_grad``. Raises
    ``NotImplementedError`` where d(lam) is not the gradient of the summed losses (proximal or first-order)."""
    _check_fd(obj)
    if not _fusable(obj, eval_obj):
        d, losses = data_gradient_and_losses(obj, lam)
        return losses, d, eval_obj.mean_loss_grad(lam)
    m, e = obj.n_tasks, eval_obj.n_tasks
    tasks = TaskData(*(torch.cat([a, c]) for a, c in zip(obj.tasks, eval_obj.tasks)))
    copies = torch.stack([lam.detach(), lam.detach()]).requires_grad_(True)
    which = torch.cat([torch.zeros(m, dtype=torch.long), torch.ones(e, dtype=torch.long)]).to(lam.device)
    points = copies[which]  # task i is evaluated at copy which[i]
    inner, model = obj.inner, obj.model
    losses = torch.cat([vmap(lambda t, p: inner.outer_loss(model, p, t))(TaskData(*(x[sl] for x in tasks)), points[sl])
                        for sl in chunks(m + e, obj.chunk)])
    losses = check_finite(losses, "a task loss")
    weights = torch.cat([obj.tau.to(lam.dtype) / m, torch.full((e,), 1.0 / e, dtype=lam.dtype, device=lam.device)])
    d, b = torch.autograd.grad(weights @ losses, copies)[0]
    return losses[:m].detach(), d, b


def task_and_eval_grads(obj: MetaObjective, eval_obj: MetaObjective, lam: Tensor) -> tuple[Tensor, Tensor]:
    """(G [M, P], b [P]): ``obj.task_grads(lam)`` and ``eval_obj.mean_loss_grad(lam)``, in one batched pass when
    both are unrolled second-order MAML with the same model and inner problem and tasks of the same shapes (else in
    two). b is the unweighted mean of the evaluation tasks' total gradients (their point weights apply)."""
    t, e = obj.tasks, eval_obj.tasks
    if not _fusable(obj, eval_obj):
        return obj.task_grads(lam), eval_obj.mean_loss_grad(lam)
    joint = MetaObjective(obj.model, obj.inner, TaskData(*(torch.cat([a, c]) for a, c in zip(t, e))),
                          chunk=obj.chunk)
    both = joint.task_grads(lam)  # the unrolled problem keeps no inner state: one pass of total gradients
    return both[:obj.n_tasks], both[obj.n_tasks:].mean(0)


class FDHessian:
    """u -> H_F u ~ (d(lam + eps u) - d(lam)) / eps + delta u (see the module docstring), which also records, for
    each direction u_j it was applied to, the per-task directional derivatives from the losses of the same pass::

        (G u_j)_k ~ (L_O^k(lam + eps_j u_j) - L_O^k(lam)) / eps_j = g_k . u_j + O(eps_j)

    (forward differences of the task losses; relative error about sqrt(machine eps) in float64).
    ``projected_task_grads`` turns them into G P, P the orthogonal projector onto the span of the directions: it equals
    G on that span, so for a Krylov solution v = sum_j a_j u_j the task scores G v / M need no per-task gradient pass.

    ``data_grad`` is d(lam) if known, else computed once; ``losses`` the task losses at lam (needed only for
    ``projected_task_grads``). ``rel_step`` defaults to sqrt(machine eps) of lam's dtype; eps = rel_step (1 + ||lam||)
    / ||u||. Raises ``NotImplementedError`` for a proximal or first-order inner problem."""

    def __init__(self, obj: MetaObjective, lam: Tensor, data_grad: Tensor | None = None,
                 losses: Tensor | None = None, rel_step: float | None = None) -> None:
        _check_fd(obj)
        self.obj, self.lam = obj, lam
        if data_grad is None:
            data_grad, losses = data_gradient_and_losses(obj, lam)
        self.base, self.base_losses = data_grad, losses
        step = torch.finfo(lam.dtype).eps ** 0.5 if rel_step is None else rel_step
        self.scale = step * (1.0 + float(lam.norm()))
        self.directions: list[Tensor] = []
        self.derivatives: list[Tensor] = []  # (G u_j) [M] for each direction u_j

    def __call__(self, u: Tensor) -> Tensor:
        norm = float(u.norm())
        if norm == 0.0:
            return torch.zeros_like(u)
        eps = self.scale / norm
        d, losses = data_gradient_and_losses(self.obj, self.lam + eps * u)
        if self.base_losses is not None:
            self.directions.append(u)
            self.derivatives.append((losses - self.base_losses) / eps)
        return check_finite((d - self.base) / eps + self.obj.delta * u,
                            "a finite-difference total Hessian-vector product")

    def projected_task_grads(self) -> Tensor:
        """G P [M, P]: the per-task total gradients restricted to the span of the directions applied so far
        (zero if none), from the recorded directional derivatives: G P = D U^+ with U = [u_j], D = [G u_j]."""
        if self.base_losses is None:
            raise ValueError("projected_task_grads needs the task losses at lam (pass losses=...)")
        if not self.directions:
            return torch.zeros(self.obj.n_tasks, self.lam.numel(), dtype=self.lam.dtype, device=self.lam.device)
        norms = torch.stack([u.norm() for u in self.directions])  # unit columns keep the pseudo-inverse well scaled
        u = torch.stack(self.directions, 1) / norms  # [P, k]
        return (torch.stack(self.derivatives, 1) / norms) @ torch.linalg.pinv(u)


def fd_hessian_operator(obj: MetaObjective, lam: Tensor, data_grad: Tensor | None = None,
                        rel_step: float | None = None) -> Callable[[Tensor], Tensor]:
    """u -> H_F u ~ (d(lam + eps u) - d(lam)) / eps + delta u (an ``FDHessian`` that records no task losses).

    ``data_grad`` is d(lam) = (1/M) sum_k tau_k g_k(lam) if known (e.g. ``obj.tau @ G / M``), else computed once.
    ``rel_step`` defaults to sqrt(machine eps) of lam's dtype; eps = rel_step (1 + ||lam||) / ||u||.
    Raises ``NotImplementedError`` for a proximal or first-order inner problem."""
    _check_fd(obj)
    if data_grad is None:
        data_grad = data_gradient(obj, lam)
    return FDHessian(obj, lam, data_grad, None, rel_step)
