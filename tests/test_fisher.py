"""Empirical-Fisher total curvature (``metainf.linalg.fisher``) and the task-IF methods built on it, float64.

- The Woodbury solve equals a dense solve of r I + (1/M) G^T diag(tau) G (M < P and M > P, zero task weights).
- ``task_if_fisher`` scores equal a hand-written dense computation whose task and evaluation gradients come from
  central finite differences of the task losses (independent of the autodiff total gradient).
- r = delta + damping <= 0 raises a clear error.
"""

from __future__ import annotations

import pytest
import torch

from metainf.core.bilevel import TaskData, UnrolledInner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective
from metainf.linalg.fisher import fisher_curvature, fisher_dense, fisher_matvec, fisher_solve
from metainf.linalg.solvers import IndefiniteHessianError
from metainf.methods import AttributionProblem, available_methods, get_method, run_method

DT = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def random_tasks(n: int, g: torch.Generator, s: int = 3, q: int = 3) -> TaskData:
    return TaskData(torch.rand(n, s, 1, 2, 2, generator=g, dtype=DT), torch.randint(0, 3, (n, s), generator=g),
                    torch.ones(n, s, dtype=DT), torch.rand(n, q, 1, 2, 2, generator=g, dtype=DT),
                    torch.randint(0, 3, (n, q), generator=g), torch.ones(n, q, dtype=DT))


def make_problem(delta: float = 0.3, m: int = 5) -> AttributionProblem:
    g = torch.Generator().manual_seed(0)
    model = build_model("mlp", (1, 2, 2), 3, hidden=(4,))
    inner = UnrolledInner(steps=1, lr=0.4)
    lam = model.init(0)
    return AttributionProblem(MetaObjective(model, inner, random_tasks(m, g), delta=delta), lam,
                              MetaObjective(model, inner, random_tasks(3, g)))


def fd_grad(f, lam: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Central differences of a vector-valued f: [out, P]."""
    cols = []
    for i in range(lam.numel()):
        e = torch.zeros_like(lam)
        e[i] = eps
        cols.append((f(lam + e) - f(lam - e)) / (2 * eps))
    return torch.stack(cols, dim=-1)


@pytest.mark.parametrize("m,p", [(6, 40), (30, 8)])
def test_woodbury_equals_dense_solve(m: int, p: int) -> None:
    g = torch.Generator().manual_seed(m)
    grads = torch.randn(m, p, generator=g, dtype=DT)
    tau = torch.ones(m, dtype=DT)
    tau[1] = 0.0
    b = torch.randn(p, generator=g, dtype=DT)
    reg = 0.05
    dense = reg * torch.eye(p, dtype=DT) + grads.T @ torch.diag(tau) @ grads / m
    x, info = fisher_solve(grads, b, reg, tau)
    assert rel(x, torch.linalg.solve(dense, b)) < 1e-10
    assert info.rel_residual < 1e-10
    c = fisher_curvature(grads, reg, tau)
    assert rel(fisher_dense(c), dense) < 1e-14
    assert rel(fisher_matvec(c, b), dense @ b) < 1e-14


def test_nonpositive_regulariser_raises_clear_error() -> None:
    grads = torch.randn(3, 10, dtype=DT)
    for reg in (0.0, -1e-3):
        with pytest.raises(IndefiniteHessianError, match="delta or the damping above 0"):
            fisher_solve(grads, torch.ones(10, dtype=DT), reg)
    problem = make_problem(delta=0.0)
    with pytest.raises(IndefiniteHessianError, match="singular"):
        run_method(get_method("task_if_fisher"), problem, "task")


def test_task_if_fisher_scores_equal_dense_finite_difference_computation() -> None:
    problem = make_problem(delta=0.3)
    obj, ev, lam = problem.objective, problem.eval_objective, problem.lam
    obj.tau = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0], dtype=DT)  # a removed task: no curvature, still scored
    m = obj.n_tasks
    grads = fd_grad(obj.task_losses, lam).reshape(m, -1)  # [M, P]
    b = fd_grad(ev.mean_loss, lam).reshape(-1)
    damping = 0.05
    curvature = grads.T @ torch.diag(obj.tau) @ grads / m + (obj.delta + damping) * torch.eye(lam.numel(), dtype=DT)
    expected = grads @ torch.linalg.solve(curvature, b) / m  # score[k] = v . g_k / M
    scores = run_method(get_method("task_if_fisher", damping=damping), problem, "task").values
    assert rel(scores, expected) < 1e-6
    # not the exact task-IF: the curvature differs, so the test could fail if the exact Hessian were used
    exact = run_method(get_method("task_if", solver="dense", damping=damping), problem, "task").values
    assert rel(exact, expected) > 1e-3


def test_registered_names() -> None:
    assert "task_if_fisher" in available_methods()
    method = get_method("task_if_fisher")
    assert (method.name, method.solver) == ("task_if_fisher", "fisher")
