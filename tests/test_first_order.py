"""First-order MAML (``UnrolledInner(first_order=True)``): the meta-gradient as a map of (lam, ws, wq).

FO-MAML's meta-gradient of task k is g_k(lam; ws, wq) = grad_theta L_O(theta; wq) at theta = theta_K(lam; ws), the
true K-step adapted parameter; only the chain rule through d theta_K/d lam is replaced by the identity. Its value
is the old detached-unroll formula (learn2learn's ``first_order=True``: tests/test_l2l.py), but its derivatives in
the support weights and in lam are those of this map: d g/d ws = Hess L_O d theta_K/d ws (non-zero) and
d g/d lam = Hess L_O d theta_K/d lam (not symmetric). Everything is checked against central finite differences,
float64, on the tiny MLP problem of tests/test_methods_trajectory.py with K = 2 inner steps. Sign convention:
score ~ L_eval(without u) - L_eval(with u) = -dL_eval(lam_T)/d omega to first order.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import grad

from metainf.core.bilevel import TaskData, UnrolledInner, query_loss, support_loss
from metainf.core.objective import MetaObjective
from metainf.groundtruth.trajectory import trajectory_loo_many
from metainf.influence import InfluenceConfig, eval_vector
from metainf.methods import AttributionProblem
from metainf.methods.trajectory import DVEmbExact, TracIn
from tests.test_methods_trajectory import (DT, EPS, KINDS, N_TASKS, at, first_order_removal, hand_unit_derivative,
                                           rel, units)
from tests.test_methods_trajectory import make_problem as trajectory_problem

INNER_STEPS = 2  # inner lr 0.4, as in tests/test_methods_trajectory.py
FD_EPS = 1e-5  # central differences of the meta-gradient map (error O(eps^2) ~ 1e-10 relative)


def make_problem(optimizer: str = "sgd", lr: float = 0.1, steps: int = 5, batch: int = 2) -> AttributionProblem:
    return trajectory_problem(steps=steps, batch=batch, lr=lr, optimizer=optimizer, first_order=True,
                              inner_steps=INNER_STEPS)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prob() -> AttributionProblem:
    return make_problem()


def task(obj: MetaObjective, k: int) -> TaskData:
    return TaskData(*(x[k] for x in obj.tasks))


def detached_fo_gradient(inner: UnrolledInner, model, lam: torch.Tensor, t: TaskData) -> torch.Tensor:
    """The previous implementation, written out: autodiff of L_O through an unroll with detached inner gradients."""
    def loss(l: torch.Tensor) -> torch.Tensor:
        theta = l
        for _ in range(inner.steps):
            theta = theta - inner.lr * grad(support_loss, argnums=1)(model, theta, t).detach()
        return query_loss(model, theta, t)

    return grad(loss)(lam)


def fo_grad(p: AttributionProblem, lam: torch.Tensor, t: TaskData) -> torch.Tensor:
    return p.objective.inner.total_grad(p.objective.model, lam, t, lam)


# -- the meta-gradient map ---------------------------------------------------------------------------------------
def test_fo_meta_gradient_value_is_the_detached_formula(prob: AttributionProblem) -> None:
    obj, lam = prob.objective, prob.lam
    inner, model = obj.inner, obj.model
    worst = 0.0
    for k in range(N_TASKS):
        t = task(obj, k)
        ours = inner.total_grad(model, lam, t, lam)
        worst = max(worst, rel(ours, detached_fo_gradient(inner, model, lam, t)))
        assert rel(grad(lambda l: inner.outer_loss(model, l, t))(lam), ours) < 1e-13  # MAML's surrogate (l2l test)
        # FO differs from the exact gradient of the same loss (guards against comparing identical computations)
        assert rel(inner.loss_grad(model, lam, t, lam), ours) > 1e-3
    print(f"\nFO meta-gradient vs detached formula: max rel err {worst:.1e}")
    assert worst < 1e-13
    ref = torch.stack([detached_fo_gradient(inner, model, lam, task(obj, k)) for k in range(N_TASKS)])
    assert rel(obj.grad(lam), obj.tau @ ref / N_TASKS + obj.delta * lam) < 1e-13


def test_fo_meta_gradient_weight_derivatives_match_finite_differences(prob: AttributionProblem) -> None:
    """d g_k/d ws_j and d g_k/d wq_j (``dgrad_dweights``; ``weight_scores`` = v^T of them) vs central FD."""
    obj, lam = prob.objective, prob.lam
    inner, model = obj.inner, obj.model
    v = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(0), dtype=DT)
    worst = 0.0
    for k in (0, 3):
        t = task(obj, k)
        d_ws, d_wq = inner.weight_scores(model, lam, t, lam, v)
        for name, scores in (("ws", d_ws), ("wq", d_wq)):
            w0 = getattr(t, name)
            for j in range(w0.numel()):
                e = torch.zeros_like(w0)
                e[j] = 1.0
                fd = (fo_grad(prob, lam, t._replace(**{name: w0 + FD_EPS * e}))
                      - fo_grad(prob, lam, t._replace(**{name: w0 - FD_EPS * e}))) / (2 * FD_EPS)
                zero = torch.zeros_like(t.ws if name == "wq" else t.wq)
                es, eq = (e, zero) if name == "ws" else (zero, e)
                ours = inner.dgrad_dweights(model, lam, t, lam, es, eq)
                assert float(fd.norm()) > 1e-4  # support derivatives are not cut by a detach
                err = max(rel(ours, fd), abs(float(scores[j] - v @ fd)) / float((v @ fd).abs()))
                worst = max(worst, err)
                assert err <= 1e-6, f"task {k} {name}[{j}]: rel err {err:.1e}"
    print(f"\nFO d g/d(ws, wq) vs central FD: max rel err {worst:.1e}")


def test_fo_jacobian_in_lam_matches_finite_differences(prob: AttributionProblem) -> None:
    """D_lam g: jvp (``total_hvp`` exact) and vjp (``total_grad_vjp``, ``MetaObjective.grad_vjp``) against the
    Jacobian by central differences, which is not symmetric."""
    obj, lam = prob.objective, prob.lam
    inner, model = obj.inner, obj.model
    t = task(obj, 2)
    n = lam.numel()
    eye = torch.eye(n, dtype=DT)
    jac = torch.stack([(fo_grad(prob, lam + FD_EPS * eye[i], t) - fo_grad(prob, lam - FD_EPS * eye[i], t))
                       / (2 * FD_EPS) for i in range(n)], dim=1)  # [P, P], column i = d g / d lam_i
    assert float((jac - jac.T).norm() / jac.norm()) > 1e-2
    gen = torch.Generator().manual_seed(1)
    u, w = torch.randn(n, generator=gen, dtype=DT), torch.randn(n, generator=gen, dtype=DT)
    err_jvp = rel(inner.total_hvp(model, lam, t, lam, u), jac @ u)
    err_vjp = rel(inner.total_grad_vjp(model, lam, t, lam, w), jac.T @ w)
    print(f"\nFO D_lam g vs central FD: jvp rel err {err_jvp:.1e}, vjp rel err {err_vjp:.1e}")
    assert err_jvp <= 1e-6 and err_vjp <= 1e-6
    # the batch operator: (1/M) sum_k tau_k J_k^T w + delta w, exactly the per-task transposes
    per_task = torch.stack([inner.total_grad_vjp(model, lam, task(obj, k), lam, w) for k in range(N_TASKS)])
    assert not obj.symmetric_jacobian
    assert rel(obj.grad_vjp(lam, w), obj.tau @ per_task / N_TASKS + obj.delta * w) < 1e-12
    assert rel(obj.grad_vjp(lam, w), obj.hvp(lam, w)) > 1e-3


def test_eval_gradient_is_exact_for_first_order(prob: AttributionProblem) -> None:
    """grad L_eval differentiates the evaluation loss itself, not the FO meta-gradient approximation of it."""
    ev, lam = prob.eval_objective, prob.lam
    u = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(2), dtype=DT)
    fd = (ev.mean_loss(lam + FD_EPS * u) - ev.mean_loss(lam - FD_EPS * u)) / (2 * FD_EPS)
    assert float(ev.mean_loss_grad(lam) @ u) == pytest.approx(float(fd), rel=1e-6)


# -- exact DVEmb under first-order MAML: finite differences of the whole recorded training map ------------------
@pytest.mark.parametrize("kind", KINDS)
def test_dvemb_exact_first_order_equals_finite_differences_of_training(prob: AttributionProblem, kind: str) -> None:
    scores = DVEmbExact().score(prob, kind)
    ours = torch.tensor([at(scores, k, j) for k, j in units(kind)], dtype=DT)
    ref = torch.tensor([first_order_removal(prob, kind, k, j) for k, j in units(kind)], dtype=DT)
    print(f"\nFO DVEmbExact SGD {kind}: rel err {rel(ours, ref):.1e}")
    assert float(ref.abs().max()) > 1e-4
    assert rel(ours, ref) < 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_dvemb_exact_first_order_through_adam_equals_finite_differences(kind: str) -> None:
    p = make_problem(optimizer="adam", lr=0.05)
    scores = DVEmbExact().score(p, kind)
    ours = torch.tensor([at(scores, k, j) for k, j in units(kind)], dtype=DT)
    ref = torch.tensor([first_order_removal(p, kind, k, j) for k, j in units(kind)], dtype=DT)
    print(f"\nFO DVEmbExact Adam {kind}: rel err {rel(ours, ref):.1e}")
    assert rel(ours, ref) < 1e-6


def test_symmetric_adjoint_would_be_wrong_for_first_order(prob: AttributionProblem, monkeypatch) -> None:
    """Guard: with the symmetric HVP in the adjoint step (the second-order update) the FO scores change."""
    right = DVEmbExact().score(prob, "task")
    monkeypatch.setattr(MetaObjective, "grad_vjp", lambda self, lam, w: self.hvp(lam, w))
    assert rel(DVEmbExact().score(prob, "task"), right) > 1e-4


def test_first_order_step_contribution_is_the_single_occurrence_derivative(prob: AttributionProblem) -> None:
    """Trajectory LOO lanes (first-order, through the trainer's step) match DVEmbExact's per-step contributions."""
    schedule = prob.trajectory.schedule
    k = next(k for k in range(N_TASKS) if sum(b.count(k) for b in schedule) >= 2)
    steps = [t for t, b in enumerate(schedule) for kk in b if kk == k]
    method = DVEmbExact()
    for kind, point in (("support", 1), ("query", 2)):
        per_step = method.step_scores(prob, kind)
        for occurrence, t in enumerate(steps):
            plus = trajectory_loo_many(prob, kind, [(k, point)], occurrence, scale=1 + EPS)[0]
            minus = trajectory_loo_many(prob, kind, [(k, point)], occurrence, scale=1 - EPS)[0]
            assert at(per_step[t], k, point) == pytest.approx(-float(plus - minus) / (2 * EPS), rel=1e-6)


# -- TracIn and influence functions ------------------------------------------------------------------------------
def test_tracin_first_order_support_equals_hand_computation(prob: AttributionProblem) -> None:
    traj = prob.trajectory
    for kind in ("support", "query"):
        ref = torch.zeros(prob.shape(kind), dtype=DT)
        for t, batch in enumerate(traj.schedule):
            lam = traj.lams[t]
            v = prob.eval_objective.mean_loss_grad(lam)
            for k in batch:
                ref[k] += traj.lrs[t] / len(batch) * hand_unit_derivative(prob, kind, lam, k, v)
        assert float(ref.abs().max()) > 0
        assert rel(TracIn().score(prob, kind), ref) < 1e-12


def test_influence_refuses_the_non_symmetric_first_order_jacobian(prob: AttributionProblem) -> None:
    with pytest.raises(NotImplementedError, match="first-order MAML"):
        eval_vector(prob.objective, prob.lam, prob.eval_objective, InfluenceConfig(solver="dense"))
    v, _ = eval_vector(prob.objective, prob.lam, prob.eval_objective,
                       InfluenceConfig(solver="dense", hprime="drop", damping=1.0))
    assert torch.isfinite(v).all()
