"""Finite-difference total HVPs, the one-pass task and evaluation gradients, and ``task_if_truncated``, float64.

References are independent of the code under test: the forward-over-reverse HVP (``MetaObjective.hvp``), the dense
total Hessian, the separate ``task_grads`` / ``mean_loss_grad`` passes, and the dense solve of task-IF.
"""

from __future__ import annotations

import pytest
import torch

CPU = torch.device("cpu")  # what a RunContext resolves --device cpu to

from metainf.core.bilevel import ProximalInner, UnrolledInner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective
from metainf.linalg.finite_difference import (FDHessian, data_gradient, fd_hessian_operator, losses_and_gradients,
                                              prefer_fd, supports_fd, task_and_eval_grads)
from metainf.methods import AttributionProblem, available_methods, get_method, run_method
from tests.test_fisher import random_tasks, rel
from tests.test_nystrom import make_problem

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prob() -> AttributionProblem:
    return make_problem()  # unrolled MAML, 7 tasks with weights (one 0, one 2), chunked by 3, indefinite H_data


def other_problem(inner) -> AttributionProblem:
    g = torch.Generator().manual_seed(1)
    model = build_model("mlp", (1, 2, 2), 3, hidden=(3,))
    obj = MetaObjective(model, inner, random_tasks(5, g), delta=0.5, chunk=2)
    return AttributionProblem(obj, model.init(1), MetaObjective(model, inner, random_tasks(3, g)))


def dense_scores(problem: AttributionProblem) -> torch.Tensor:
    obj, lam = problem.objective, problem.lam
    v = torch.linalg.solve(obj.dense_hessian(lam), problem.eval_objective.mean_loss_grad(lam))
    return obj.task_grads(lam) @ v / obj.n_tasks


def test_fd_hvp_matches_the_autodiff_hvp(prob: AttributionProblem) -> None:
    obj, lam = prob.objective, prob.lam
    op = fd_hessian_operator(obj, lam)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        u = torch.randn(lam.numel(), generator=g, dtype=DT)
        assert rel(op(u), obj.hvp(lam, u)) < 1e-6
    assert float(op(torch.zeros_like(lam)).abs().max()) == 0.0


def test_the_summed_gradient_pass_and_a_given_data_gradient(prob: AttributionProblem) -> None:
    obj, lam = prob.objective, prob.lam
    base = obj.tau @ obj.task_grads(lam) / obj.n_tasks
    u = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(6), dtype=DT)
    assert rel(data_gradient(obj, lam), base) < 1e-12
    assert rel(fd_hessian_operator(obj, lam, base)(u), fd_hessian_operator(obj, lam)(u)) < 1e-6


def test_one_pass_gradients_equal_the_separate_passes(prob: AttributionProblem) -> None:
    obj, ev, lam = prob.objective, prob.eval_objective, prob.lam
    grads, b = task_and_eval_grads(obj, ev, lam)
    assert rel(grads, obj.task_grads(lam)) < 1e-12 and rel(b, ev.mean_loss_grad(lam)) < 1e-12


def test_one_summed_pass_gives_the_losses_the_data_gradient_and_the_eval_gradient(prob: AttributionProblem) -> None:
    """Fused (the two task sets share one pass, chunked by 3) and fallback (eval tasks of another shape): against
    ``task_losses``, tau @ G / M from ``task_grads`` and ``mean_loss_grad``."""
    obj, lam = prob.objective, prob.lam
    g = torch.Generator().manual_seed(8)
    other_shape = MetaObjective(obj.model, obj.inner, random_tasks(2, g, s=4, q=2))
    for ev in (prob.eval_objective, other_shape):
        losses, d, b = losses_and_gradients(obj, ev, lam)
        assert rel(losses, obj.task_losses(lam)) < 1e-12
        assert rel(d, obj.tau @ obj.task_grads(lam) / obj.n_tasks) < 1e-12
        assert rel(b, ev.mean_loss_grad(lam)) < 1e-12


def test_the_recorded_task_losses_give_g_on_the_span_of_the_hvp_directions(prob: AttributionProblem) -> None:
    """G P (P: projector onto the span of the directions the operator was applied to) equals G on that span, to
    the accuracy of a forward difference, and is 0 on its orthogonal complement; the HVPs are unchanged."""
    obj, lam = prob.objective, prob.lam
    losses, d, _ = losses_and_gradients(obj, prob.eval_objective, lam)
    op = FDHessian(obj, lam, d, losses)
    assert float(op.projected_task_grads().abs().max()) == 0.0  # no direction yet
    g = torch.Generator().manual_seed(9)
    us = torch.randn(3, lam.numel(), generator=g, dtype=DT) * torch.tensor([[1.0], [1e-3], [1e3]], dtype=DT)
    for u in us:
        assert rel(op(u), obj.hvp(lam, u)) < 1e-6
    grads, proj = obj.task_grads(lam), op.projected_task_grads()
    w = torch.tensor([0.3, -200.0, 1e-3], dtype=DT) @ us
    assert rel(proj @ w, grads @ w) < 1e-6
    q, _ = torch.linalg.qr(torch.cat([us.T, torch.randn(lam.numel(), 1, generator=g, dtype=DT)], 1))
    assert float((proj @ q[:, 3]).abs().max()) < 1e-10 * float(proj.abs().max())
    with pytest.raises(ValueError, match="needs the task losses"):
        fd_hessian_operator(obj, lam).projected_task_grads()


def test_one_pass_gradients_fall_back_for_a_proximal_inner_problem() -> None:
    p = other_problem(ProximalInner(beta=2.0, inner_solver="dense"))
    grads, b = task_and_eval_grads(p.objective, p.eval_objective, p.lam)
    assert rel(grads, p.objective.task_grads(p.lam)) < 1e-12
    assert rel(b, p.eval_objective.mean_loss_grad(p.lam)) < 1e-12


@pytest.mark.parametrize("hvp", ["fd", "autodiff"])
def test_truncated_cg_run_to_convergence_equals_the_dense_solve(prob: AttributionProblem, hvp: str) -> None:
    ref = dense_scores(prob)
    method = get_method("task_if_truncated", cg_iters=200, tol=1e-12, hvp=hvp)
    scores = run_method(method, prob, "task").values
    assert method.last_info.converged
    assert rel(scores, ref) < (1e-5 if hvp == "fd" else 1e-8)


def test_truncated_cg_stops_after_cg_iters_and_matches_plain_cg(prob: AttributionProblem) -> None:
    obj, lam = prob.objective, prob.lam
    b = prob.eval_objective.mean_loss_grad(lam)
    x, r = torch.zeros_like(b), b.clone()  # two textbook CG iterations with the autodiff HVP
    p, rs = r.clone(), r @ r
    for _ in range(2):
        ap = obj.hvp(lam, p)
        alpha = rs / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        p, rs = r + (r @ r / rs) * p, r @ r
    method = get_method("task_if_truncated", cg_iters=2)
    scores = run_method(method, prob, "task").values
    assert method.last_info.iterations == 2 and not method.last_info.converged
    assert rel(scores, obj.task_grads(lam) @ x / obj.n_tasks) < 1e-6


def test_truncated_instance_scores_equal_task_if_when_converged(prob: AttributionProblem) -> None:
    exact = get_method("task_if", solver="dense")
    method = get_method("task_if_truncated", cg_iters=200, tol=1e-12, hvp="autodiff")
    for kind in ("support", "query"):
        assert rel(run_method(method, prob, kind).values, run_method(exact, prob, kind).values) < 1e-8


def test_auto_takes_autodiff_hvps_for_a_proximal_inner_problem() -> None:
    p = other_problem(ProximalInner(beta=2.0, inner_solver="dense"))
    assert not supports_fd(p.objective)
    method = get_method("task_if_truncated", cg_iters=100, tol=1e-10)
    scores = run_method(method, p, "task").values
    assert method.last_info.converged
    assert rel(scores, dense_scores(p)) < 1e-7


@pytest.mark.parametrize("inner, match", [(ProximalInner(beta=2.0, inner_solver="dense"), "proximal"),
                                          (UnrolledInner(steps=1, lr=0.4, first_order=True), "first-order")])
def test_fd_refuses_inner_problems_it_cannot_difference(inner, match: str) -> None:
    p = other_problem(inner)
    with pytest.raises(NotImplementedError, match=match):
        fd_hessian_operator(p.objective, p.lam)
    with pytest.raises(NotImplementedError, match=match):
        run_method(get_method("task_if_truncated", hvp="fd"), p, "task")


def test_bad_options_are_named(prob: AttributionProblem) -> None:
    with pytest.raises(ValueError, match="unknown hvp 'jvp'"):
        run_method(get_method("task_if_truncated", hvp="jvp"), prob, "task")
    with pytest.raises(ValueError, match="cg_iters must be >= 1"):
        run_method(get_method("task_if_truncated", cg_iters=0), prob, "task")
    with pytest.raises(ValueError, match="no hprime='drop' variant"):
        run_method(get_method("task_if_truncated", hvp="fd", hprime="drop"), prob, "task")
    assert "task_if_truncated" in available_methods()


def test_float32_runs_in_float32_and_agrees_with_float64(prob: AttributionProblem) -> None:
    """Single precision end to end (tasks, lam, the finite-difference step sqrt(eps_32)), against float64."""

    def single(o: MetaObjective) -> MetaObjective:
        tasks = type(o.tasks)(*(x.float() if x.is_floating_point() else x for x in o.tasks))
        return MetaObjective(o.model, o.inner, tasks, delta=o.delta, tau=o.tau.float(), chunk=o.chunk)

    p32 = AttributionProblem(single(prob.objective), prob.lam.float(), single(prob.eval_objective))
    grads, b = task_and_eval_grads(p32.objective, p32.eval_objective, p32.lam)
    assert grads.dtype == b.dtype == torch.float32
    assert rel(grads.double(), prob.objective.task_grads(prob.lam)) < 1e-5
    scores32 = run_method(get_method("task_if_truncated"), p32, "task").values
    assert scores32.dtype == torch.float32
    # the float32 difference quotient is accurate to about sqrt(eps_32) = 3.5e-4 (measured here: 3.4e-4)
    assert rel(scores32.double(), run_method(get_method("task_if_truncated"), prob, "task").values) < 2e-3


def test_three_iterations_match_exact_task_if_at_100_tasks_on_digits() -> None:
    """The accuracy behind the default ``cg_iters = 3`` on a problem of E5 (digits, 100 tasks, hidden 8, seed 0):
    Spearman >= 0.98 with task-IF from the dense total Hessian (0.994 in the committed E5 results)."""
    import types

    from experiments import setups
    from experiments.e5_cost import CONFIGS
    from metainf.metrics import correlations

    cfg = {**CONFIGS["quick"], "n_train_tasks": 100, "hidden": [8]}
    setup = setups.build_setup(types.SimpleNamespace(config=cfg, dataset="mnist", data_root=None, torch_device=CPU,
                                                     torch_dtype=lambda default: default, seed=0), "unrolled")
    problem = setups.problems(setup, setups.fit(setup, cfg, 0), 0)["converged"]
    assert problem.objective.n_tasks == 100
    exact = dense_scores(problem)
    scores = run_method(get_method("task_if_truncated"), problem, "task").values
    assert correlations(scores.numpy(), exact.numpy())["spearman"] >= 0.98


def test_auto_takes_finite_differences_in_float64_only(prob: AttributionProblem,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """In float32 a difference quotient of the meta-gradient is not an accurate HVP at any step
    (``fd_is_accurate``), so ``hvp="auto"`` and the regime's ``total_hvp`` use the autodiff HVP there."""
    obj, lam = prob.objective, prob.lam
    assert supports_fd(obj) and prefer_fd(obj, lam) and not prefer_fd(obj, lam.float())
    calls = []
    real = FDHessian.__call__
    monkeypatch.setattr(FDHessian, "__call__", lambda self, u: calls.append(1) or real(self, u))
    run_method(get_method("task_if_fast"), prob, "task")
    assert calls  # float64: finite differences
