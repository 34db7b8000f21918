"""The paper's estimators as registry methods: task-IF / instance-IF (``task_if``), its empirical-Fisher variant
(``task_if_fisher``), its sketched-Hessian variant (``task_if_nystrom``) and direct-IF (``direct_if``).

Sign convention: score[u] ~ L_eval(without u) - L_eval(with u). See :mod:`metainf.influence` for the formulas,
:mod:`metainf.accel.fisher` for the Fisher curvature and :mod:`metainf.accel.nystrom` for the sketch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from metainf.accel.fisher import fisher_solve
from metainf.accel.nystrom import nystrom_solve
from metainf.influence import InfluenceConfig, direct_task_scores, eval_vector, instance_scores, task_scores
from metainf.methods.base import AttributionProblem
from metainf.solvers import SolveInfo


@dataclass
class TaskIF:
    """Task-IF for tasks (v . g_k / M) and instance-IF for support (two-stage proxy, ``variant``) and query points,
    with v = (damping I + H_F)^-1 grad L_eval from one solve per evaluation functional.

    ``solver``: any ``metainf.solvers.solve`` method (``cg``, ``dense``, ``neumann``) or ``fisher``: H_F replaced by
    the empirical-Fisher curvature (1/M) sum_k tau_k g_k g_k^T + (delta + damping) I, solved by Woodbury (no HVP;
    the task gradients it is built from also give the task scores)."""

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

    def _solve(self, problem: AttributionProblem) -> tuple[Tensor, Tensor | None]:
        """(v, the per-task total gradients G [M, P] if the solver formed them, else None)."""
        obj, lam = problem.objective, problem.lam
        if self.solver != "fisher":
            cfg = InfluenceConfig(self.solver, self.damping, self.hprime, self.tol, self.max_iter)
            return eval_vector(obj, lam, problem.eval_objective, cfg)[0], None
        grads, b = obj.task_grads(lam), problem.eval_objective.mean_loss_grad(lam)
        return fisher_solve(grads, b, obj.delta + self.damping, obj.tau)[0], grads

    def _v(self, problem: AttributionProblem) -> tuple[Tensor, Tensor | None]:
        key = id(problem)
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = self._solve(problem)
        return self._cache[key]

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        v, grads = self._v(problem)
        if kind == "task":
            return task_scores(problem.objective, problem.lam, v, grads)
        support, query = instance_scores(problem.objective, problem.lam, v, self.variant)
        return support if kind == "support" else query


@dataclass
class TaskIFFisher(TaskIF):
    """Task-IF with the empirical-Fisher total curvature (Woodbury solve, O(M^2 P + M^3) after the task gradients)."""

    solver: str = "fisher"
    name: str = "task_if_fisher"


@dataclass
class TaskIFNystrom(TaskIF):
    """Task-IF with v from a rank-``k`` sketch of the exact total Hessian (``metainf.accel.nystrom``).

    One batched pass of k total HVPs (plus one per ``power`` step) gives a low-rank model of H_data = H_F - delta I
    (``approx``: ``ritz`` Rayleigh-Ritz / block Krylov, or ``nystrom``) on the probes (``probes``: ``span`` =
    [grad L_eval, G^T R], or ``gauss``); v = (model + (delta + damping) I)^-1 grad L_eval by Woodbury, refined by
    up to ``pcg_iters`` preconditioned CG iterations on the exact H_F + damping I (to ``pcg_tol``; one total HVP
    each). Exact when the sketch has full rank (k >= P). Scores v . g_k / M use the task gradients the probes were
    built from. ``last_info`` holds the ``SolveInfo`` of the latest solve (PCG iterations, residual).

    Defaults (k = 3 span probes, one block-Krylov step: 6 total HVPs in 2 batched passes) are the cheapest setting
    measured with Spearman >= 0.98 against exact task-IF on the four E5 problems at 100 tasks
    (``scripts/measure_nystrom.py``): 6.4-7.9 meta-epochs, against 53-66 for CG."""

    solver: str = "nystrom"
    name: str = "task_if_nystrom"
    k: int = 3
    power: int = 1
    pcg_iters: int = 0
    pcg_tol: float = 1e-8
    probes: str = "span"
    approx: str = "ritz"
    chunk: int | None = 32
    seed: int = 0
    last_info: SolveInfo | None = field(default=None, repr=False)

    def _solve(self, problem: AttributionProblem) -> tuple[Tensor, Tensor | None]:
        obj, lam = problem.objective, problem.lam
        grads, b = obj.task_grads(lam), problem.eval_objective.mean_loss_grad(lam)
        v, self.last_info, _ = nystrom_solve(obj, lam, b, self.k, self.damping, grads, self.probes, self.approx,
                                             self.power, self.pcg_iters, self.pcg_tol, self.hprime, self.chunk,
                                             self.seed)
        return v, grads


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
