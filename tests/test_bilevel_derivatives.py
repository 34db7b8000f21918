"""Total derivatives of both inner problems against central finite differences (float64, tiny MLP).

Checks ``MetaObjective.grad`` / ``hvp`` / ``dense_hessian`` and the instance primitives ``weight_scores`` /
``dgrad_dweights`` of ``UnrolledInner`` and ``ProximalInner`` (CG and dense inner solver), plus the
non-finite guard. The proximal finite differences re-solve the inner problem at every perturbed point.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

from metainf.core.bilevel import ProximalInner, TaskData, UnrolledInner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective, NonFiniteError

DT = torch.float64
N_TASKS, N_S, N_Q, N_WAY = 3, 5, 3, 3  # N_Q != N_S: a 1/|S| for 1/|Q| mix-up shows
INPUT = (1, 4, 4)
NEWTON_FD = 4  # extra Newton steps after prepare (quadratic convergence from the warm start)

INNERS = {
    "unrolled": lambda: UnrolledInner(steps=2, lr=0.3),
    "proximal-cg": lambda: ProximalInner(beta=1.0),
    "proximal-dense": lambda: ProximalInner(beta=1.0, inner_solver="dense"),
}
PROXIMAL = ("proximal-cg", "proximal-dense")


def make_tasks(seed: int = 0, n_tasks: int = N_TASKS) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    return TaskData(
        xs=torch.rand(n_tasks, N_S, *INPUT, generator=g, dtype=DT),
        ys=torch.randint(0, N_WAY, (n_tasks, N_S), generator=g),
        ws=torch.ones(n_tasks, N_S, dtype=DT),
        xq=torch.rand(n_tasks, N_Q, *INPUT, generator=g, dtype=DT),
        yq=torch.randint(0, N_WAY, (n_tasks, N_Q), generator=g),
        wq=torch.ones(n_tasks, N_Q, dtype=DT),
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (b is the finite-difference reference)."""
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class Setup:
    def __init__(self, name: str):
        self.name = name
        self.model = build_model("mlp", INPUT, N_WAY, hidden=(5,))
        self.inner = INNERS[name]()
        self.obj = MetaObjective(self.model, self.inner, make_tasks(0), delta=0.01)
        self.lam = self.model.init(0, dtype=DT)
        self.gen = torch.Generator().manual_seed(1)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=DT)

    def task(self, k: int) -> TaskData:
        return TaskData(*(x[k] for x in self.obj.tasks))

    # total gradient of one task at fixed lam, as a function of its point weights (inner problem re-solved)
    def task_grads_at_weights(self, k: int, ws: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
        """Batched over the leading dim of ws / wq: g_k(lam; ws_b, wq_b), [B, P]."""
        state_k = self.obj.state_at(self.lam)[k]
        t = self.task(k)
        model, lam, inner = self.model, self.lam, self.inner
        if isinstance(inner, ProximalInner):
            # ground truth re-solve with exact dense linear algebra (CG Newton steps are too slow for 20 re-solves)
            inner = ProximalInner(beta=inner.beta, inner_solver="dense")

        def one(ws_b: torch.Tensor, wq_b: torch.Tensor) -> torch.Tensor:
            tb = t._replace(ws=ws_b, wq=wq_b)
            st = inner.prepare(model, lam, tb, state_k)
            if isinstance(inner, ProximalInner):
                st = inner.newton(model, lam, tb, st, NEWTON_FD)
            return inner.total_grad(model, lam, tb, st)

        return vmap(one)(ws, wq)


_SETUPS: dict[str, Setup] = {}


@pytest.fixture(params=list(INNERS))
def setup(request) -> Setup:
    if request.param not in _SETUPS:
        _SETUPS[request.param] = Setup(request.param)
    return _SETUPS[request.param]


# ---------------------------------------------------------------------------------------------------------------
def test_grad_matches_fd_of_value(setup: Setup):
    obj, lam, eps = setup.obj, setup.lam, 1e-5
    g = obj.grad(lam)
    dirs = setup.randn(3, lam.numel())
    analytic = dirs @ g
    fd = torch.stack([(obj.value(lam + eps * d) - obj.value(lam - eps * d)) / (2 * eps) for d in dirs])
    err = rel(analytic, fd)
    print(f"\n[{setup.name}] grad vs FD(value): rel err {err:.2e}")
    assert err <= 1e-6


def _fd_grad_richardson(obj: MetaObjective, lam: torch.Tensor, u: torch.Tensor, h: float) -> torch.Tensor:
    def central(s: float) -> torch.Tensor:
        return (obj.grad(lam + s * u) - obj.grad(lam - s * u)) / (2 * s)

    return (4 * central(h / 2) - central(h)) / 3


def test_hvp_matches_fd_of_grad(setup: Setup):
    obj, lam = setup.obj, setup.lam
    u = setup.randn(lam.numel())
    fd = _fd_grad_richardson(obj, lam, u, 1e-4)
    hv = obj.hvp(lam, u, "exact")
    err = rel(hv, fd)
    print(f"\n[{setup.name}] hvp(exact) vs FD(grad): rel err {err:.2e}")
    assert err <= 1e-4
    if setup.name in PROXIMAL:
        drop = obj.hvp(lam, u, "drop")
        err_drop = rel(drop, fd)
        print(f"[{setup.name}] hvp(drop) vs FD(grad): rel diff {err_drop:.2e}")
        assert err_drop > 1e-2, "H' should be a real term: dropping it must change the HVP"


def test_weight_scores_match_fd(setup: Setup):
    obj, lam, inner, model, eps = setup.obj, setup.lam, setup.inner, setup.model, 1e-5
    state = obj.state_at(lam)
    n_pts = N_S + N_Q
    worst = worst_dg = 0.0
    worst_frozen = float("inf")
    for k in range(obj.n_tasks):
        t, st = setup.task(k), state[k]
        v = setup.randn(lam.numel())
        d_ws, d_wq = inner.weight_scores(model, lam, t, st, v)
        # FD: perturb each support / query weight by +-eps (batched), re-solve, v . g_k
        base = torch.cat([t.ws, t.wq])
        pert = eps * torch.eye(n_pts, dtype=DT)
        w = torch.cat([base + pert, base - pert])
        gs = setup.task_grads_at_weights(k, w[:, :N_S], w[:, N_S:])
        fd = (gs[:n_pts] @ v - gs[n_pts:] @ v) / (2 * eps)
        analytic = torch.cat([d_ws, d_wq])
        err = rel(analytic, fd)
        worst = max(worst, err)
        assert err <= 1e-5, f"task {k}: weight_scores rel err {err:.2e}"

        if setup.name in PROXIMAL:
            f_ws, f_wq = inner.weight_scores(model, lam, t, st, v, variant="frozen")
            diff = rel(torch.cat([f_ws, f_wq]), fd)
            worst_frozen = min(worst_frozen, diff)
            assert diff > 1e-3, f"task {k}: frozen variant unexpectedly equals the full D_lam P (diff {diff:.2e})"

        # directional derivative of g_k along a random weight edit (es, eq)
        es, eq = setup.randn(N_S), setup.randn(N_Q)
        dg = inner.dgrad_dweights(model, lam, t, st, es, eq)
        w2 = torch.stack([torch.cat([t.ws + eps * es, t.wq + eps * eq]),
                          torch.cat([t.ws - eps * es, t.wq - eps * eq])])
        g2 = setup.task_grads_at_weights(k, w2[:, :N_S], w2[:, N_S:])
        fd_dg = (g2[0] - g2[1]) / (2 * eps)
        err_dg = rel(dg, fd_dg)
        worst_dg = max(worst_dg, err_dg)
        assert err_dg <= 1e-5, f"task {k}: dgrad_dweights rel err {err_dg:.2e}"
    print(f"\n[{setup.name}] weight_scores max rel err {worst:.2e}; dgrad_dweights max rel err {worst_dg:.2e}"
          + (f"; frozen min rel diff {worst_frozen:.2e}" if setup.name in PROXIMAL else ""))


def test_dense_hessian_symmetric_and_matches_hvps(setup: Setup):
    if setup.name in PROXIMAL:
        pytest.skip("n HVPs with 3 inner solves each are too slow here; proximal HVPs are checked against FD above")
    obj, lam = setup.obj, setup.lam
    h = obj.dense_hessian(lam)
    n = lam.numel()
    assert h.shape == (n, n)
    # raw stacked HVP columns (no symmetrisation) agree with the dense Hessian, i.e. they are symmetric already
    eye = torch.eye(n, dtype=DT)
    cols = torch.stack([obj.hvp(lam, eye[i]) for i in range(n)], dim=1)
    asym = float((cols - cols.T).norm() / cols.norm())
    err = rel(h, cols)
    # and along random directions
    u = setup.randn(n, 2)
    err_u = rel(h @ u, torch.stack([obj.hvp(lam, u[:, j]) for j in range(2)], dim=1))
    print(f"\n[{setup.name}] dense hessian: raw asym {asym:.2e}, vs stacked HVPs {err:.2e}, vs random HVPs {err_u:.2e}")
    assert asym <= 1e-8
    assert err <= 1e-8
    assert err_u <= 1e-8


@pytest.mark.parametrize("where", ["xs", "xq"])
def test_non_finite_input_raises(where: str, setup: Setup):
    tasks = make_tasks(0)
    x = getattr(tasks, where).clone()
    x[1, 2, 0, 1, 1] = float("nan")
    obj = MetaObjective(setup.model, setup.inner, tasks._replace(**{where: x}), delta=0.01)
    with pytest.raises(NonFiniteError) as info:
        obj.value(setup.lam)
    msg = str(info.value)
    assert "not finite" in msg
    assert any(hint in msg for hint in ("learning rate", "beta", "delta", "float64")), msg


def test_unrolled_objective_solves_no_inner_state(monkeypatch: pytest.MonkeyPatch):
    """The unrolled map keeps no state: value, gradient, HVP and a subset never call ``prepare`` (each would adapt
    every task once more), and the gradient still matches the stateful path's (a finite-difference check is above)."""
    s = Setup("unrolled")
    reference = s.obj.grad(s.lam)
    calls = []
    monkeypatch.setattr(s.inner, "prepare", lambda *a, **k: calls.append(1))
    obj = MetaObjective(s.model, s.inner, make_tasks(0), delta=0.01)
    lam = s.lam + 0.01  # a lam no cache has seen
    obj.value_and_grad(lam)
    obj.hvp(lam, s.randn(lam.numel()))
    obj.subset(lam, [0, 1]).grad(lam)
    torch.testing.assert_close(obj.grad(s.lam), reference, rtol=0, atol=0)
    assert calls == []


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("chunk", [None, 2])
def test_unrolled_gradient_from_summed_losses_equals_the_per_task_path(first_order: bool, chunk: int | None):
    """An unrolled problem's F and grad F come from one reverse pass of the summed task losses per chunk
    (``losses_and_data_grad``); they equal the per-task path (1/M) sum_k tau_k g_k + delta lam and the loss pass's
    F, with non-uniform tau and point weights, second and first order (whose surrogate's gradient is the FO-MAML
    map), in one chunk and in several."""
    model = build_model("mlp", INPUT, N_WAY, hidden=(5,))
    tasks = make_tasks(3)
    gen = torch.Generator().manual_seed(4)
    tasks = tasks._replace(ws=torch.rand(tasks.ws.shape, generator=gen, dtype=DT),
                           wq=torch.rand(tasks.wq.shape, generator=gen, dtype=DT))
    tau = torch.rand(N_TASKS, generator=gen, dtype=DT)
    obj = MetaObjective(model, UnrolledInner(steps=2, lr=0.3, first_order=first_order), tasks, delta=0.01, tau=tau,
                        chunk=chunk)
    lam = model.init(0, dtype=DT)
    per_task = tau @ obj.task_grads(lam) / N_TASKS + 0.01 * lam
    value, grad = obj.value_and_grad(lam)
    torch.testing.assert_close(grad, per_task, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(obj.grad(lam), per_task, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(value, obj.value(lam), rtol=1e-13, atol=0)
    with torch.no_grad():  # torch.optim.LBFGS calls its closure under no_grad
        torch.testing.assert_close(obj.grad(lam), per_task, rtol=1e-12, atol=1e-14)


def test_summed_loss_gradient_refuses_a_proximal_problem():
    s = Setup("proximal-cg")
    with pytest.raises(NotImplementedError, match="unrolled"):
        s.obj.losses_and_data_grad(s.lam)
