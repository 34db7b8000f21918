"""The method registry: a plugin method outside the package, unknown names, and the output contract of run_method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metainf.core.bilevel import TaskData, UnrolledInner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective
from metainf.methods import AttributionProblem, UnknownMethodError, available_methods, get_method, run_method

DT = torch.float64


@pytest.fixture(autouse=True)
def _tests_dir_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


@pytest.fixture(scope="module")
def problem() -> AttributionProblem:
    g = torch.Generator().manual_seed(0)
    m, s, q = 4, 3, 3

    def tasks(n: int) -> TaskData:
        return TaskData(torch.rand(n, s, 1, 4, 4, generator=g, dtype=DT), torch.randint(0, 3, (n, s), generator=g),
                        torch.ones(n, s, dtype=DT), torch.rand(n, q, 1, 4, 4, generator=g, dtype=DT),
                        torch.randint(0, 3, (n, q), generator=g), torch.ones(n, q, dtype=DT))

    model = build_model("mlp", (1, 4, 4), 3, hidden=(4,))
    inner = UnrolledInner(steps=1, lr=0.4)
    return AttributionProblem(MetaObjective(model, inner, tasks(m)), model.init(0),
                              MetaObjective(model, inner, tasks(2)))


def test_plugin_by_module_class_runs_unchanged(problem: AttributionProblem):
    method = get_method("plugin_method:NormScore", scale=2.0)
    scores = run_method(method, problem, "task")
    assert scores.method == "plugin_norm" and scores.kind == "task"
    expected = 2.0 * problem.objective.task_grads(problem.lam).norm(dim=1)
    assert torch.allclose(scores.values, expected)
    with pytest.raises(ValueError, match="does not score query units"):
        run_method(method, problem, "query")


def test_unknown_names_list_the_available_methods():
    with pytest.raises(UnknownMethodError) as info:
        get_method("no_such_method")
    message = str(info.value)
    for name in ("task_if", "grad_dot", "ga_unlearn", "single_level_if", "trak"):
        assert name in available_methods() and name in message
    with pytest.raises(UnknownMethodError, match="cannot import"):
        get_method("no_such_module_xyz:Method")
    with pytest.raises(UnknownMethodError, match="has no attribute"):
        get_method("plugin_method:Missing")


def test_contract_violations_raise_clear_errors(problem: AttributionProblem):
    with pytest.raises(ValueError, match=r"shape \(5,\).*expected \(4,\)"):
        run_method(get_method("plugin_method:WrongShape"), problem, "task")
    with pytest.raises(ValueError, match="non-finite"):
        run_method(get_method("plugin_method:NonFinite"), problem, "task")


def test_harness_accepts_plugin_method_by_reference(tmp_path: Path) -> None:
    """``metainf-repro run E3 --method plugin_method:NormScore`` is accepted as it is; a broken reference is not."""
    from replication import runner
    from replication.errors import UsageError

    request = runner.RunRequest("E3", "mnist", "smoke", methods=("task_if", "plugin_method:NormScore"),
                                results_dir=tmp_path / "res", wandb_mode="disabled")
    prepared = runner.prepare(request)
    assert "plugin_method:NormScore" in prepared.methods
    bad = runner.RunRequest("E3", "mnist", "smoke", methods=("plugin_method:Missing",), results_dir=tmp_path / "r2",
                            wandb_mode="disabled")
    with pytest.raises(UsageError, match="Missing"):
        runner.prepare(bad)
