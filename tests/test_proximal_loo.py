"""Fast converged leave-one-out for the proximal inner problem, against the plain path (float64).

The plain path (``metainf.groundtruth.converged.retrain``): L-BFGS from lam* down to ||grad F_-u|| <= 1e-4, then Newton
on dense total Hessians to the tolerance. The fast paths: ``chord_newton`` (quasi-Newton from the exact start Hessian
H0 = H_-u(lam*), one gradient per step, BFGS-updated or the pure chord iteration) and ``retrain_many`` (those runs
for many units in lockstep on batched evaluations, ``stacked_value_and_grad``). Both stop at the same gradient
tolerance, so they must land on the plain path's minimiser.

The problem is well posed on purpose: 8 tasks (removing one is a small change), beta = 4 (the inner problems have a
unique solution: warm- and cold-started solves agree) and delta = 0.5. On the 3-task, beta = 1 problem of
``test_dense_proximal.py`` leave-one-out retraining is not well defined: there the inner problems
L_S + beta/2 ||theta - lam||^2 have several local minima at lam* (Hess L_S down to -0.8 beta; the inner solution
reached by warm starts along training and the one solved from lam differ by ~1 for 2 of 3 tasks), so F depends on
the path of the inner solves, and removing a task (a third of the data) moves lam* by ~1.5, out of its basin.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from metainf.core.bilevel import ProximalInner, TaskData, UnrolledInner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective, stacked_value_and_grad
from metainf.groundtruth.converged import noise_floor, removal_objective, retrain, retrain_many
from metainf.train import chord_newton, task_total_hessians, total_hessian, train_converged

DT = torch.float64
N_TASKS, N_S, N_Q, N_WAY, INPUT = 8, 4, 4, 3, (1, 3, 3)
BETA, DELTA, TOL = 4.0, 0.5, 1e-10
JOBS = [("task", 0, None), ("task", 3, None), ("support", 1, 2), ("query", 2, 1)]


def make_tasks(seed: int) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    return TaskData(
        xs=torch.rand(N_TASKS, N_S, *INPUT, generator=g, dtype=DT),
        ys=torch.randint(0, N_WAY, (N_TASKS, N_S), generator=g),
        ws=torch.ones(N_TASKS, N_S, dtype=DT),
        xq=torch.rand(N_TASKS, N_Q, *INPUT, generator=g, dtype=DT),
        yq=torch.randint(0, N_WAY, (N_TASKS, N_Q), generator=g),
        wq=torch.ones(N_TASKS, N_Q, dtype=DT),
    )


@pytest.fixture(scope="module")
def problem():
    """(objective, eval objective, lam*, H, H_k) with exact dense inner solves (fast at P = 42)."""
    model = build_model("mlp", INPUT, N_WAY, hidden=(3,))
    inner = ProximalInner(beta=BETA, inner_solver="dense")
    obj = MetaObjective(model, inner, make_tasks(0), delta=DELTA)
    ev = MetaObjective(model, inner, make_tasks(1))
    res = train_converged(obj, model.init(0, dtype=DT), tol=TOL, max_iter=300)
    assert res.converged and res.min_eigenvalue is not None and res.min_eigenvalue > 0
    return obj, ev, res.lam, total_hessian(obj, res.lam), task_total_hessians(obj, res.lam)


def start_hessian(obj: MetaObjective, h: torch.Tensor, hk: torch.Tensor, kind: str, task: int) -> torch.Tensor:
    """The exact total Hessian at lam* of F without a task; H for a point."""
    return h - obj.tau[task] * hk[task] / obj.n_tasks if kind == "task" else h


def test_inner_solutions_are_unique(problem) -> None:
    obj, _, lam, _, _ = problem
    cold = MetaObjective(obj.model, obj.inner, obj.tasks, obj.delta).state_at(lam)
    assert float((cold - obj.state_at(lam)).norm()) <= 1e-12


def test_with_weights_resolves_inner_problems_when_support_weights_change(problem) -> None:
    obj, _, lam, _, _ = problem
    state = obj.state_at(lam)
    for kind, task, point in JOBS:
        robj = removal_objective(obj, kind, task, point)
        fresh = MetaObjective(obj.model, obj.inner, robj.tasks, obj.delta, robj.tau.clone())
        g, g_ref = robj.grad(lam), fresh.grad(lam)
        assert float((g - g_ref).norm()) <= 1e-12 * float(g_ref.norm()), kind
        if kind != "support":  # tau and wq leave the inner problems alone: the cached solutions are reused
            assert robj.state_at(lam) is state
    # before the fix the support copy reused the old theta_k at lam*: its gradient there was that of another F
    stale = removal_objective(obj, "support", 1, 2)
    stale._state_lam = obj._state_lam
    fresh = MetaObjective(obj.model, obj.inner, stale.tasks, obj.delta)
    assert float((stale.grad(lam) - fresh.grad(lam)).norm()) > 1e-4


@pytest.mark.parametrize("inner_kind", ["proximal", "unrolled"])
def test_stacked_evaluation_matches_each_copy(problem, inner_kind: str) -> None:
    obj, _, lam, _, _ = problem
    if inner_kind == "unrolled":
        obj = MetaObjective(obj.model, UnrolledInner(steps=2, lr=0.3), obj.tasks, obj.delta)
    gen = torch.Generator().manual_seed(1)
    copies = [removal_objective(obj, *job) for job in JOBS]
    lams = torch.stack([lam + 0.05 * torch.randn(lam.shape, generator=gen, dtype=DT) for _ in copies])
    out = stacked_value_and_grad(obj, lams, torch.stack([c.tau for c in copies]),
                                 torch.stack([c.tasks.ws for c in copies]), torch.stack([c.tasks.wq for c in copies]),
                                 obj.state_at(lam))
    assert bool(out.inner_ok.all())
    for u, c in enumerate(copies):
        value, g = c.value_and_grad(lams[u])
        assert abs(float(out.values[u] - value)) <= 1e-12 * abs(float(value))
        assert float((out.grads[u] - g).norm()) <= 1e-10 * float(g.norm())
        assert float((out.losses[u] - c.task_losses(lams[u])).abs().max()) <= 1e-12
        if inner_kind == "proximal":
            assert float((out.states[u] - c.state_at(lams[u])).abs().max()) <= 1e-10


@pytest.mark.parametrize("bfgs", [True, False], ids=["bfgs", "chord"])
@pytest.mark.parametrize("job", JOBS, ids=lambda j: f"{j[0]}{j[1]}")
def test_quasi_newton_from_start_hessian_reaches_the_plain_minimiser(problem, job, bfgs: bool) -> None:
    obj, ev, lam, h, hk = problem
    kind, task, point = job
    h0 = start_hessian(obj, h, hk, kind, task)
    plain = retrain(obj, lam, ev, kind, task, point, tol=TOL, hessian=h0)
    fast = chord_newton(removal_objective(obj, kind, task, point), lam, h0, tol=TOL, bfgs=bfgs)
    assert plain.converged and fast.converged and fast.grad_norm <= TOL
    assert fast.iterations <= 10  # evaluations of F, start included
    # both meet ||grad|| <= 1e-10 at a minimum with Hessian eigenvalues >= ~0.2: the points agree to ~1e-9
    assert float((fast.lam - plain.lam).norm()) <= 1e-8
    effect = float(ev.mean_loss(fast.lam) - ev.mean_loss(lam))
    assert abs(effect - plain.effect) <= 1e-10


def test_retrain_chord_matches_plain_within_noise_floor(problem) -> None:
    obj, ev, lam, h, hk = problem
    for kind, task, point in JOBS:
        h0 = start_hessian(obj, h, hk, kind, task)
        plain = retrain(obj, lam, ev, kind, task, point, tol=TOL, hessian=h0)
        fast = retrain(obj, lam, ev, kind, task, point, tol=TOL, hessian=h0, chord=True)
        floor = noise_floor(obj, lam, ev, kind, task, point, tol=TOL, hessian=h0)
        fast_floor = noise_floor(obj, lam, ev, kind, task, point, tol=TOL, hessian=h0, chord=True)
        assert fast.converged and plain.converged
        assert max(floor, fast_floor) <= 1e-10
        assert abs(fast.effect - plain.effect) <= max(floor, 1e-11) + 1e-10


def test_retrain_many_matches_retrain(problem) -> None:
    obj, ev, lam, h, hk = problem
    gen = torch.Generator().manual_seed(2)
    jobs = JOBS + [JOBS[0]]  # the last one from a perturbed start (as in noise_floor)
    starts = [lam] * len(JOBS) + [lam + 1e-3 * torch.randn(lam.shape, generator=gen, dtype=DT)]
    hessians = [start_hessian(obj, h, hk, kind, task) for kind, task, _ in jobs]
    many = retrain_many(obj, lam, ev, jobs, hessians, tol=TOL, starts=starts, batch=3)
    for (kind, task, point), start, h0, res in zip(jobs, starts, hessians, many):
        ref = retrain(obj, lam, ev, kind, task, point, tol=TOL, start=start, hessian=h0)
        assert res.converged and res.grad_norm <= TOL
        assert float((res.lam - ref.lam).norm()) <= 1e-8
        assert abs(res.effect - ref.effect) <= 1e-10


def test_retrain_many_falls_back_to_the_plain_path(problem, caplog: pytest.LogCaptureFixture) -> None:
    """The fallback is logged (DEBUG: an expected, handled event, never a user-facing warning) and still correct."""
    obj, ev, lam, _, _ = problem
    kind, task, point = JOBS[2]
    bad = -torch.eye(lam.numel(), dtype=DT)  # not positive definite: no quasi-Newton run
    with caplog.at_level(logging.DEBUG, logger="metainf.groundtruth.converged"), warnings.catch_warnings():
        warnings.simplefilter("error")
        (res,) = retrain_many(obj, lam, ev, [(kind, task, point)], [bad], tol=TOL)
    assert "falling back to the plain path" in caplog.text
    ref = retrain(obj, lam, ev, kind, task, point, tol=TOL)
    assert res.converged and abs(res.effect - ref.effect) <= 1e-10


def test_chord_newton_stops_only_at_the_tolerance(problem) -> None:
    obj, _, lam, h, hk = problem
    robj = removal_objective(obj, "task", 3, None)
    h0 = start_hessian(obj, h, hk, "task", 3)
    short = chord_newton(robj, lam, h0, tol=TOL, max_evals=2)
    assert not short.converged and short.grad_norm > TOL and short.iterations == 2
    loose = chord_newton(robj, lam, h0, tol=1.0)  # already met at the start: one evaluation, no step
    assert loose.converged and loose.iterations == 1 and torch.equal(loose.lam, lam)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        indefinite = chord_newton(robj, lam, -h0, tol=TOL)
    assert not indefinite.converged and indefinite.iterations == 0


def test_cg_options_give_the_same_inner_solutions_and_derivatives(problem) -> None:
    """``cg_hvp="vjp"`` (one linearisation of grad L_S per solve) and ``newton_cg_iters`` (inexact Newton directions)
    change the cost, not the operator or the polished inner solutions."""
    obj, _, lam, _, _ = problem
    ref = MetaObjective(obj.model, ProximalInner(beta=BETA, cg_iters=60), obj.tasks, obj.delta)
    fast = MetaObjective(obj.model, ProximalInner(beta=BETA, cg_iters=60, newton_cg_iters=4, cg_hvp="vjp"),
                         obj.tasks, obj.delta)
    point = lam + 0.05 * torch.randn(lam.shape, generator=torch.Generator().manual_seed(4), dtype=DT)
    assert float((fast.state_at(point) - ref.state_at(point)).abs().max()) <= 1e-10
    g_ref = ref.task_grads(point)
    assert float((fast.task_grads(point) - g_ref).norm()) <= 1e-12 * float(g_ref.norm())
    u = torch.randn(lam.shape, generator=torch.Generator().manual_seed(5), dtype=DT)
    hu = ref.hvp(point, u)
    assert float((fast.hvp(point, u) - hu).norm()) <= 1e-12 * float(hu.norm())
    assert fast.inner.config()["cg_hvp"] == "vjp" and "cg_hvp" not in ref.inner.config()
    with pytest.raises(ValueError, match="cg_hvp"):
        ProximalInner(cg_hvp="fwd")
    with pytest.raises(ValueError, match="newton_cg_iters"):
        ProximalInner(newton_cg_iters=0)
