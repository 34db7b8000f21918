"""The paper's estimators as registry methods: task-IF / instance-IF (``task_if``) and direct-IF (``direct_if``).

Sign convention: score[u] ~ L_eval(without u) - L_eval(with u). See :mod:`metainf.influence` for the formulas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from metainf.influence import InfluenceConfig, direct_task_scores, eval_vector, instance_scores, task_scores
from metainf.methods.base import AttributionProblem


@dataclass
class TaskIF:
    """Task-IF for tasks (v . g_k / M) and instance-IF for support (two-stage proxy, ``variant``) and query points,
    with v = (damping I + H_F)^-1 grad L_eval from one solve per evaluation functional."""

    solver: str = "cg"
    damping: float = 0.0
    hprime: str = "exact"
    tol: float = 1e-8
    max_iter: int = 1000
    variant: str = "full"
    name: str = "task_if"
    kinds: tuple[str, ...] = ("task", "support", "query")
    needs_trajectory: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    def _v(self, problem: AttributionProblem) -> Tensor:
        key = id(problem)
        if key not in self._cache:
            cfg = InfluenceConfig(self.solver, self.damping, self.hprime, self.tol, self.max_iter)
            self._cache.clear()
            self._cache[key] = eval_vector(problem.objective, problem.lam, problem.eval_objective, cfg)[0]
        return self._cache[key]

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        v = self._v(problem)
        if kind == "task":
            return task_scores(problem.objective, problem.lam, v)
        support, query = instance_scores(problem.objective, problem.lam, v, self.variant)
        return support if kind == "support" else query


@dataclass
class DirectIF:
    """Direct-IF: partial derivatives only (theta_k's dependence on lam ignored), tasks only."""

    solver: str = "cg"
    damping: float = 0.0
    tol: float = 1e-8
    max_iter: int = 1000
    name: str = "direct_if"
    kinds: tuple[str, ...] = ("task",)
    needs_trajectory: bool = False

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        cfg = InfluenceConfig(self.solver, self.damping, "exact", self.tol, self.max_iter)
        return direct_task_scores(problem.objective, problem.lam, problem.eval_objective, cfg)
