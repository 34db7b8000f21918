"""The paper's estimators as registry methods: task-IF / instance-IF (``task_if``), its empirical-Fisher variant
(``task_if_fisher``), its sketched-Hessian variant (``task_if_nystrom``), its truncated-CG variant with
finite-difference total HVPs (``task_if_truncated``), the default fast one (``task_if_fast``: the same CG stopped at
a relative residual) and direct-IF (``direct_if``).

Sign convention: score[u] ~ L_eval(without u) - L_eval(with u). See :mod:`metainf.influence` for the formulas,
:mod:`metainf.linalg.fisher` for the Fisher curvature and :mod:`metainf.linalg.nystrom` for the sketch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from metainf.linalg.finite_difference import (HVP_MODES, FDHessian, fd_hessian_operator, losses_and_gradients,
                                              prefer_fd, task_and_eval_grads)
from metainf.linalg.fisher import fisher_curvature, fisher_inverse, fisher_solve
from metainf.linalg.cg import MatVec, cg, cg_successive
from metainf.linalg.diagonal import fisher_diagonal, hutchinson_diagonal, jacobi
from metainf.linalg.total_ekfac import total_ekfac_preconditioner
from metainf.linalg.nystrom import build_curvature, lowrank_solve, nystrom_solve, probe_matrix
from metainf.influence import (InfluenceConfig, direct_task_scores, eval_vector, hessian_operator, instance_scores,
                               task_scores)
from metainf.linalg.types import SolveInfo
from metainf.core.objective import MetaObjective
from metainf.methods.base import AttributionProblem


@dataclass
class TaskIF:
    """Task-IF for tasks (v . g_k / M) and instance-IF for support (two-stage proxy, ``variant``) and query points,
    with v = (damping I + H_F)^-1 grad L_eval from one solve per evaluation functional.

    ``solver``: any ``metainf.linalg.solvers.solve`` method (``cg``, ``dense``, ``neumann``) or ``fisher``: H_F replaced
    by the empirical-Fisher curvature (1/M) sum_k tau_k g_k g_k^T + (delta + damping) I, solved by Woodbury (no HVP;
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
    """Task-IF with v from a rank-``k`` sketch of the exact total Hessian (``metainf.linalg.nystrom``).

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


#: preconditioners of ``TaskIFTruncated`` / ``TaskIFFast``
PRECONDITIONERS: tuple[str, ...] = ("none", "fisher", "diag_fisher", "diag_hutchinson", "nystrom", "ekfac")


@dataclass
class TaskIFTruncated(TaskIF):
    """Task-IF with v from ``cg_iters`` conjugate-gradient iterations on H_F + damping I from 0 (truncated CG, as
    iMAML truncates its meta-gradient solve), stopping earlier at relative residual ``tol``.

    ``hvp``: ``fd`` takes each total HVP as a difference quotient of the meta-gradient (one batched gradient pass,
    ``metainf.linalg.finite_difference``; unrolled second-order MAML only), ``autodiff`` the exact forward-over-reverse
    HVP, ``auto`` (default) ``fd`` where it applies in float64 and ``autodiff`` elsewhere (in float32 a difference
    quotient is not accurate at any step: ``finite_difference.fd_is_accurate``). With ``fd``, no preconditioner and
    float64, no per-task gradient is formed: one reverse pass of summed losses gives grad L_eval and the base
    meta-gradient (``losses_and_gradients``), and the task scores G v / M come from the task losses of the HVP passes
    (``FDHessian.projected_task_grads``: v lies in the span of the CG directions). Otherwise the task gradients and
    grad L_eval come from one batched per-task pass (``task_and_eval_grads``; lower precision keeps it because a
    difference of losses loses sqrt(machine eps) of relative accuracy). Cost: one gradient pass plus one HVP per
    iteration. ``last_info`` holds the ``SolveInfo`` of the latest solve.

    ``precond``: ``none`` (plain CG) or a preconditioner factored once per problem and shared by every solve
    (:meth:`score_per_eval` runs one solve per evaluation task):

    - ``fisher``: the empirical-Fisher curvature of the task gradients, C = (1/M) sum_k tau_k g_k g_k^T +
      (delta + damping) I, applied by Woodbury in O(M P) per iteration after one M x M Cholesky
      (``metainf.linalg.fisher``; no extra gradient pass: G is already computed);
    - ``diag_fisher``: its diagonal (Jacobi; free), ``diag_hutchinson``: a Hutchinson estimate of diag(H_F) from
      ``precond_rank`` Rademacher probes (``precond_rank`` batched HVPs; ``metainf.linalg.diagonal``);
    - ``nystrom``: a rank-``precond_rank`` Rayleigh-Ritz model of H_F on span probes [grad L_eval, G^T R]
      (``precond_rank`` batched HVPs; Nystrom-PCG, ``metainf.linalg.nystrom``);
    - ``ekfac``: an EK-FAC model of the Gauss-Newton part of H_F, (1/M) sum_k tau_k GN of task k's query loss at
      its adapted parameters, plus (delta + damping) I (one batched pass over the tasks, two when they span several
      chunks, which bounds its memory by one chunk; two eigendecompositions per layer; ``metainf.linalg.total_ekfac``).

    The default of 3 iterations: Spearman with dense task-IF >= 0.98 on the six E5 problems at 100 tasks (digits
    seeds 0-1 and Omniglot seed 0, hidden 8 and 16; lowest 0.993) and on six held-out ones (digits seeds 2-3,
    Omniglot seed 1; lowest 0.984); 2 iterations fall to 0.971 (``scripts/measure_truncated.py``)."""

    name: str = "task_if_truncated"
    cg_iters: int = 3
    hvp: str = "auto"
    rel_step: float | None = None
    precond: str = "none"
    precond_rank: int = 8
    precond_seed: int = 0
    project: bool = True
    last_info: SolveInfo | None = field(default=None, repr=False)
    last_infos: list[SolveInfo] = field(default_factory=list, repr=False)

    def _use_fd(self, obj: MetaObjective, lam: Tensor) -> bool:
        """Validate the settings; True when the total HVPs are finite differences."""
        if self.hvp not in HVP_MODES:
            raise ValueError(f"unknown hvp {self.hvp!r}: choose one of {list(HVP_MODES)}")
        if self.cg_iters < 1:
            raise ValueError(f"cg_iters must be >= 1, got {self.cg_iters}")
        if self.precond not in PRECONDITIONERS:
            raise ValueError(f"unknown precond {self.precond!r}: choose one of {list(PRECONDITIONERS)}")
        use_fd = self.hvp == "fd" or (self.hvp == "auto" and self.hprime == "exact" and prefer_fd(obj, lam))
        if use_fd and self.hprime != "exact":
            raise ValueError(f"hvp='fd' differentiates the exact meta-gradient: it has no hprime={self.hprime!r} "
                             "variant; use hvp='autodiff' for the H' approximations")
        return use_fd

    def _operator(self, obj: MetaObjective, lam: Tensor, grads: Tensor, b: Tensor,
                  use_fd: bool) -> tuple[MatVec, MatVec | None]:
        """(A = H_F + damping I, the preconditioner or None) from the per-task total gradients ``grads`` and the
        (mean) right-hand side ``b`` (the first probe of the ``nystrom`` model)."""
        if use_fd:
            op = fd_hessian_operator(obj, lam, obj.tau.to(grads.dtype) @ grads / obj.n_tasks, self.rel_step)
        else:
            op = hessian_operator(obj, lam, self.hprime)
        return self._damped(op), self._preconditioner(obj, lam, grads, b)

    def _preconditioner(self, obj: MetaObjective, lam: Tensor, grads: Tensor, b: Tensor) -> MatVec | None:
        """M^-1 of ``precond`` (class docstring), factored once; None for plain CG."""
        reg = obj.delta + self.damping
        if self.precond == "fisher":
            curvature = fisher_curvature(grads, reg, obj.tau)
            return lambda r: fisher_inverse(curvature, r)
        if self.precond == "diag_fisher":
            return jacobi(fisher_diagonal(grads, obj.tau, reg))
        if self.precond == "diag_hutchinson":
            return jacobi(hutchinson_diagonal(obj, lam, self.precond_rank, reg, self.hprime, self.precond_seed))
        if self.precond == "nystrom":
            omega = probe_matrix(lam.numel(), min(self.precond_rank, lam.numel()), "span", b, grads,
                                 self.precond_seed, lam.dtype)
            model = build_curvature(obj, lam, omega, self.damping, "ritz", hprime=self.hprime)
            return lambda r: lowrank_solve(model, r)
        if self.precond == "ekfac":
            return total_ekfac_preconditioner(obj, lam, reg)
        return None

    def _damped(self, op: MatVec) -> MatVec:
        """u -> op(u) + damping u (``op`` itself without damping)."""
        return (lambda u: op(u) + self.damping * u) if self.damping else op

    def score_per_eval(self, problem: AttributionProblem) -> Tensor:
        """Task scores for every evaluation task on its own, [M, E]: column j is task-IF for L_eval^j, the query
        loss of evaluation task j (``eval_objective.loss_grads``)::

            score[k, j] = g_k . v_j / M,    v_j = (H_F + damping I)^-1 grad L_eval^j

        The E solves are this method's CG (same operator, preconditioner, ``tol`` and ``cg_iters``), run one after
        another by ``metainf.linalg.cg.cg_successive``: with ``project`` each starts from the Galerkin projection onto
        the solutions before it, which costs no HVP (``project=False``: every solve from 0). The mean over the
        columns is :meth:`score` for tasks up to the solves' tolerance. Sign convention as :meth:`score`; the
        ``SolveInfo`` of every solve is kept in ``last_infos``. Cost: one per-task gradient pass, one per-task
        evaluation-gradient pass, and one HVP per iteration of every solve."""
        obj, lam = problem.objective, problem.lam
        use_fd = self._use_fd(obj, lam)
        grads = obj.task_grads(lam)
        rhs = problem.eval_objective.loss_grads(lam)
        matvec, pre = self._operator(obj, lam, grads, rhs.mean(0), use_fd)
        vs, self.last_infos = cg_successive(matvec, rhs, pre, tol=self.tol, max_iter=self.cg_iters,
                                            project=self.project)
        return grads @ vs.T / obj.n_tasks

    def _solve(self, problem: AttributionProblem) -> tuple[Tensor, Tensor | None]:
        obj, lam = problem.objective, problem.lam
        use_fd = self._use_fd(obj, lam)
        if use_fd and self.precond == "none" and lam.dtype == torch.float64:
            losses, data_grad, b = losses_and_gradients(obj, problem.eval_objective, lam)
            fd_op = FDHessian(obj, lam, data_grad, losses, self.rel_step)
            v, self.last_info = cg(self._damped(fd_op), b, None, tol=self.tol, max_iter=self.cg_iters)
            return v, fd_op.projected_task_grads()
        grads, b = task_and_eval_grads(obj, problem.eval_objective, lam)
        matvec, pre = self._operator(obj, lam, grads, b, use_fd)
        v, self.last_info = cg(matvec, b, pre, tol=self.tol, max_iter=self.cg_iters)
        return v, grads


@dataclass
class TaskIFFast(TaskIFTruncated):
    """The default fast task-IF / instance-IF: CG on H_F + damping I from 0 (finite-difference total HVPs where they
    apply, one gradient pass each; see ``TaskIFTruncated``), stopped at the first iteration whose relative residual
    ||b - A v|| / ||b|| is <= ``tol``, after at most ``cg_iters`` iterations.

    Cost (finite-difference HVPs, float64): one reverse pass of summed losses (grad L_eval and the base meta-gradient)
    plus one per iteration (the HVP, whose task losses also give the task scores); the number of iterations follows
    the conditioning of H_F instead of being fixed.

    The rule behind the settings, from ``scripts/measure_fast.py`` (E3's quick problems rebuilt, scored against the
    committed converged-LOO effects; Spearman gaps to dense task-IF):

    - **damping 0.** Damping biases the scores: CG to convergence on H_F + 0.01 I loses 0.02-0.06 Spearman on tasks
      (means over the digits seeds), + 0.03 I loses 0.06-0.14.
    - **No preconditioner** (``precond="none"``). At lam* on E3's problems, H_F = delta I + a part of rank about 100
      with both signs; the directions CG needs last are those where the data part nearly cancels delta (eigenvalues
      down to 0.002-0.005 against delta = 0.1). The empirical Fisher of the task gradients (``precond="fisher"``) is
      positive semi-definite and small at lam*, so it cannot model them: Fisher-PCG needs as many iterations as CG.
      An EK-FAC model of the Gauss-Newton part of H_F (``precond="ekfac"``) does cut the iterations (E4's digits
      MAML problems: 5 iterations reach Spearman 0.999 with exact task-IF, against 0.857), but factoring it costs
      more than the finite-difference HVPs it saves there (5.0 meta-epochs against 3.3); it pays where HVPs are
      dear (iMAML, ``results/E4``).
    - **tol = 0.05.** The 3 fixed iterations of ``task_if_truncated`` stop at relative residual 0.06-0.41 on E3's
      40-task digits problems (mean Spearman gap on tasks -0.09 unrolled, -0.13 proximal). 0.05 is the largest tolerance
      tested (0.15, 0.1, 0.075, 0.05, 0.03) with task, support and query gaps within 0.02 on every digits problem
      (seeds 0-2, both inner problems; 4-16 iterations). On E3's Omniglot problem (seed 0) support points need 0.03
      (0.05 loses 0.23 on the unrolled problem, where the residual is not monotone). On E5's 100-task digits problems
      0.05 takes 5 iterations (3 reach 0.09-0.15), two more HVPs than ``task_if_truncated``.
    - ``cg_iters`` only caps a run that never reaches ``tol``."""

    name: str = "task_if_fast"
    cg_iters: int = 50
    tol: float = 0.05


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
