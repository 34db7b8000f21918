"""The dense proximal total Hessian from per-task blocks, and Newton training with it (float64).

``ProximalInner.dense_total_hessian`` forms D^2 L_O^k = beta^2 A^-1 Hess[L_O - q . grad L_S] A^-1 densely. Checked
against (a) central finite differences of the exact total gradient g_k (the inner problem re-solved at every
perturbed lam with exact dense linear algebra), (b) the matrix of P implicit HVP columns (``dense_hessian`` /
``task_hessians``) in every H' mode; then that Newton training on that matrix reaches the same stationary point as
on the slow HVP-column matrix. Leave-one-out retraining from the block start Hessian is checked in
``test_proximal_loo.py`` on a well-posed problem: on this one (3 tasks, beta = 1) the inner problems have several
local minima at lam* and removing a task moves lam* out of its basin, so leave-one-out is not well defined here.
"""

from __future__ import annotations

import pytest
import torch

import metainf.train as train_mod
from metainf.core.bilevel import ProximalInner, TaskData, UnrolledInner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective
from metainf.train import train_converged

DT = torch.float64
N_TASKS, N_S, N_Q, N_WAY, INPUT = 3, 4, 4, 3, (1, 3, 3)
BETA = 1.0


def make_tasks(seed: int) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    return TaskData(
        xs=torch.rand(N_TASKS, N_S, *INPUT, generator=g, dtype=DT) * 2,
        ys=torch.randint(0, N_WAY, (N_TASKS, N_S), generator=g),
        ws=torch.ones(N_TASKS, N_S, dtype=DT),
        xq=torch.rand(N_TASKS, N_Q, *INPUT, generator=g, dtype=DT) * 2,
        yq=torch.randint(0, N_WAY, (N_TASKS, N_Q), generator=g),
        wq=torch.ones(N_TASKS, N_Q, dtype=DT),
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (b is the reference)."""
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.fixture(scope="module")
def problem() -> tuple[MetaObjective, torch.Tensor]:
    model = build_model("mlp", INPUT, N_WAY, hidden=(3,))
    obj = MetaObjective(model, ProximalInner(beta=BETA, cg_iters=80), make_tasks(0), delta=0.05)
    return obj, model.init(0, dtype=DT)


def test_task_blocks_match_finite_differences_of_total_gradient(problem) -> None:
    obj, lam = problem
    hk = obj.block_task_hessians(lam)
    # reference: exact total gradients at lam +- eps u, inner problems re-solved with dense solves
    ref = MetaObjective(obj.model, ProximalInner(beta=BETA, inner_solver="dense"), obj.tasks, obj.delta)
    gen = torch.Generator().manual_seed(3)
    eps = 1e-5
    for _ in range(3):
        u = torch.randn(lam.numel(), generator=gen, dtype=DT)
        fd = (ref.task_grads(lam + eps * u) - ref.task_grads(lam - eps * u)) / (2 * eps)  # [M, P]
        for k in range(N_TASKS):
            err = rel(hk[k] @ u, fd[k])
            assert err <= 1e-6, f"task {k}: dense block vs FD of the total gradient, rel err {err:.2e}"


@pytest.mark.parametrize("hprime", ["exact", "drop", "gamma_scaled:0.3"])
def test_block_hessian_matches_hvp_columns(problem, hprime: str) -> None:
    obj, lam = problem
    h_block, h_cols = obj.block_hessian(lam, hprime), obj.dense_hessian(lam, hprime)
    assert h_block.shape == (lam.numel(), lam.numel())
    assert rel(h_block, h_cols) <= 1e-10
    assert rel(obj.block_task_hessians(lam, hprime), obj.task_hessians(lam, hprime)) <= 1e-10
    # exact and drop differ by the third-order term, so the test can tell them apart
    if hprime == "drop":
        assert rel(h_block, obj.dense_hessian(lam, "exact")) > 1e-4


def test_dense_hessian_serves_hvp(problem) -> None:
    model, lam = problem[0].model, problem[1]
    obj = MetaObjective(model, ProximalInner(beta=BETA, cg_iters=80), make_tasks(0), delta=0.05)
    u = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(5), dtype=DT)
    implicit = obj.hvp(lam, u)
    served = obj.with_dense_hessian(lam)
    h = served.curvature.matrix
    assert torch.equal(served.hvp(lam, u), h @ u)
    assert rel(served.hvp(lam, u), implicit) <= 1e-10
    assert obj.curvature is None and torch.equal(obj.hvp(lam, u), implicit)  # the original is unchanged
    other = lam + 0.01
    assert rel(served.hvp(other, u), h @ u) > 1e-6  # another lam takes the implicit path


def test_block_hessian_rejects_unrolled(problem) -> None:
    obj, lam = problem
    unrolled = MetaObjective(obj.model, UnrolledInner(), obj.tasks, obj.delta)
    with pytest.raises(ValueError, match="proximal"):
        unrolled.block_hessian(lam)


def dense_inner(obj: MetaObjective) -> MetaObjective:
    """The same problem with exact dense inner solves: training tests need many F evaluations, and CG is slow."""
    return MetaObjective(obj.model, ProximalInner(beta=BETA, inner_solver="dense"), obj.tasks, obj.delta)


def test_newton_on_blocks_reaches_the_slow_path_optimum(problem, monkeypatch) -> None:
    obj, lam0 = problem
    obj = dense_inner(obj)
    fast = train_converged(obj.with_weights(), lam0, tol=1e-10, max_iter=200)
    monkeypatch.setattr(train_mod, "total_hessian", lambda o, lam: o.dense_hessian(lam))
    slow = train_converged(obj.with_weights(), lam0, tol=1e-10, max_iter=200)
    assert fast.converged and slow.converged
    assert fast.min_eigenvalue is not None and fast.min_eigenvalue > 0
    assert float((fast.lam - slow.lam).norm()) <= 1e-8 * max(1.0, float(slow.lam.norm()))
