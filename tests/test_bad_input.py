"""Bad input and ill-posed problems fail early with errors that say what to change.

- malformed task tensors -> ``ValueError`` from ``MetaObjective`` naming the field and the expected shape;
- a non-finite loss in ``train_converged``, ``train_stochastic`` and in scoring -> ``NonFiniteError`` naming the
  quantity that went non-finite and the knobs (learning rates, delta, beta, float64);
- CG stopping short -> ``SolverNotConvergedError`` naming max_iter / damping / tol;
- an indefinite total Hessian -> ``IndefiniteHessianError`` suggesting damping; with that damping the solve succeeds.
"""

from __future__ import annotations

import pytest
import torch

from metainf.core.bilevel import TaskData, UnrolledInner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective, NonFiniteError
from metainf.data.tasks import TaskPool
from metainf.influence import InfluenceConfig, eval_vector, task_scores
from metainf.linalg.solvers import IndefiniteHessianError, SolverNotConvergedError, solve
from metainf.train import train_converged, train_stochastic

DT = torch.float64
M, S, Q, WAY = 4, 3, 3, 3
INPUT = (1, 3, 3)
HINTS = ("learning rate", "beta", "delta", "float64")


def make_tasks(seed: int = 0) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    return TaskData(
        xs=torch.rand(M, S, *INPUT, generator=g, dtype=DT), ys=torch.randint(0, WAY, (M, S), generator=g),
        ws=torch.ones(M, S, dtype=DT),
        xq=torch.rand(M, Q, *INPUT, generator=g, dtype=DT), yq=torch.randint(0, WAY, (M, Q), generator=g),
        wq=torch.ones(M, Q, dtype=DT),
    )


def mlp():
    return build_model("mlp", INPUT, WAY, hidden=(3,))


def objective(tasks: TaskData | None = None, lr: float = 0.4, delta: float = 0.0, **kw) -> MetaObjective:
    return MetaObjective(mlp(), UnrolledInner(steps=1, lr=lr), make_tasks() if tasks is None else tasks,
                         delta=delta, chunk=None, **kw)


# -- malformed task pools -------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, bad, expected", [
    ("ws", torch.ones(M, S + 1, dtype=DT), f"({M}, {S})"),
    ("wq", torch.ones(M - 1, Q, dtype=DT), f"({M}, {Q})"),
    ("yq", torch.zeros(M, Q + 2, dtype=torch.long), f"({M}, {Q})"),
    ("xq", torch.rand(M, Q, 1, 4, 4, dtype=DT), "(1, 3, 3)"),
])
def test_mismatched_shapes_name_field_and_expected_shape(field: str, bad: torch.Tensor, expected: str) -> None:
    tasks = make_tasks()._replace(**{field: bad})
    with pytest.raises(ValueError) as info:
        objective(tasks)
    msg = str(info.value)
    assert field in msg and expected in msg, msg


def test_wrong_tau_and_float_labels() -> None:
    with pytest.raises(ValueError, match=r"tau has shape \(3,\), expected \(4,\)"):
        objective(tau=torch.ones(3, dtype=DT))
    tasks = make_tasks()
    with pytest.raises(ValueError, match="ys must hold integer class labels"):
        objective(tasks._replace(ys=tasks.ys.to(DT)))


def test_model_built_for_other_inputs_or_ways() -> None:
    """Images at another size than the model was built for, and labels beyond the model's outputs."""
    tasks = make_tasks()
    big = tasks._replace(xs=torch.rand(M, S, 1, 5, 5, dtype=DT), xq=torch.rand(M, Q, 1, 5, 5, dtype=DT))
    with pytest.raises(ValueError, match=r"does not accept the task inputs of per-point shape \(1, 5, 5\)") as info:
        objective(big)
    assert "image_size" in str(info.value) and "input_shape" in str(info.value)
    with pytest.raises(ValueError, match=r"yq has labels in 7\.\.7 but the model has 3 outputs") as info:
        objective(tasks._replace(yq=tasks.yq.clone().fill_(7)))
    assert "expected labels 0..2" in str(info.value)


def test_task_pool_with_wrong_query_image_size() -> None:
    x = torch.rand(2, 3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"query images \(1, 6, 6\) differ"):
        TaskPool("p", x, torch.zeros(2, 3, dtype=torch.long), torch.rand(2, 3, 1, 6, 6),
                 torch.zeros(2, 3, dtype=torch.long), ["a", "b"], n_way=1)


# -- non-finite losses --------------------------------------------------------------------------------------
def assert_hint(info: pytest.ExceptionInfo, *names: str) -> None:
    msg = str(info.value)
    assert "not finite" in msg and any(n in msg for n in names), msg
    assert any(h in msg for h in HINTS), msg


def corrupted_tasks() -> TaskData:
    """One query image of task 2 holds a NaN pixel (a corrupted file): its loss, and every gradient, is NaN."""
    tasks = make_tasks()
    xq = tasks.xq.clone()
    xq[2, 1, 0, 1, 1] = float("nan")
    return tasks._replace(xq=xq)


def test_non_finite_in_train_converged() -> None:
    obj = objective(corrupted_tasks())
    with pytest.raises(NonFiniteError) as info:
        train_converged(obj, obj.model.init(0), tol=1e-8, max_iter=10)
    assert_hint(info, "task loss", "meta-objective", "gradient")


def test_non_finite_in_train_stochastic() -> None:
    obj = objective(corrupted_tasks())
    with pytest.raises(NonFiniteError) as info:  # one epoch (M / batch steps) reaches the corrupted task
        train_stochastic(obj, obj.model.init(0), steps=M // 2, batch=2, lr=0.1, optimizer="adam")
    assert_hint(info, "gradient")


def test_non_finite_in_scoring() -> None:
    """Scoring at a lam that holds NaN (e.g. a diverged checkpoint): the evaluation gradient / HVP is caught."""
    obj = objective(delta=1.0)
    lam = obj.model.init(0)
    lam[3] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        eval_vector(obj, lam, objective(make_tasks(1)), InfluenceConfig())
    assert_hint(info, "gradient", "Hessian")
    with pytest.raises(NonFiniteError) as info:
        task_scores(obj, lam, torch.ones_like(lam))
    assert_hint(info, "gradient")


# -- solvers ------------------------------------------------------------------------------------------------
def test_cg_not_converged_says_what_to_change() -> None:
    a = torch.diag(torch.logspace(0, 6, 12, dtype=DT))
    with pytest.raises(SolverNotConvergedError) as info:
        solve(lambda u: a @ u, torch.ones(12, dtype=DT), "cg", tol=1e-12, max_iter=3)
    msg = str(info.value)
    assert all(k in msg for k in ("max_iter", "damping", "tol")), msg
    # the same through the real objective (delta = 1 keeps it positive definite, so only max_iter is short)
    obj = objective(delta=1.0)
    with pytest.raises(SolverNotConvergedError, match="max_iter"):
        eval_vector(obj, obj.model.init(0), objective(make_tasks(1)), InfluenceConfig(max_iter=1, tol=1e-14))


def test_indefinite_stand_in_hessian() -> None:
    h = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=DT))
    b = torch.ones(3, dtype=DT)
    for method in ("dense", "cg"):
        with pytest.raises(IndefiniteHessianError, match="damping"):
            solve(lambda u: h @ u, b, method)
        x, _ = solve(lambda u: h @ u, b, method, damping=2.5, tol=1e-12)
        assert torch.allclose(x, b / (torch.diagonal(h) + 2.5), atol=1e-10)


def test_indefinite_total_hessian_needs_damping() -> None:
    """At a random initialisation the total Hessian of the real meta-objective is indefinite (delta = 0)."""
    obj, ev = objective(), objective(make_tasks(1))
    lam = obj.model.init(0)
    lo = float(torch.linalg.eigvalsh(obj.dense_hessian(lam))[0])
    assert lo < 0
    with pytest.raises(IndefiniteHessianError) as info:
        eval_vector(obj, lam, ev, InfluenceConfig(solver="dense"))
    msg = str(info.value)
    assert "damping" in msg and f"{-lo:.3e}" in msg, msg
    damping = -lo + 0.05
    v_dense, info_d = eval_vector(obj, lam, ev, InfluenceConfig(solver="dense", damping=damping))
    v_cg, _ = eval_vector(obj, lam, ev, InfluenceConfig(solver="cg", damping=damping, tol=1e-12, max_iter=2000))
    assert info_d.min_eigenvalue is not None and info_d.min_eigenvalue > 0
    assert float((v_dense - v_cg).norm() / v_dense.norm()) <= 1e-6
