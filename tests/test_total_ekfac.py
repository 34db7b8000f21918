"""The EK-FAC factors pooled over tasks at their own parameters, and the total-Hessian EK-FAC preconditioner of
task-IF's CG, against dense Gauss-Newton matrices formed from autograd Jacobians (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metainf.core.bilevel import TaskData, UnrolledInner
from metainf.core.models import FlatModel, build_model
from metainf.core.objective import MetaObjective
from metainf.linalg.ekfac import ekfac_apply, ekfac_factors, pooled_ekfac_factors
from metainf.linalg.total_ekfac import total_ekfac_preconditioner

pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def dense_ggn(model: FlatModel, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
              thetas: torch.Tensor) -> torch.Tensor:
    """sum_k sum_j w[k, j] J_kj^T H_kj J_kj: logits Jacobians by ``jacrev``, CE Hessians in the logits by
    ``hessian``."""
    total = torch.zeros(thetas.shape[1], thetas.shape[1], dtype=DT)
    for xk, yk, wk, th in zip(x, y, w, thetas):
        jac = torch.func.jacrev(lambda p: model(p, xk))(th)  # [n, C, P]
        for j in range(len(yk)):
            h = torch.func.hessian(lambda o: nn.functional.cross_entropy(o[None], yk[j][None]))(model(th, xk)[j])
            total += wk[j] * jac[j].T @ h @ jac[j]
    return total


def sets(m: int, n: int, seed: int, shared: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """m sets of n examples (4 features, 3 classes) with positive weights; ``shared``: every set the same inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1 if shared else m, n, 4, generator=g, dtype=DT).expand(m, n, 4).clone()
    return x, torch.randint(0, 3, (m, n), generator=g), torch.rand(m, n, generator=g, dtype=DT) + 0.5


def test_one_set_is_ekfac_factors() -> None:
    model = FlatModel.wrap(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT))
    x, y, w = sets(1, 6, seed=0)
    theta = torch.randn(model.n_params, generator=torch.Generator().manual_seed(1), dtype=DT)
    pooled = pooled_ekfac_factors(model, x, y, w / 6, theta[None])
    single = ekfac_factors(model, TaskData(x[0], y[0], w[0], x[0], y[0], w[0]), theta)
    for a, b in zip(pooled, single):
        assert rel(a.eigenvalues, b.eigenvalues) < 1e-12


def test_chunked_two_pass_factors_equal_one_pass() -> None:
    """Two layers, 7 sets in chunks of 3 (factors summed in a first pass, the eigenvalue correction in a second that
    recomputes the samples) against all sets in one pass: the same eigenbases' products and corrections."""
    model = FlatModel.wrap(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT))
    x, y, w = sets(7, 4, seed=5)
    thetas = torch.randn(7, model.n_params, generator=torch.Generator().manual_seed(6), dtype=DT)
    one = pooled_ekfac_factors(model, x, y, w, thetas, chunk=None)
    two = pooled_ekfac_factors(model, x, y, w, thetas, chunk=3)
    b = torch.randn(model.n_params, generator=torch.Generator().manual_seed(7), dtype=DT)
    assert rel(ekfac_apply(model, two, b, 0.1), ekfac_apply(model, one, b, 0.1)) < 1e-10
    for a, c in zip(one, two):
        assert rel(c.eigenvalues.flatten().sort().values, a.eigenvalues.flatten().sort().values) < 1e-10


@pytest.mark.parametrize("chunk", [None, 2])
def test_pooled_eigenvalue_correction_is_the_dense_ggn_diagonal(chunk: int | None) -> None:
    """5 sets of 3 examples, each at its own parameters: Lambda[r, s] = E_rs^T G E_rs for the pooled dense GGN G
    and E_rs = q_G[:, r] q_A[:, s]^T (a linear model: one layer, GGN = Hessian of the summed CE)."""
    model = FlatModel.wrap(nn.Linear(4, 3).to(DT))
    x, y, w = sets(5, 3, seed=2)
    thetas = torch.randn(5, model.n_params, generator=torch.Generator().manual_seed(3), dtype=DT)
    (f,) = pooled_ekfac_factors(model, x, y, w, thetas, chunk=chunk)
    g = dense_ggn(model, x, y, w, thetas)
    for r in range(f.q_g.shape[0]):
        for s in range(f.q_a.shape[0]):
            e = torch.outer(f.q_g[:, r], f.q_a[:, s])
            v = model.flatten({"weight": e[:, :-1], "bias": e[:, -1]})
            assert abs(float(v @ g @ v) - float(f.eigenvalues[r, s])) < 1e-12


def objective_with_shared_query(m: int) -> tuple[MetaObjective, torch.Tensor]:
    """Unrolled MAML on a linear model; every task has its own support set and the same single query point, so
    sum_k tau_k GN_Q(theta_k) = a a^T (x) sum_k tau_k H_k is a Kronecker product and EK-FAC is exact."""
    g = torch.Generator().manual_seed(4)
    model = build_model("mlp", (1, 2, 2), 3, hidden=())
    xq = torch.rand(1, 1, 1, 2, 2, generator=g, dtype=DT).expand(m, 1, 1, 2, 2).clone()
    tasks = TaskData(torch.rand(m, 3, 1, 2, 2, generator=g, dtype=DT), torch.randint(0, 3, (m, 3), generator=g),
                     torch.ones(m, 3, dtype=DT), xq, torch.randint(0, 3, (m, 1), generator=g),
                     torch.ones(m, 1, dtype=DT))
    obj = MetaObjective(model, UnrolledInner(steps=1, lr=0.4), tasks, delta=0.3, chunk=2)
    obj.tau = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0], dtype=DT)[:m]
    return obj, model.init(0) + 0.3 * torch.randn(model.n_params, generator=g, dtype=DT)


def test_the_preconditioner_is_the_inverse_of_the_dense_first_order_ggn_where_exact() -> None:
    """(EK-FAC + reg I)^-1 r equals (1/M) sum_k tau_k GN_Q(theta_k) + reg I solved densely, theta_k the adapted
    parameters, in the Kronecker case of ``objective_with_shared_query``."""
    obj, lam = objective_with_shared_query(5)
    t = obj.tasks
    thetas = torch.stack([obj.inner.adapt(obj.model, lam, TaskData(*(v[k] for v in t))) for k in range(5)])
    weights = obj.tau[:, None] * t.wq / 5
    g = dense_ggn(obj.model, t.xq.flatten(2), t.yq, weights, thetas)
    reg = obj.delta + 0.05
    r = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(5), dtype=DT)
    want = torch.linalg.solve(g + reg * torch.eye(lam.numel(), dtype=DT), r)
    assert rel(total_ekfac_preconditioner(obj, lam, reg)(r), want) < 1e-10
    # distinct query points make the pooled GGN non-Kronecker: the case above is not trivially exact
    obj.tasks = t._replace(xq=torch.rand(t.xq.shape, generator=torch.Generator().manual_seed(6), dtype=DT))
    thetas = torch.stack([obj.inner.adapt(obj.model, lam, TaskData(*(v[k] for v in obj.tasks))) for k in range(5)])
    g = dense_ggn(obj.model, obj.tasks.xq.flatten(2), obj.tasks.yq, weights, thetas)
    want = torch.linalg.solve(g + reg * torch.eye(lam.numel(), dtype=DT), r)
    assert rel(total_ekfac_preconditioner(obj, lam, reg)(r), want) > 1e-4
    with pytest.raises(ValueError, match="delta \\+ damping > 0"):
        total_ekfac_preconditioner(obj, lam, 0.0)
