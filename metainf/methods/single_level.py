"""Single-level influence functions: classic (Koh & Liang) IF with every training task as one data point.

The "task as data point" objective is the meta-objective itself, each task k contributing the datum loss
l_k(lam) = L_O^k(lam) (its post-adaptation query loss, a function of lam alone)::

    F(lam) = (1/M) sum_k tau_k l_k(lam) + (delta/2) ||lam||^2

Classic IF for removing datum k (Delta tau_k = -1), in the suite's sign convention (the negative of Koh & Liang's
up-weighting I_up,loss)::

    score[k] = grad L_eval^T (H + damping I)^-1 grad l_k / M          (positive: task k helps)

What distinguishes the variants is the curvature H:

``hessian="exact"``
    H = Hess F, the exact Hessian of the task-as-data-point objective (our ``MetaObjective.hvp`` with the
    third-order term H', solved by ``dense`` or ``cg``). Because l_k already contains the adaptation, this
    Hessian *is* the paper's total Hessian H_Total / M + delta I, so this variant equals task-IF
    (``task_if`` with ``hprime="exact"``) exactly, including the 1/M. It exists as the bridge to the independent
    cross-check: dattri's ``IFAttributorExplicit`` on the same objective (loss = mean of l_k over the cached
    batch, ``regularization = delta + damping``) returns ``M * score`` after averaging over evaluation tasks.

``hessian="gauss_newton"`` (default)
    H = (1/M) sum_k tau_k J_k^T Lambda_k J_k + delta I, the generalised Gauss-Newton matrix of the post-adaptation
    query logits o_k(lam) = model(theta_k(lam), xq_k), with J_k = d o_k / d lam and Lambda_k the Hessian of the
    (weighted, mean) cross-entropy in the logits. It is positive semi-definite and drops the curvature of the
    adaptation map (including the paper's H') and of the network: the curvature an off-the-shelf single-level IF
    library (kronfluence / EK-FAC, TLXML's Gauss-Newton task-IF) uses, which EK-FAC further factorises.

Tasks only: a support or query point is not a datum of this objective.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from metainf.influence import hessian_operator, task_scores
from metainf.linalg.gauss_newton import gn_hvp
from metainf.linalg.curvature import OperatorCurvature
from metainf.methods.base import AttributionProblem


@dataclass
class SingleLevelIF:
    """score[k] = grad L_eval^T (H + damping I)^-1 g_k / M with H exact or Gauss-Newton (module docstring)."""

    hessian: str = "gauss_newton"
    solver: str = "cg"
    damping: float = 0.0
    tol: float = 1e-10
    max_iter: int = 1000
    name: str = "single_level_if"
    kinds: tuple[str, ...] = ("task",)
    needs_trajectory: bool = False

    def __post_init__(self) -> None:
        if self.hessian not in ("exact", "gauss_newton"):
            raise ValueError(f"single_level_if hessian must be 'exact' or 'gauss_newton', got {self.hessian!r}")

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        obj, lam = problem.objective, problem.lam
        b = problem.eval_objective.mean_loss_grad(lam)
        hvp = hessian_operator(obj, lam, "exact") if self.hessian == "exact" else gn_hvp(obj, lam)
        v, _ = OperatorCurvature(hvp, self.damping, self.solver, self.tol, self.max_iter).solve(b)
        return task_scores(obj, lam, v)
