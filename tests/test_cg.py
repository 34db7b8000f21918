"""The one conjugate gradient (``metainf.linalg.cg``) against dense float64 linear algebra.

- tolerance mode reaches the dense solution ``torch.linalg.solve`` and stops at the first iterate meeting tol;
- fixed mode equals k steps of the textbook CG recursion (written out here independently) and runs under vmap;
- a warm start at the solution costs no iteration, a warm start elsewhere reaches the same solution;
- a preconditioner (the exact inverse, and a Jacobi one) gives the same solution in fewer iterations;
- successive right-hand sides: each row reaches the dense solution; the Galerkin start solves a right-hand side in
  the span of earlier ones in a few iterations, and correlated ones in fewer iterations than from zero;
- non-positive curvature raises ``IndefiniteHessianError``; ``strict`` raises ``SolverNotConvergedError``.
"""

from __future__ import annotations

import pytest
import torch

from metainf.linalg.cg import cg, cg_fixed, cg_successive
from metainf.linalg.types import IndefiniteHessianError, SolverNotConvergedError

DT = torch.float64


def spd(n: int = 12, cond: float = 1e3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, b): a random symmetric positive definite A with condition number ``cond`` and a random b."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT)).Q
    a = q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=DT)) @ q.T
    return 0.5 * (a + a.T), torch.randn(n, generator=gen, dtype=DT)


def textbook_cg(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """k iterations of Hestenes-Stiefel CG from 0 (Golub & Van Loan, Alg. 11.3.2), for comparison."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    for _ in range(k):
        alpha = (r @ r) / (p @ a @ p)
        x = x + alpha * p
        r_new = r - alpha * (a @ p)
        p = r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
    return x


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


def test_tolerance_mode_reaches_dense_solution() -> None:
    a, b = spd()
    x_ref = torch.linalg.solve(a, b)
    x, info = cg(lambda u: a @ u, b, tol=1e-12, max_iter=200)
    assert info.converged and info.method == "cg"
    assert rel(x, x_ref) < 1e-9
    assert float((b - a @ x).norm() / b.norm()) <= 1e-12
    assert info.rel_residual <= 1e-12
    # it stops at the FIRST iterate meeting tol: one iteration fewer does not meet it
    _, prev = cg(lambda u: a @ u, b, tol=0.0, max_iter=info.iterations - 1)
    assert not prev.converged and prev.rel_residual > 1e-12


@pytest.mark.parametrize("k", [1, 3, 7])
def test_fixed_mode_equals_textbook_recursion(k: int) -> None:
    a, b = spd()
    expected = textbook_cg(a, b, k)
    assert rel(cg_fixed(lambda u: a @ u, b, k), expected) < 1e-12
    x_tol0, info = cg(lambda u: a @ u, b, tol=0.0, max_iter=k)  # tol 0: the same k iterations, with checks
    assert info.iterations == k and rel(x_tol0, expected) < 1e-12


def test_fixed_mode_runs_under_vmap_and_is_safe_once_converged() -> None:
    a, b = spd(n=6, cond=10.0)
    bs = torch.stack([b, 2 * b, torch.zeros_like(b)])
    xs = torch.vmap(lambda v: cg_fixed(lambda u: a @ u, v, 30))(bs)  # 30 > n: steps past convergence
    assert torch.isfinite(xs).all()
    x_ref = torch.linalg.solve(a, bs.T).T
    assert float((xs - x_ref).norm() / x_ref.norm()) < 1e-10
    assert float(xs[2].abs().max()) == 0.0


def test_warm_start() -> None:
    a, b = spd()
    x_ref = torch.linalg.solve(a, b)
    calls = []

    def matvec(u: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return a @ u

    x, info = cg(matvec, b, x0=x_ref, ax0=a @ x_ref, tol=1e-10)
    assert info.iterations == 0 and not calls and torch.equal(x, x_ref)
    x0 = x_ref + 0.1 * torch.randn(b.shape, generator=torch.Generator().manual_seed(3), dtype=DT)
    x, info = cg(matvec, b, x0=x0, tol=1e-12, max_iter=200)
    assert info.converged and rel(x, x_ref) < 1e-9
    assert len(calls) == info.iterations + 1  # + the start residual b - A x0 (no ax0 given)
    # a warm start close to the solution needs fewer iterations than from zero
    _, cold = cg(lambda u: a @ u, b, tol=1e-12, max_iter=200)
    x_near = x_ref + 1e-6 * (x0 - x_ref)
    _, warm = cg(lambda u: a @ u, b, x0=x_near, tol=1e-12, max_iter=200)
    assert warm.iterations < cold.iterations
    # fixed mode from x0 equals the textbook recursion on the residual system A d = b - A x0
    d = textbook_cg(a, b - a @ x0, 4)
    assert rel(cg_fixed(lambda u: a @ u, b, 4, x0=x0), x0 + d) < 1e-12


def test_preconditioner() -> None:
    a, b = spd(cond=1e5)
    x_ref = torch.linalg.solve(a, b)
    a_inv = torch.linalg.inv(a)
    x, info = cg(lambda u: a @ u, b, precond=lambda r: a_inv @ r, tol=1e-12, max_iter=200)
    assert info.method == "pcg" and info.iterations == 1 and rel(x, x_ref) < 1e-9  # exact M^-1: one step
    # a Jacobi preconditioner on a badly scaled matrix: fewer iterations than plain CG, same solution
    s = torch.diag(torch.logspace(0, 3, b.numel(), dtype=DT))
    a2 = s @ a @ s
    x2_ref = torch.linalg.solve(a2, b)
    diag = torch.diagonal(a2)
    x2, pre = cg(lambda u: a2 @ u, b, precond=lambda r: r / diag, tol=1e-10, max_iter=2000)
    _, plain = cg(lambda u: a2 @ u, b, tol=1e-10, max_iter=2000)
    assert pre.converged and plain.converged and pre.iterations < plain.iterations
    assert rel(x2, x2_ref) < 1e-6
    # fixed mode with the preconditioner agrees with tolerance mode run for the same number of iterations
    x_fixed = cg_fixed(lambda u: a2 @ u, b, 5, precond=lambda r: r / diag)
    x_tol, _ = cg(lambda u: a2 @ u, b, precond=lambda r: r / diag, tol=0.0, max_iter=5)
    assert rel(x_fixed, x_tol) < 1e-12


def test_indefinite_and_not_converged() -> None:
    h = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=DT))
    with pytest.raises(IndefiniteHessianError, match="damping"):
        cg(lambda u: h @ u, torch.ones(3, dtype=DT))
    a, b = spd(cond=1e6)
    with pytest.raises(SolverNotConvergedError, match="max_iter"):
        cg(lambda u: a @ u, b, tol=1e-14, max_iter=2, strict=True)
    x, info = cg(lambda u: a @ u, b, tol=1e-14, max_iter=2)
    assert not info.converged and info.iterations == 2 and torch.isfinite(x).all()
    # b = 0: the solution 0 at no cost (no curvature is measured on a zero direction)
    x, info = cg(lambda u: a @ u, torch.zeros_like(b))
    assert info.iterations == 0 and float(x.abs().max()) == 0.0


def test_successive_right_hand_sides_share_earlier_solutions() -> None:
    a, b0 = spd(n=60, cond=1e4, seed=1)
    gen = torch.Generator().manual_seed(2)
    rhs = b0 + 0.2 * torch.randn(8, 60, generator=gen, dtype=DT)  # correlated, like eval-task gradients
    rhs = torch.cat([rhs, (rhs[0] - 2.0 * rhs[3]).unsqueeze(0)])  # a row in the span of earlier rows
    x_ref = torch.linalg.solve(a, rhs.T).T
    calls = []

    def matvec(u: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return a @ u

    xs, infos = cg_successive(matvec, rhs, tol=1e-10, max_iter=500)
    cold_xs, cold = cg_successive(lambda u: a @ u, rhs, tol=1e-10, max_iter=500, project=False)
    assert all(i.converged for i in infos + cold)
    for x, x_cold, want in zip(xs, cold_xs, x_ref):
        assert rel(x, want) < 1e-6 and rel(x_cold, want) < 1e-6
    # the Galerkin start of the row in the span is its solution up to the earlier rows' residuals (r_0 - 2 r_3, about
    # 3 tol relative, above this row's tol): a few iterations, against ~200 from 0
    assert infos[-1].iterations <= cold[-1].iterations // 10
    assert infos[0].iterations == cold[0].iterations  # the first row has nothing to start from
    assert sum(i.iterations for i in infos) < sum(i.iterations for i in cold)
    assert len(calls) == sum(i.iterations for i in infos)  # the start costs no matvec
    # each row's solve is cg's from the projected start: a cold row-by-row solve is the same as cg
    x1, info1 = cg(lambda u: a @ u, rhs[1], tol=1e-10, max_iter=500)
    assert torch.equal(x1, cold_xs[1]) and info1.iterations == cold[1].iterations
    with pytest.raises(ValueError, match="one right-hand side per row"):
        cg_successive(matvec, b0)
