"""Static baselines at the final meta-parameters: grad-dot, grad-cos, loss value, random, gradient-ascent unlearning.

Sign convention (:mod:`metainf.methods.base`): ``score[u] ~ L_eval(without u) - L_eval(with u)``, positive = helpful.

Every unit u (a task, a support point or a query point) carries a weight omega_u in the meta-objective F
(:mod:`metainf.core.objective`). Its *unit gradient* is the derivative of the meta-gradient along that weight::

    G_u = d(grad F)/d omega_u          task k: g_k / M;   point j of task k: tau_k/M * d g_k / d w_j

(``g_k`` the total gradient of task k's outer loss; for a query point ``G_u`` is the gradient of its loss through
the adaptation, divided by ``M |Q|``; for a support point it is the second-order change of the meta-gradient).
Removing u (Delta omega_u = -1) before one outer step of size eta moves lam by ``+eta G_u``, so to first order
``L_eval`` changes by ``eta <grad L_eval, G_u>``: that is the grad-dot score (eta = 1), the identity-Hessian
special case of task-IF / instance-IF and the one-checkpoint case of TracIn (dattri's "Grad-Dot").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import vmap

from metainf.core.bilevel import TaskData, query_loss
from metainf.core.objective import MetaObjective
from metainf.influence import instance_scores, task_scores
from metainf.linalg.chunked import chunks, map_chunked
from metainf.methods.base import AttributionProblem
from metainf.runtime.seeding import seeded_randn

ALL_KINDS: tuple[str, ...] = ("task", "support", "query")


def eval_gradient(problem: AttributionProblem) -> Tensor:
    """grad L_eval(lam): the total gradient of the mean evaluation query loss."""
    return problem.eval_objective.mean_loss_grad(problem.lam)


def _basis(kind: str, t: TaskData) -> tuple[Tensor, Tensor]:
    """(es, eq) unit directions for every point of ``kind`` in one task: [n, S] and [n, Q]."""
    n_s, n_q, like = t.ws.shape[-1], t.wq.shape[-1], {"dtype": t.ws.dtype, "device": t.ws.device}
    if kind == "support":
        return torch.eye(n_s, **like), torch.zeros(n_s, n_q, **like)
    return torch.zeros(n_q, n_s, **like), torch.eye(n_q, **like)


def unit_gradients(obj: MetaObjective, lam: Tensor, kind: str) -> Tensor:
    """G_u = d(grad F)/d omega_u for every unit of ``kind``: [M, P] (tasks) or [M, n, P] (points).

    Point units use the inner problem's ``dgrad_dweights`` along each basis direction (vmapped over points and
    tasks, chunked by ``obj.chunk``); memory is M * n * P numbers.
    """
    if kind == "task":
        return obj.task_grads(lam) / obj.n_tasks
    state = obj.state_at(lam)
    inner, model = obj.inner, obj.model
    first = TaskData(*(x[0] for x in obj.tasks))
    es, eq = _basis(kind, first)

    def per_task(t: TaskData, st: Tensor) -> Tensor:
        return vmap(lambda a, b: inner.dgrad_dweights(model, lam, t, st, a, b))(es, eq)

    return obj.tau[:, None, None] * map_chunked(per_task, (obj.tasks, state), size=obj.chunk) / obj.n_tasks


def masked_unit_gradient(obj: MetaObjective, lam: Tensor, kind: str, mask: Tensor) -> Tensor:
    """sum_{u in mask} G_u [P] without forming any G_u: the edit direction of removing the masked units.

    Tasks: sum_{k in mask} g_k / M. Points: G_u is linear in the weight direction (``dgrad_dweights`` is a JVP), so
    the sum over a task's masked points is one directional derivative along the task's 0/1 mask; one per task
    instead of one per point (:func:`unit_gradients` costs n times as much).
    """
    m = torch.as_tensor(mask, dtype=torch.bool, device=obj.tasks.ws.device)
    if kind == "task":
        return obj.task_grads(lam)[m].sum(0) / obj.n_tasks
    state = obj.state_at(lam)
    inner, model = obj.inner, obj.model
    direction = m.to(obj.tasks.ws.dtype)
    es = direction if kind == "support" else torch.zeros_like(obj.tasks.ws)
    eq = direction if kind == "query" else torch.zeros_like(obj.tasks.wq)

    def per_task(t: TaskData, st: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return inner.dgrad_dweights(model, lam, t, st, a, b)

    per = map_chunked(per_task, (obj.tasks, state, es, eq), size=obj.chunk)
    return (obj.tau[:, None] * per).sum(0) / obj.n_tasks


@dataclass
class GradDot:
    """score[u] = <grad L_eval(lam), G_u> at the final lam (first-order effect of removing u; eta = 1).

    Tasks: <g_eval, g_k> / M. Points: the same inner product with the point's unit gradient, computed without
    forming G_u (``metainf.influence.instance_scores`` with v = g_eval).
    """

    name: str = "grad_dot"
    kinds: tuple[str, ...] = ALL_KINDS
    needs_trajectory: bool = False

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        v = eval_gradient(problem)
        if kind == "task":
            return task_scores(problem.objective, problem.lam, v)
        support, query = instance_scores(problem.objective, problem.lam, v, "full")
        return support if kind == "support" else query


@dataclass
class GradCos:
    """score[u] = cos(grad L_eval(lam), G_u): grad-dot with both vectors normalised (0 for a zero G_u).

    Only the direction matters, so the ranking ignores gradient magnitudes; the values are not a predicted loss
    change. Point units form their unit gradients explicitly (see :func:`unit_gradients`).
    """

    name: str = "grad_cos"
    kinds: tuple[str, ...] = ALL_KINDS
    needs_trajectory: bool = False

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        v = eval_gradient(problem)
        g = unit_gradients(problem.objective, problem.lam, kind)
        tiny = torch.finfo(v.dtype).tiny
        return (g @ v) / (g.norm(dim=-1) * v.norm()).clamp_min(tiny)


def _point_losses(obj: MetaObjective, lam: Tensor, kind: str) -> Tensor:
    """Cross-entropy of every support / query point at its task's adapted parameters theta_k(lam): [M, n]."""
    thetas = obj.adapted_params(lam)
    model = obj.model

    def losses(t: TaskData, th: Tensor) -> Tensor:
        x, y = (t.xs, t.ys) if kind == "support" else (t.xq, t.yq)
        return F.cross_entropy(model(th, x), y, reduction="none")

    return map_chunked(losses, (obj.tasks, thetas), size=obj.chunk)


@dataclass
class LossValue:
    """Loss-value ranking: score[u] = -loss(u), so a unit the trained model fits badly ranks as harmful.

    Task k: its post-adaptation query loss L_O^k(lam). Support / query point: its cross-entropy at the adapted
    parameters theta_k(lam) (the support loss is the one the inner problem fits). The sign choice encodes the usual
    heuristic that high-loss data (e.g. mislabelled points) hurt; the values are not a predicted loss change.
    """

    name: str = "loss"
    kinds: tuple[str, ...] = ALL_KINDS
    needs_trajectory: bool = False

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        if kind == "task":
            return -problem.objective.task_losses(problem.lam)
        return -_point_losses(problem.objective, problem.lam, kind)


@dataclass
class Random:
    """score[u] ~ N(0, 1), i.i.d., from ``torch.Generator().manual_seed(problem.seed)``: the chance baseline."""

    name: str = "random"
    kinds: tuple[str, ...] = ALL_KINDS
    needs_trajectory: bool = False

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        gen = torch.Generator().manual_seed(problem.seed)
        return seeded_randn(*problem.shape(kind), generator=gen, dtype=problem.lam.dtype, device=problem.lam.device)


@dataclass
class GradientAscentUnlearning:
    """Gradient-ascent unlearning: ``steps`` ascent steps on the unit's loss from lam, then the change of L_eval.

    The unit's loss is its share of the meta-objective, l_u(lam) = dF/d omega_u (task k: L_O^k / M; point j:
    tau_k/M * dL_O^k/dw_j, a query point's own loss / (M |Q|) and, for a support point, its first-order
    contribution to F through the adaptation). Its gradient is the unit gradient G_u(lam), so::

        lam_0 = lam,   lam_{i+1} = lam_i + lr * G_u(lam_i)          (i < steps)
        score[u] = L_eval(lam_steps) - L_eval(lam)

    Each step is the outer gradient step of size ``lr`` on F with u's weight lowered by one, i.e. "unlearning"
    u; to first order score = steps * lr * grad-dot score. Positive: ascending on u raises the evaluation loss,
    so u helps. Units are batched with ``vmap`` (``obj.chunk`` units at a time). A proximal inner problem is
    re-solved at every visited point (the unit's task and every evaluation task) by ``newton_steps`` Newton
    steps warm-started from the solution at the previous point (quadratic convergence: the points are close).
    Cost: units x steps x (1 + evaluation tasks) inner solves, far more than the gradient-based baselines.
    """

    steps: int = 5
    lr: float = 1.0
    newton_steps: int = 2
    name: str = "ga_unlearn"
    kinds: tuple[str, ...] = ALL_KINDS
    needs_trajectory: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.newton_steps < 1:
            raise ValueError(f"ga_unlearn needs steps >= 1, lr > 0 and newton_steps >= 1, got steps={self.steps}, "
                             f"lr={self.lr}, newton_steps={self.newton_steps}")

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        obj, lam, ev = problem.objective, problem.lam, problem.eval_objective
        inner, model, m = obj.inner, obj.model, obj.n_tasks
        state, ev_state = obj.state_at(lam), ev.state_at(lam)
        baseline = ev.mean_loss(lam)

        def eval_loss(lam_u: Tensor) -> Tensor:
            def one(t: TaskData, st: Tensor) -> Tensor:
                return query_loss(model, inner.resolve(model, lam_u, t, st, self.newton_steps), t)
            return map_chunked(one, (ev.tasks, ev_state), size=ev.chunk).mean()

        def unlearn(t: TaskData, st: Tensor, es: Tensor, eq: Tensor, scale: Tensor) -> Tensor:
            lam_u = lam
            for _ in range(self.steps):
                st = inner.resolve(model, lam_u, t, st, self.newton_steps)
                g = (inner.total_grad(model, lam_u, t, st) if kind == "task"
                     else inner.dgrad_dweights(model, lam_u, t, st, es, eq))
                lam_u = lam_u + self.lr * scale * g
            return eval_loss(lam_u)

        shape = problem.shape(kind)
        if kind == "task":  # es / eq unused: the direction is g_k
            task_of = torch.arange(m)
            es, eq = obj.tasks.ws, obj.tasks.wq
            scale = torch.full((m,), 1.0 / m, dtype=lam.dtype, device=lam.device)
        else:
            task_of = torch.arange(m).repeat_interleave(shape[1])
            es, eq = (b.repeat(m, 1) for b in _basis(kind, TaskData(*(x[0] for x in obj.tasks))))
            scale = obj.tau[task_of] / m
        out = []
        for sl in chunks(len(task_of), obj.chunk):
            idx = task_of[sl]
            out.append(vmap(unlearn)(TaskData(*(x[idx] for x in obj.tasks)), state[idx], es[sl], eq[sl], scale[sl]))
        return (torch.cat(out) - baseline).reshape(shape)
