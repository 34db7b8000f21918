"""Task-IF, the inverse-Hessian solvers and the model edit against a bilevel problem solved in closed form (float64).

The library's losses are hard-wired to cross-entropy (``metainf.core.bilevel.weighted_ce``). ``SquaredErrorAsCE`` makes
that cross-entropy *exactly* a squared error, so the real code path (``MetaObjective``, ``UnrolledInner``,
``ProximalInner``, ``train_converged``, ``eval_vector``, ``task_scores``, ``edit_tasks``, ``solvers.solve``,
``loo.retrain``) runs on a quadratic problem: for input row ``[x, t]`` and parameters ``w`` it returns the two logits
``[q, log(2 - e^q)]`` with ``q = -(w.x - t)^2 / 2``, whose log-sum-exp is ``log 2`` for every ``w``, so

    ce(logits, 0) = -q + log 2 = (w.x - t)^2 / 2 + log 2.

Closed form. Per task, with point weights w_j, L_S(theta) = theta^T A theta / 2 - b^T theta + const where
A = (1/|S|) sum_j w_j x_j x_j^T, b = (1/|S|) sum_j w_j t_j x_j (likewise C, d for the query set). Both inner
problems are affine in lam, theta_k = P_k lam + c_k:

    unrolled (K SGD steps, lr a):   P = (I - a A)^K,              c = sum_{i<K} (I - a A)^i a b
    proximal (beta):                P = beta (A + beta I)^-1,     c = (A + beta I)^-1 b

so L_O^k(lam) is quadratic with Hessian H_k = P^T C P and gradient g_k = P^T (C theta_k - d), and

    F(lam) = (1/M) sum_k tau_k L_O^k(lam) + delta/2 ||lam||^2,     H_F = (1/M) sum_k tau_k H_k + delta I,
    lam*(tau) = H_F^-1 (1/M) sum_k tau_k P_k^T (d_k - C_k c_k).

Scaling task k's weight to tau_k = 1 - eps gives the exact solution lam*(eps) and the exact change
Delta(eps) = L_eval(lam*(eps)) - L_eval(lam*). Its first-order term is eps * s_k with
s_k = grad L_eval^T H_F^-1 g_k / M, the task-IF score (sign convention of DESIGN.md: positive = task helps).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from metainf.core.bilevel import ProximalInner, TaskData, UnrolledInner
from metainf.core.models import FlatModel
from metainf.core.objective import MetaObjective
from metainf.groundtruth.converged import retrain
from metainf.influence import InfluenceConfig, edit_instances, edit_tasks, eval_vector, task_scores
from metainf.linalg.solvers import solve
from metainf.train import train_converged

DT = torch.float64
D, N_S, N_Q, M_TRAIN, M_EVAL, DELTA = 4, 3, 4, 6, 4, 0.05
INNERS = {
    "unrolled": lambda: UnrolledInner(steps=2, lr=0.15),
    "proximal": lambda: ProximalInner(beta=1.5, newton_steps=2, inner_solver="dense"),
}


class SquaredErrorAsCE(nn.Module):
    """Linear regression whose cross-entropy on label 0 equals (w.x - t)^2 / 2 + log 2 exactly.

    Input rows are ``[x_1 .. x_D, t]`` (the regression target rides along as the last feature).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        q = -0.5 * (x[..., :-1] @ self.w - x[..., -1]) ** 2
        return torch.stack([q, torch.log(2.0 - torch.exp(q))], dim=-1)


def make_tasks(n_tasks: int, seed: int) -> TaskData:
    """Regression tasks t = x . w_k + noise with a task-specific w_k; all labels 0, all point weights 1."""
    g = torch.Generator().manual_seed(seed)

    def rows(n: int, w: Tensor) -> Tensor:
        x = torch.randn(n, D, generator=g, dtype=DT)
        t = x @ w + 0.3 * torch.randn(n, generator=g, dtype=DT)
        return torch.cat([x, t[:, None]], dim=1)

    ws = [torch.randn(D, generator=g, dtype=DT) * 0.7 + 0.5 for _ in range(n_tasks)]
    return TaskData(
        xs=torch.stack([rows(N_S, w) for w in ws]), ys=torch.zeros(n_tasks, N_S, dtype=torch.long),
        ws=torch.ones(n_tasks, N_S, dtype=DT),
        xq=torch.stack([rows(N_Q, w) for w in ws]), yq=torch.zeros(n_tasks, N_Q, dtype=torch.long),
        wq=torch.ones(n_tasks, N_Q, dtype=DT),
    )


@dataclass
class ClosedForm:
    """theta_k = P_k lam + c_k and L_O^k = theta^T C_k theta / 2 - d_k^T theta + e_k, for every task."""

    p: Tensor  # [M, D, D]
    c: Tensor  # [M, D]
    cq: Tensor  # [M, D, D]
    dq: Tensor  # [M, D]
    e: Tensor  # [M]

    @classmethod
    def of(cls, tasks: TaskData, inner: UnrolledInner | ProximalInner) -> ClosedForm:
        ps, cs, cqs, dqs, es = [], [], [], [], []
        eye = torch.eye(D, dtype=DT)
        for k in range(tasks.xs.shape[0]):
            xs, ts, xq, tq = tasks.xs[k, :, :-1], tasks.xs[k, :, -1], tasks.xq[k, :, :-1], tasks.xq[k, :, -1]
            a = xs.T @ (tasks.ws[k, :, None] * xs) / N_S
            b = xs.T @ (tasks.ws[k] * ts) / N_S
            if isinstance(inner, UnrolledInner):
                step = eye - inner.lr * a
                p, c = eye.clone(), torch.zeros(D, dtype=DT)
                for _ in range(inner.steps):
                    p, c = step @ p, step @ c + inner.lr * b
            else:
                ainv = torch.linalg.inv(a + inner.beta * eye)
                p, c = inner.beta * ainv, ainv @ b
            ps.append(p)
            cs.append(c)
            cqs.append(xq.T @ (tasks.wq[k, :, None] * xq) / N_Q)
            dqs.append(xq.T @ (tasks.wq[k] * tq) / N_Q)
            es.append((tasks.wq[k] * (0.5 * tq**2 + torch.log(torch.tensor(2.0, dtype=DT)))).sum() / N_Q)
        return cls(*(torch.stack(z) for z in (ps, cs, cqs, dqs, es)))

    def thetas(self, lam: Tensor) -> Tensor:
        return torch.einsum("kij,j->ki", self.p, lam) + self.c

    def losses(self, lam: Tensor) -> Tensor:
        th = self.thetas(lam)
        return 0.5 * torch.einsum("ki,kij,kj->k", th, self.cq, th) - (self.dq * th).sum(1) + self.e

    def grads(self, lam: Tensor) -> Tensor:
        """g_k = P_k^T (C_k theta_k - d_k), [M, D]."""
        r = torch.einsum("kij,kj->ki", self.cq, self.thetas(lam)) - self.dq
        return torch.einsum("kji,kj->ki", self.p, r)

    def hessians(self) -> Tensor:
        """H_k = P_k^T C_k P_k, [M, D, D]."""
        return torch.einsum("kji,kjl,klm->kim", self.p, self.cq, self.p)

    def hessian_f(self, tau: Tensor, delta: float) -> Tensor:
        return torch.einsum("k,kij->ij", tau, self.hessians()) / len(tau) + delta * torch.eye(D, dtype=DT)

    def optimum(self, tau: Tensor, delta: float) -> Tensor:
        """lam*(tau) = H_F^-1 (1/M) sum_k tau_k P_k^T (d_k - C_k c_k)."""
        r = torch.einsum("kji,kj->ki", self.p, self.dq - torch.einsum("kij,kj->ki", self.cq, self.c))
        return torch.linalg.solve(self.hessian_f(tau, delta), tau @ r / len(tau))


@dataclass
class Problem:
    obj: MetaObjective
    ev: MetaObjective
    cf: ClosedForm
    cf_eval: ClosedForm
    lam: Tensor  # the closed-form optimum lam*

    def eval_loss(self, lam: Tensor) -> Tensor:
        return self.cf_eval.losses(lam).mean()

    def exact_change(self, k: int, eps: float) -> float:
        """Delta(eps) = L_eval(lam*(tau_k = 1 - eps)) - L_eval(lam*), exactly."""
        tau = torch.ones(M_TRAIN, dtype=DT)
        tau[k] = 1.0 - eps
        return float(self.eval_loss(self.cf.optimum(tau, DELTA)) - self.eval_loss(self.lam))

    def closed_form_scores(self) -> Tensor:
        """s_k = grad L_eval^T H_F^-1 g_k / M."""
        h = self.cf.hessian_f(torch.ones(M_TRAIN, dtype=DT), DELTA)
        v = torch.linalg.solve(h, self.cf_eval.grads(self.lam).mean(0))
        return self.cf.grads(self.lam) @ v / M_TRAIN


def make_problem(name: str) -> Problem:
    model = FlatModel.wrap(SquaredErrorAsCE(D))
    inner = INNERS[name]()
    tr, te = make_tasks(M_TRAIN, seed=0), make_tasks(M_EVAL, seed=1)
    obj = MetaObjective(model, inner, tr, delta=DELTA, chunk=None)
    ev = MetaObjective(model, inner, te, chunk=None)
    cf, cfe = ClosedForm.of(tr, inner), ClosedForm.of(te, inner)
    return Problem(obj, ev, cf, cfe, cf.optimum(torch.ones(M_TRAIN, dtype=DT), DELTA))


@pytest.fixture(params=sorted(INNERS), scope="module")
def prob(request: pytest.FixtureRequest) -> Problem:
    return make_problem(request.param)


def close(a: Tensor, b: Tensor, tol: float) -> bool:
    return float((a - b).abs().max()) <= tol * (1.0 + float(b.abs().max()))


def test_loss_is_exactly_squared_error() -> None:
    model = FlatModel.wrap(SquaredErrorAsCE(D))
    x = torch.randn(50, D + 1, dtype=DT)
    w = torch.randn(D, dtype=DT) * 3
    ce = torch.nn.functional.cross_entropy(model(w, x), torch.zeros(50, dtype=torch.long), reduction="none")
    want = 0.5 * (x[:, :-1] @ w - x[:, -1]) ** 2 + torch.log(torch.tensor(2.0, dtype=DT))
    assert close(ce, want, 1e-13)


def test_objective_matches_closed_form(prob: Problem) -> None:
    """Adapted parameters, per-task losses, total gradients and the dense total Hessian at an arbitrary lam."""
    lam = torch.linspace(-0.7, 0.9, D, dtype=DT)
    ones = torch.ones(M_TRAIN, dtype=DT)
    assert close(prob.obj.adapted_params(lam), prob.cf.thetas(lam), 1e-10)
    assert close(prob.obj.task_losses(lam), prob.cf.losses(lam), 1e-10)
    assert close(prob.obj.task_grads(lam), prob.cf.grads(lam), 1e-10)
    assert close(prob.obj.dense_hessian(lam), prob.cf.hessian_f(ones, DELTA), 1e-9)


def test_train_converged_reaches_closed_form_optimum(prob: Problem) -> None:
    fit = train_converged(prob.obj, torch.zeros(D, dtype=DT), tol=1e-11, max_iter=200)
    assert fit.converged
    assert close(fit.lam, prob.lam, 1e-9)


@pytest.mark.parametrize("solver", ["cg", "dense"])
def test_task_if_equals_closed_form_first_order(prob: Problem, solver: str) -> None:
    """task_scores(eval_vector(...)) = grad L_eval^T H_F^-1 g_k / M = dDelta/deps at eps = 0, to 1e-8."""
    v, info = eval_vector(prob.obj, prob.lam, prob.ev, InfluenceConfig(solver=solver, tol=1e-12))
    scores = task_scores(prob.obj, prob.lam, v)
    want = prob.closed_form_scores()
    assert float((scores - want).abs().max()) <= 1e-8
    assert float(want.abs().max()) > 1e-3  # the scores are not trivially zero
    assert info.rel_residual <= 1e-10


def test_dense_and_cg_solvers_agree(prob: Problem) -> None:
    b = prob.ev.mean_loss_grad(prob.lam)
    def hvp(u: Tensor) -> Tensor:
        return prob.obj.hvp(prob.lam, u)

    x_cg, _ = solve(hvp, b, "cg", tol=1e-12)
    x_dense, info_dense = solve(hvp, b, "dense")
    assert float((x_cg - x_dense).norm() / x_dense.norm()) <= 1e-6
    assert info_dense.min_eigenvalue is not None and info_dense.min_eigenvalue > DELTA * 0.99  # PD: H_k PSD + delta I
    # damping shifts the solve exactly: (damping I + H_F)^-1 b
    h = prob.cf.hessian_f(torch.ones(M_TRAIN, dtype=DT), DELTA) + 0.3 * torch.eye(D, dtype=DT)
    x_damped, _ = solve(hvp, b, "cg", damping=0.3, tol=1e-12)
    assert close(x_damped, torch.linalg.solve(h, b), 1e-8)


def test_edit_tasks_is_the_closed_form_linearisation(prob: Problem) -> None:
    """edit_tasks = lam* + H_F^-1 sum_{k in R} g_k / M (the first-order prediction of the leave-R-out optimum)."""
    removed = [1, 4]
    h = prob.cf.hessian_f(torch.ones(M_TRAIN, dtype=DT), DELTA)
    want = prob.lam + torch.linalg.solve(h, prob.cf.grads(prob.lam)[removed].sum(0) / M_TRAIN)
    for solver in ("cg", "dense"):
        edited = edit_tasks(prob.obj, prob.lam, removed, InfluenceConfig(solver=solver, tol=1e-12))
        assert close(edited, want, 1e-8)


def test_edit_instances_is_the_closed_form_linearisation(prob: Problem) -> None:
    """edit_instances = lam* - d lam*/d eps at eps = 0, where the removed points' weights are 1 - eps: the first-order
    prediction of the optimum without them. The derivative comes from the closed form (the point weights enter A, b,
    C and d), by a central difference in eps; one support point and one query point are removed, in other tasks."""
    es = torch.zeros(M_TRAIN, N_S, dtype=torch.bool)
    eq = torch.zeros(M_TRAIN, N_Q, dtype=torch.bool)
    es[1, 0] = eq[3, 2] = True
    tasks, ones = prob.obj.tasks, torch.ones(M_TRAIN, dtype=DT)

    def optimum(eps: float) -> Tensor:
        weighted = tasks._replace(ws=tasks.ws - eps * es.to(DT), wq=tasks.wq - eps * eq.to(DT))
        return ClosedForm.of(weighted, prob.obj.inner).optimum(ones, DELTA)

    h = 1e-5
    want = prob.lam + (optimum(h) - optimum(-h)) / (2 * h)
    assert float((want - prob.lam).abs().max()) > 1e-3  # the edit is not trivially zero
    for solver in ("cg", "dense"):
        edited = edit_instances(prob.obj, prob.lam, es, eq, InfluenceConfig(solver=solver, tol=1e-12))
        assert close(edited, want, 1e-7)


def test_loo_minus_if_is_second_order(prob: Problem) -> None:
    """|Delta(eps) - eps s_k| = O(eps^2): halving eps divides the gap by ~4 for every task; signs agree."""
    scores = prob.closed_form_scores()
    for k in range(M_TRAIN):
        eps = [0.2 / 2**i for i in range(4)]
        gaps = [abs(prob.exact_change(k, e) - e * float(scores[k])) for e in eps]
        ratios = [a / b for a, b in itertools.pairwise(gaps)]
        assert all(3.3 < r < 4.8 for r in ratios), (k, gaps, ratios)
        assert (prob.exact_change(k, 1e-4) > 0) == (float(scores[k]) > 0)


@pytest.mark.parametrize("kind, task, point", [("support", 1, 2), ("query", 4, 3), ("query", 3, 1)])
def test_point_loo_retraining_matches_closed_form(prob: Problem, kind: str, task: int, point: int) -> None:
    """Leave-one-point-out retraining removes exactly that point: its effect equals the closed-form optimum with that
    point's weight zeroed (shapes M = 6, S = 3, Q = 4, so swapped indices would name another point, not fail)."""
    tasks, ones = prob.obj.tasks, torch.ones(M_TRAIN, dtype=DT)
    field = "ws" if kind == "support" else "wq"
    weights = getattr(tasks, field).clone()
    weights[task, point] = 0.0
    lam_without = ClosedForm.of(tasks._replace(**{field: weights}), prob.obj.inner).optimum(ones, DELTA)
    want = float(prob.eval_loss(lam_without) - prob.eval_loss(prob.lam))
    res = retrain(prob.obj, prob.lam, prob.ev, kind, task, point, tol=1e-11, max_iter=200)
    assert res.converged
    assert abs(want) > 1e-5  # removing the point matters
    assert abs(res.effect - want) <= 1e-9


def test_loo_retraining_matches_closed_form(prob: Problem) -> None:
    """metainf.groundtruth.converged.retrain (warm-started L-BFGS to the gradient tolerance) recovers the exact
    leave-one-out change."""
    k = 2
    res = retrain(prob.obj, prob.lam, prob.ev, "task", k, tol=1e-11, max_iter=200)
    assert res.converged
    assert abs(res.effect - prob.exact_change(k, 1.0)) <= 1e-9
