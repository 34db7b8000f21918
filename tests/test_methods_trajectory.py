"""Trajectory-based methods (TracIn, TracInCP, DVEmb) and trajectory-specific LOO on a tiny float64 problem.

MLP on random data, 6 tasks, 5 outer steps (unrolled inner problem). Sign convention everywhere:
score ~ L_eval(without u) - L_eval(with u). A unit's weight omega enters training as in ``train_stochastic``;
removal is omega: 1 -> 0, so the first-order change is -dL_eval(lam_T)/d omega, here by central differences of
the training map (``train_stochastic`` on the objective with the weight at 1 +- eps).
"""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev

from metainf.core.bilevel import ProximalInner, TaskData, UnrolledInner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective
from metainf.groundtruth.trajectory import replay, trajectory_loo, trajectory_loo_all, trajectory_loo_many
from metainf.methods import AttributionProblem, get_method, run_method
from metainf.methods.trajectory import DVEmbExact, DVEmbFisher, TracIn, TracInCP, phase_contributions
from metainf.train import train_stochastic
from tests.fixtures_tasks import DT, INPUT, N_S, N_WAY, make_tasks

N_TASKS = 6
EPS = 1e-4
KINDS = ("task", "support", "query")
POINTS = [(0, 1), (3, 2), (5, 0)]  # (task, point) checked by finite differences



def make_problem(steps: int = 5, batch: int = 2, lr: float = 0.1, optimizer: str = "sgd", record_every: int = 1,
                 first_order: bool = False, inner_steps: int = 1) -> AttributionProblem:
    model = build_model("mlp", INPUT, N_WAY, hidden=(4,))
    inner = UnrolledInner(steps=inner_steps, lr=0.4, first_order=first_order)
    obj = MetaObjective(model, inner, make_tasks(0, N_TASKS), delta=0.01)
    eval_obj = MetaObjective(model, inner, make_tasks(1, 4))
    cfg = {"steps": steps, "batch": batch, "lr": lr, "optimizer": optimizer, "seed": 0, "record_every": record_every}
    lam, traj = train_stochastic(obj, model.init(0, dtype=DT), **cfg)
    return AttributionProblem(obj, lam, eval_obj, traj, cfg)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prob() -> AttributionProblem:
    return make_problem()


def weighted(obj: MetaObjective, kind: str, task: int, point: int | None, w: float) -> MetaObjective:
    """The objective with one unit's weight set to w (in every step, as its task's weight is only read then)."""
    if kind == "task":
        tau = obj.tau.clone()
        tau[task] = w
        return obj.with_weights(tau=tau)
    name = "ws" if kind == "support" else "wq"
    weights = getattr(obj.tasks, name).clone()
    weights[task, point] = w
    return obj.with_weights(**{name: weights})


def retrained_loss(p: AttributionProblem, kind: str, task: int, point: int | None, w: float) -> float:
    lam, _ = train_stochastic(weighted(p.objective, kind, task, point, w), p.trajectory.lams[0],
                              **p.train_config)
    return float(p.eval_objective.mean_loss(lam))


def first_order_removal(p: AttributionProblem, kind: str, task: int, point: int | None) -> float:
    """-dL_eval(lam_T)/d omega at omega = 1 by central differences of the training map."""
    plus = retrained_loss(p, kind, task, point, 1 + EPS)
    minus = retrained_loss(p, kind, task, point, 1 - EPS)
    return -(plus - minus) / (2 * EPS)


def units(kind: str) -> list[tuple[int, int | None]]:
    return [(k, None) for k in range(N_TASKS)] if kind == "task" else POINTS


def at(scores: torch.Tensor, task: int, point: int | None) -> float:
    return float(scores[task] if point is None else scores[task, point])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- (a) DVEmbExact is the exact first-order unrolled change ---------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_dvemb_exact_equals_finite_differences_of_training(prob: AttributionProblem, kind: str) -> None:
    scores = DVEmbExact().score(prob, kind)
    ours = torch.tensor([at(scores, k, j) for k, j in units(kind)], dtype=DT)
    ref = torch.tensor([first_order_removal(prob, kind, k, j) for k, j in units(kind)], dtype=DT)
    assert rel(ours, ref) < 1e-6


def test_dvemb_exact_through_adam_equals_finite_differences() -> None:
    p = make_problem(lr=0.05, optimizer="adam")
    method = DVEmbExact()
    for kind in KINDS:
        k, j = units(kind)[1]
        assert at(method.score(p, kind), k, j) == pytest.approx(first_order_removal(p, kind, k, j), rel=1e-6)


def test_dvemb_exact_proximal_inner_equals_finite_differences() -> None:
    """The paper's argmin inner problem (iMAML, implicit derivatives; dense inner solves), 3 steps."""
    model = build_model("mlp", INPUT, N_WAY, hidden=(4,))
    inner = ProximalInner(beta=2.0, inner_solver="dense")
    obj = MetaObjective(model, inner, make_tasks(0, N_TASKS), delta=0.01)
    cfg = {"steps": 3, "batch": 2, "lr": 0.1, "optimizer": "sgd", "seed": 0, "record_every": 1}
    lam, traj = train_stochastic(obj, model.init(0, dtype=DT), **cfg)
    p = AttributionProblem(obj, lam, MetaObjective(model, inner, make_tasks(1, 4)), traj, cfg)
    method = DVEmbExact()
    for kind, (k, j) in (("task", (0, None)), ("support", (0, 1)), ("query", (1, 2))):
        assert at(method.score(p, kind), k, j) == pytest.approx(first_order_removal(p, kind, k, j), rel=1e-6)


def test_missing_optimizer_in_train_config_is_detected() -> None:
    p = make_problem(steps=2, lr=0.05, optimizer="adam")
    p.train_config = {}
    with pytest.raises(ValueError, match="does not reproduce"):
        DVEmbExact().score(p, "task")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_replay_reproduces_the_recorded_run_bit_for_bit(dtype: torch.dtype, optimizer: str) -> None:
    """The replay of the recorded run (no lanes) takes the trainer's own step (``batch_objective(...).grad``, then
    ``optimizer_step``), so every iterate is identical, not only close: DVEmb and TracIn replay Conv-4 runs in
    float32 with Adam, where a rounding-level difference per step grows past the replay check within tens of steps
    (a summed-loss meta-gradient against per-task gradients: 3.6e-4 to 5.2e-4 relative by step 29-38 on E1)."""
    model = build_model("mlp", INPUT, N_WAY, hidden=(4,))
    tasks = TaskData(*(x.to(dtype) if x.is_floating_point() else x for x in make_tasks(0, N_TASKS)))
    obj = MetaObjective(model, UnrolledInner(steps=2, lr=0.4), tasks, delta=0.01)
    _, traj = train_stochastic(obj, model.init(0, dtype=dtype), steps=40, batch=3, lr=0.05, optimizer=optimizer)
    res = replay(obj, traj.lams[0], traj.schedule, traj.lrs, optimizer, keep=True)
    for step, recorded in zip(traj.steps, traj.lams):
        assert torch.equal(res.lams[step][0], recorded), f"step {step}"


def test_sparse_recording_replays_the_missing_iterates(prob: AttributionProblem) -> None:
    sparse = make_problem(record_every=2)
    assert sparse.trajectory.steps == [0, 2, 4, 5]
    for method in (DVEmbExact(), TracIn()):
        for kind in ("task", "support"):
            assert rel(method.score(sparse, kind), type(method)().score(prob, kind)) < 1e-10


# -- (b) TracInCP and TracIn against explicit loops ------------------------------------------------------------
def hand_unit_derivative(p: AttributionProblem, kind: str, lam: torch.Tensor, task: int,
                         v: torch.Tensor) -> torch.Tensor:
    """tau_k omega v^T d g_k / d omega for the units of one task, by jacrev through the task's meta-gradient."""
    obj = p.objective
    t = TaskData(*(x[task] for x in obj.tasks))
    inner, model = obj.inner, obj.model
    if kind == "task":
        return obj.tau[task] * inner.total_grad(model, lam, t, lam) @ v
    name = "ws" if kind == "support" else "wq"

    def g(w: torch.Tensor) -> torch.Tensor:
        return inner.total_grad(model, lam, t._replace(**{name: w}), lam)

    return obj.tau[task] * getattr(t, name) * (v @ jacrev(g)(getattr(t, name)))


def hand_tracin_cp(p: AttributionProblem, kind: str, checkpoints: list[tuple[int, list[int]]]) -> torch.Tensor:
    """sum over checkpoints c and their steps t, over the slots of B_t: lr_t/|B_t| r_u(lam_c; grad L_eval(lam_c))."""
    out = torch.zeros(p.shape(kind), dtype=DT)
    for c_step, steps in checkpoints:
        lam = p.trajectory.lams[p.trajectory.steps.index(c_step)]
        v = p.eval_objective.mean_loss_grad(lam)
        for t in steps:
            batch = p.trajectory.schedule[t]
            for k in batch:
                out[k] += p.trajectory.lrs[t] / len(batch) * hand_unit_derivative(p, kind, lam, k, v)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_tracin_cp_two_checkpoints_equals_hand_computation(kind: str) -> None:
    p = make_problem(steps=6, batch=4, record_every=3)  # batch 4 of 6 tasks: some step visits a task twice
    assert p.trajectory.steps == [0, 3, 6]
    assert any(len(set(b)) < len(b) for b in p.trajectory.schedule)
    end = TracInCP().score(p, kind)
    assert rel(end, hand_tracin_cp(p, kind, [(3, [0, 1, 2]), (6, [3, 4, 5])])) < 1e-12
    start = TracInCP(at="start").score(p, kind)
    assert rel(start, hand_tracin_cp(p, kind, [(0, [0, 1, 2]), (3, [3, 4, 5])])) < 1e-12
    single = TracInCP(interval=6).score(p, kind)  # one checkpoint (lam_6) for all six steps
    assert rel(single, hand_tracin_cp(p, kind, [(6, list(range(6)))])) < 1e-12


def test_tracin_is_tracin_cp_with_every_step_as_start_checkpoint(prob: AttributionProblem) -> None:
    for kind in ("task", "query"):
        assert rel(TracIn().score(prob, kind), TracInCP(at="start").score(prob, kind)) < 1e-12


# -- DVEmbFisher against the dense product of its approximate Jacobians ----------------------------------------
@pytest.mark.parametrize("proj_dim", [None, 40])
def test_dvemb_fisher_equals_dense_fisher_unroll(prob: AttributionProblem, proj_dim: int | None) -> None:
    method = DVEmbFisher(proj_dim=proj_dim, seed=3)
    traj, obj = prob.trajectory, prob.objective
    n = prob.lam.numel()
    proj = torch.eye(n, dtype=DT) if proj_dim is None else method._projection(prob)
    w = proj @ prob.eval_objective.mean_loss_grad(traj.lams[-1])
    ref = {kind: torch.zeros(prob.shape(kind), dtype=DT) for kind in KINDS}
    for t in reversed(range(len(traj.schedule))):
        lam, lr, batch = traj.lams[t], traj.lrs[t], traj.schedule[t]
        e = lr * proj.T @ w
        for k in batch:
            for kind in KINDS:
                ref[kind][k] += hand_unit_derivative(prob, kind, lam, k, e) / len(batch)
        g = torch.stack([obj.tau[k] * obj.inner.total_grad(obj.model, lam, TaskData(*(x[k] for x in obj.tasks)), lam)
                         for k in batch]) @ proj.T
        w = ((1 - lr * obj.delta) * torch.eye(len(w), dtype=DT) - lr / len(batch) * g.T @ g) @ w
    for kind in KINDS:
        assert rel(method.score(prob, kind), ref[kind]) < 1e-12


# -- (c) trajectory-specific LOO ------------------------------------------------------------------------------
def test_trajectory_loo_all_occurrences_is_retraining_with_zero_weight(prob: AttributionProblem) -> None:
    lam_t = float(prob.eval_objective.mean_loss(prob.lam))
    for kind, (k, j) in (("task", (4, None)), ("support", (3, 2)), ("query", (5, 0))):
        expected = retrained_loss(prob, kind, k, j, 0.0) - lam_t
        assert trajectory_loo(prob, kind, k, j) == pytest.approx(expected, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_trajectory_loo_agrees_with_dvemb_exact(prob: AttributionProblem, kind: str) -> None:
    gt = trajectory_loo_all(prob, kind).flatten()
    pred = DVEmbExact().score(prob, kind).flatten()
    assert float(torch.corrcoef(torch.stack([gt, pred]))[0, 1]) > 0.9
    assert (torch.sign(gt) == torch.sign(pred)).double().mean() > 0.8


def test_single_occurrence_derivative_is_the_step_contribution(prob: AttributionProblem) -> None:
    """d/d omega of trajectory-LOO restricted to one visit = DVEmbExact's contribution of that visit's step."""
    schedule = prob.trajectory.schedule
    task = next(k for k in range(N_TASKS) if sum(b.count(k) for b in schedule) >= 2)
    steps = [t for t, b in enumerate(schedule) for k in b if k == task]
    method = DVEmbExact()
    for kind, point in (("task", None), ("support", 1)):
        per_step = method.step_scores(prob, kind)
        for occurrence, t in enumerate(steps):
            plus = trajectory_loo_many(prob, kind, [(task, point)], occurrence, scale=1 + EPS)[0]
            minus = trajectory_loo_many(prob, kind, [(task, point)], occurrence, scale=1 - EPS)[0]
            assert at(per_step[t], task, point) == pytest.approx(-float(plus - minus) / (2 * EPS), rel=1e-6)


def test_trajectory_loo_rejects_bad_units(prob: AttributionProblem) -> None:
    with pytest.raises(ValueError, match="occurrence"):
        trajectory_loo(prob, "task", 0, occurrence=99)
    with pytest.raises(ValueError, match="point index"):
        trajectory_loo(prob, "support", 0)
    with pytest.raises(ValueError, match="out of range"):
        trajectory_loo(prob, "task", N_TASKS)


# -- phases (E6) ----------------------------------------------------------------------------------------------
def test_phase_contributions_sum_to_the_score(prob: AttributionProblem) -> None:
    for name in ("dvemb_exact", "tracin_cp"):
        phases = phase_contributions(prob, "support", name, phases=3)
        assert phases.shape == (3, N_TASKS, N_S)
        assert rel(phases.sum(0), get_method(name).score(prob, "support")) < 1e-12
    with pytest.raises(ValueError, match="per-step"):
        phase_contributions(prob, "task", "task_if")


# -- (d) registry ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tracin", "tracin_cp", "dvemb_exact", "dvemb_fisher"])
def test_registry_runs_every_kind(prob: AttributionProblem, name: str) -> None:
    method = get_method(name, **({"proj_dim": 16} if name == "dvemb_fisher" else {}))
    assert method.name == name and method.needs_trajectory and method.kinds == KINDS
    for kind in KINDS:
        scores = run_method(method, prob, kind)
        assert tuple(scores.values.shape) == prob.shape(kind)
    no_traj = AttributionProblem(prob.objective, prob.lam, prob.eval_objective)
    with pytest.raises(ValueError, match="trajectory"):
        run_method(method, no_traj, "task")


def test_first_order_maml_scores_every_kind() -> None:
    """First-order MAML: DVEmbExact and support-point scores are defined (their exactness against finite
    differences of training is checked in tests/test_first_order.py)."""
    p = make_problem(steps=2, first_order=True)
    assert DVEmbExact().score(p, "task").shape == (N_TASKS,)
    support = TracIn().score(p, "support")
    assert support.shape == (N_TASKS, N_S) and float(support.abs().max()) > 0
    assert TracIn().score(p, "task").shape == (N_TASKS,)
