"""Trajectory-based attribution of stochastic meta-training: TracIn, TracInCP and Data Value Embedding (DVEmb).

The recorded run (``metainf.train.train_stochastic``) takes, at step t with meta-batch B_t (slots s, task k_s)::

    lam_{t+1} = U_t(lam_t, g_t),    g_t = (1/|B_t|) sum_{s in B_t} tau_{k_s} g_{k_s}(lam_t; ws, wq) + delta lam_t

(U_t = SGD ``lam - lr_t g`` or the Adam update). A unit u (task k, or support / query point j of task k) with
weight omega_u changes g_t in every slot of its task; removing it (omega_u -> 0) changes g_t to first order by
-(1/|B_t|) r_u(lam_t), with the per-slot unit derivative against a vector v::

    r_u(lam; v) = omega_u v^T d(tau_k g_k(lam))/d omega_u       (task: tau_k v . g_k;  points: ``weight_scores``)

Sign convention (``metainf/methods/base.py``): score[u] ~ L_eval(trained without u) - L_eval(trained with u), positive =
helpful, L_eval = ``problem.eval_objective.mean_loss``. Every method returns per-step contributions ``step_scores`` [T,
*shape] (summed over the slots of each step, so duplicate slots add) whose sum over steps is its score::

    TracIn      step t:  (lr_t/|B_t|) sum_{s: k_s = k} r_u(lam_t; grad L_eval(lam_t))
    TracInCP    step t:  (lr_t/|B_t|) sum_{s: k_s = k} r_u(lam_c; grad L_eval(lam_c)),  lam_c the checkpoint of
                         t's interval (visit counts per interval enter through the steps that visit u)
    DVEmbExact  step t:  (1/|B_t|) sum_{s: k_s = k} r_u(lam_t; e_t),  e_t = -(d lam_T/d g_t)^T grad L_eval(lam_T)
                         by an adjoint sweep through the exact update maps (SGD: e_t = lr_t a_{t+1},
                         a_t = a_{t+1} - Hess F_{B_t}(lam_t) e_t)
    DVEmbFisher step t:  same, with the batch total Hessian replaced by the empirical Fisher of the per-slot
                         meta-gradients, sum_s (tau g_s)(tau g_s)^T / |B_t|, in an optional random projection

DVEmbExact is the first-order unrolled change d L_eval(lam_T)/d omega_u * (-omega_u), all occurrences summed, and
matches ``metainf.groundtruth.trajectory`` to first order. TracIn, TracInCP and DVEmbFisher treat an Adam run as SGD
with the raw meta-gradients (the "SGD proxy" of the DVEmb paper); DVEmbExact differentiates through the Adam update and
its moments.

First-order MAML (``UnrolledInner(first_order=True)``): the meta-gradient g_k = grad_theta L_O(theta_K(lam; ws))
is differentiated as a map of (lam, ws, wq), with theta_K the true adapted parameter, so
r_u for a support point is omega_u v^T Hess L_O(theta_K) d theta_K/d ws_j (not zero), and the adjoint step of
DVEmbExact uses the transpose of the non-symmetric Jacobian, a <- a - J_{B_t}(lam_t)^T e_t with
J_{B_t} = D_lam g_t = (1/|B_t|) sum_s tau Hess L_O(theta_K) d theta_K/d lam + delta I (``MetaObjective.grad_vjp``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise

import torch
from torch import Tensor
from torch.func import vjp

from metainf.core.objective import MetaObjective
from metainf.core.problem import UNIT_KINDS, AttributionProblem, check_kind
from metainf.groundtruth.trajectory import require_trajectory, trajectory_states
from metainf.influence import instance_scores
from metainf.methods.base import AttributionMethod
from metainf.methods.registry import get_method
from metainf.methods.trak import gaussian_projection
from metainf.train import batch_objective, optimizer_step


def unit_derivatives(obj: MetaObjective, lam: Tensor, v: Tensor, kinds: tuple[str, ...],
                     grads: Tensor | None = None) -> dict[str, Tensor]:
    """r_u(lam; v) for every unit of every task (slot) of ``obj``: [n] for tasks, [n, S] / [n, Q] for points.

    ``grads`` may pass the precomputed per-task meta-gradients ``obj.task_grads(lam)``.
    """
    out: dict[str, Tensor] = {}
    if "task" in kinds:
        out["task"] = obj.tau * ((obj.task_grads(lam) if grads is None else grads) @ v)
    if "support" in kinds or "query" in kinds:
        s, q = instance_scores(obj, lam, v, "full")  # tau v^T dg/dw / n
        out["support"], out["query"] = s * obj.n_tasks * obj.tasks.ws, q * obj.n_tasks * obj.tasks.wq
    return out


def _zeros(problem: AttributionProblem, kinds: tuple[str, ...], n_steps: int) -> dict[str, Tensor]:
    lam = problem.lam
    return {k: torch.zeros(n_steps, *problem.shape(k), dtype=lam.dtype, device=lam.device) for k in kinds}


def _add(out: dict[str, Tensor], t: int, idx: list[int], r: dict[str, Tensor], factor: float) -> None:
    """out[kind][t, k_s] += factor * r[kind][s] for every slot s of step t."""
    for kind, values in r.items():
        if kind in out:
            out[kind][t].index_add_(0, torch.tensor(idx, device=out[kind].device), factor * values)


@dataclass(kw_only=True)
class _StepMethod:
    """Shared plumbing: ``score`` = ``step_scores`` summed over steps; one sweep serves both point kinds."""

    kinds: tuple[str, ...] = UNIT_KINDS
    needs_trajectory: bool = True
    _cache: dict = field(default_factory=dict, repr=False)

    def _sweep(self, problem: AttributionProblem, kinds: tuple[str, ...]) -> dict[str, Tensor]:
        raise NotImplementedError

    def step_scores(self, problem: AttributionProblem, kind: str) -> Tensor:
        """Per-step contributions [T, *problem.shape(kind)]; their sum over steps is the score."""
        check_kind(kind)
        require_trajectory(problem)
        kinds = ("task",) if kind == "task" else ("support", "query")
        if self._cache.get("problem") is not problem or kind not in self._cache["scores"]:
            self._cache = {"problem": problem, "scores": self._sweep(problem, kinds)}
        return self._cache["scores"][kind]

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        return self.step_scores(problem, kind).sum(0)


@dataclass(kw_only=True)
class TracIn(_StepMethod):
    """TracIn at the use step: sum over the steps t visiting u of (lr_t/|B_t|) r_u(lam_t; grad L_eval(lam_t)).

    Needs lam_t at every step; missing ones are recomputed by replaying the recorded schedule.
    """

    name: str = "tracin"

    def _sweep(self, problem: AttributionProblem, kinds: tuple[str, ...]) -> dict[str, Tensor]:
        traj, lams = problem.trajectory, trajectory_states(problem).lams
        out = _zeros(problem, kinds, len(traj.schedule))
        for t, idx in enumerate(traj.schedule):
            v = problem.eval_objective.mean_loss_grad(lams[t])
            _add(out, t, idx, unit_derivatives(batch_objective(problem.objective, idx), lams[t], v, kinds),
                 traj.lrs[t] / len(idx))
        return out


@dataclass(kw_only=True)
class TracInCP(_StepMethod):
    """TracInCP over the recorded checkpoints: sum_c sum_{t in interval c} (lr_t/|B_t|) n_t(u) r_u(lam_c; grad
    L_eval(lam_c)), n_t(u) = visits of u's task at step t.

    Checkpoints are the recorded steps (``interval``: only those that are multiples of it, plus 0 and T); interval
    [c_i, c_{i+1}) uses the checkpoint at its ``at="end"`` (c_{i+1}, TracIn's epoch-end checkpoints) or
    ``at="start"`` (c_i). With a constant lr this is sum_c lr n_c(u)/|B| r_u(lam_c; ...).
    """

    interval: int | None = None
    at: str = "end"
    name: str = "tracin_cp"

    def checkpoints(self, problem: AttributionProblem) -> list[tuple[int, range]]:
        """(index into ``trajectory.lams`` of the checkpoint, the steps it stands for) per interval."""
        if self.at not in ("start", "end"):
            raise ValueError(f"TracInCP 'at' must be 'start' or 'end', got {self.at!r}")
        steps = require_trajectory(problem).steps
        grid = [s for s in steps if s in (0, steps[-1]) or self.interval is None or s % self.interval == 0]
        return [(steps.index(b if self.at == "end" else a), range(a, b)) for a, b in pairwise(grid)]

    def _sweep(self, problem: AttributionProblem, kinds: tuple[str, ...]) -> dict[str, Tensor]:
        traj, obj = problem.trajectory, problem.objective
        out = _zeros(problem, kinds, len(traj.schedule))
        for c, steps in self.checkpoints(problem):
            lam = traj.lams[c]
            r = unit_derivatives(obj, lam, problem.eval_objective.mean_loss_grad(lam), kinds)
            for t in steps:
                idx = traj.schedule[t]
                _add(out, t, idx, {k: v[idx] for k, v in r.items()}, traj.lrs[t] / len(idx))
        return out


@dataclass(kw_only=True)
class DVEmbExact(_StepMethod):
    """DVEmb with the exact unrolled Jacobians: an adjoint sweep backward through the recorded outer updates.

    Adjoint state (a, a_m1, a_m2) of (lam_{t+1}, m1_{t+1}, m2_{t+1}), starting from (grad L_eval(lam_T), 0, 0).
    At step t the vjp of U_t with respect to (m1_t, m2_t, g_t) gives the new moment adjoints and -e_t; the step's
    contribution is (1/|B_t|) sum_s r_u(lam_t; e_t) and a <- a - J_t^T e_t with J_t = D_lam g_t(lam_t) the
    Jacobian of the batch meta-gradient map: the batch total Hessian by ``MetaObjective.hvp`` (exact, symmetric),
    or for first-order MAML, whose J_t is not symmetric, its transpose by ``MetaObjective.grad_vjp``. For SGD
    e_t = lr_t a_{t+1}. The result is exactly -omega_u d L_eval(lam_T)/d omega_u over all occurrences of u.
    """

    name: str = "dvemb_exact"

    def _sweep(self, problem: AttributionProblem, kinds: tuple[str, ...]) -> dict[str, Tensor]:
        obj, traj = problem.objective, problem.trajectory
        optimizer = problem.train_config.get("optimizer", "sgd")
        states = trajectory_states(problem)
        out = _zeros(problem, kinds, len(traj.schedule))
        a = problem.eval_objective.mean_loss_grad(states.lams[-1])
        a_m1, a_m2 = torch.zeros_like(a), torch.zeros_like(a)
        for t in reversed(range(len(traj.schedule))):
            idx, lr, lam = traj.schedule[t], traj.lrs[t], states.lams[t]
            sub = batch_objective(obj, idx)
            if optimizer == "adam":
                m1, m2, g = states.m1[t], states.m2[t], sub.grad(lam)
            else:
                m1 = m2 = g = torch.zeros_like(lam)
            _, step_vjp = vjp(partial(optimizer_step, optimizer, lam, lr=lr, t=t), m1, m2, g)  # in (m1, m2, g)
            a_m1, a_m2, a_g = step_vjp((a, a_m1, a_m2))
            e = -a_g
            _add(out, t, idx, unit_derivatives(sub, lam, e, kinds), 1.0 / len(idx))
            a = a - (sub.hvp(lam, e) if sub.symmetric_jacobian else sub.grad_vjp(lam, e))
        return out


@dataclass(kw_only=True)
class DVEmbFisher(_StepMethod):
    """Paper-faithful DVEmb (Wang et al. 2024, Thm 2 / Algorithm 1) as a test-side sweep over the meta-batches.

    w_T = P grad L_eval(lam_T); backward over t: contribution (1/|B_t|) sum_s r_u(lam_t; lr_t P^T w_{t+1}), then
    w_t = (1 - lr_t delta) w_{t+1} - (lr_t/|B_t|) sum_s (P G_s)(P G_s)^T w_{t+1}, G_s = tau_{k_s} g_{k_s}(lam_t):
    the empirical Fisher of the per-task meta-gradients replaces the batch Hessian (the L2 term is kept exactly).
    This equals the embedding form DVEmb^(t)(u) = (I - M^(t)) P u_t(u) scored against P grad L_eval(lam_T).
    ``proj_dim``: Gaussian JL projection P [proj_dim, n_params] (entries N(0, 1/proj_dim), seed ``seed`` or
    ``problem.seed``); None = no projection (P = I).
    """

    proj_dim: int | None = None
    seed: int | None = None
    name: str = "dvemb_fisher"

    def _projection(self, problem: AttributionProblem) -> Tensor | None:
        if self.proj_dim is None:
            return None
        lam = problem.lam
        return gaussian_projection(lam.numel(), self.proj_dim, problem.seed if self.seed is None else self.seed,
                                   lam.dtype, lam.device)

    def _sweep(self, problem: AttributionProblem, kinds: tuple[str, ...]) -> dict[str, Tensor]:
        obj, traj = problem.objective, problem.trajectory
        lams = trajectory_states(problem).lams
        proj = self._projection(problem)
        out = _zeros(problem, kinds, len(traj.schedule))
        w = problem.eval_objective.mean_loss_grad(lams[-1])
        w = w if proj is None else proj @ w
        for t in reversed(range(len(traj.schedule))):
            idx, lr, lam = traj.schedule[t], traj.lrs[t], lams[t]
            sub = batch_objective(obj, idx)
            grads = sub.task_grads(lam)
            e = lr * (w if proj is None else proj.T @ w)
            _add(out, t, idx, unit_derivatives(sub, lam, e, kinds, grads), 1.0 / len(idx))
            pg = sub.tau[:, None] * grads
            pg = pg if proj is None else pg @ proj.T
            w = (1 - lr * obj.delta) * w - (lr / len(idx)) * pg.T @ (pg @ w)
        return out


def phase_contributions(problem: AttributionProblem, kind: str, method: str | AttributionMethod = "dvemb_exact",
                        phases: int = 3) -> Tensor:
    """Each unit's score split by training phase: [phases, *shape], the steps cut into ``phases`` contiguous,
    nearly equal parts (early / middle / late thirds by default); the phases sum to the method's score.

    ``method``: a registry name or an instance of one of this module's methods (anything with ``step_scores``).
    """
    m = get_method(method) if isinstance(method, str) else method
    if not hasattr(m, "step_scores"):
        raise ValueError(f"method {m.name!r} has no per-step contributions: use tracin, tracin_cp, dvemb_exact "
                         "or dvemb_fisher")
    steps = m.step_scores(problem, kind)
    return torch.stack([part.sum(0) for part in torch.tensor_split(steps, phases)])
