"""Does the trainer's own L-BFGS memory precondition ``task_if_fast``'s CG enough to save an HVP? (issue #20)

``train_converged`` ends meta-training with full-batch L-BFGS, whose memory holds curvature pairs
(s_i, y_i = grad F(lam_{i+1}) - grad F(lam_i)) gathered on the way to lam*; its two-loop recursion is a free model
of H_F^-1, the classic automatic preconditioner for CG (Morales & Nocedal 2000). On E5's 100-task digits problems
(seeds 0-1, hidden 8 and 16, unrolled MAML, float64, trained as E5 trains them; ``scripts/measure_fast.py`` part e5)
this reruns that L-BFGS from lam_T and keeps its memory:

- ``trainer``: as ``train_converged`` runs it before its Newton polish (gradient tolerance 1e-4, 20 pairs);
- ``tight``: to 1e-6 with 50 pairs, the best case (the last pairs lie next to lam*).

It prints, for CG on the finite-difference total HVPs at lam* with each preconditioner and without one, the true
relative residual ||b - H v_k|| / ||b|| and the Spearman correlation of the task scores with dense task-IF for
k = 1..7 iterations, and the first k at which the residual reaches 0.05 (``task_if_fast``'s rule; 4 would bring it
under 3 meta-epochs).

Usage: OMP_NUM_THREADS=1 python scripts/probe_lbfgs_precond.py   (about 2 min on one free core)
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure_fast import cg_sweep, dense_reference, e5_problem  # noqa: E402
from metainf.core.objective import MetaObjective  # noqa: E402
from metainf.linalg.finite_difference import fd_hessian_operator  # noqa: E402

STEPS = 7
TOL = 0.05
MEMORIES = {"trainer": (1e-4, 20), "tight": (1e-6, 50)}


def lbfgs_memory(obj: MetaObjective, lam_t: Tensor, tol: float, history: int) -> tuple[list[Tensor], list[Tensor]]:
    """(s_i, y_i) of torch's L-BFGS (strong Wolfe) on F from ``lam_t`` to max |grad F| <= ``tol``."""
    lam = lam_t.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([lam], lr=1.0, max_iter=500, history_size=history, tolerance_grad=tol,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        with torch.no_grad():
            value, grad = obj.value_and_grad(lam.detach())
        lam.grad = grad
        return value

    opt.step(closure)
    state = opt.state[lam]
    return state["old_stps"], state["old_dirs"]


def two_loop(s: list[Tensor], y: list[Tensor]) -> Callable[[Tensor], Tensor]:
    """r -> H_lbfgs^-1 r by the two-loop recursion (initial scale s'y / y'y of the newest pair)."""
    rho = [1.0 / float(yi @ si) for si, yi in zip(s, y)]
    gamma = float(s[-1] @ y[-1] / (y[-1] @ y[-1]))

    def apply(r: Tensor) -> Tensor:
        q, alphas = r.clone(), []
        for si, yi, ri in reversed(list(zip(s, y, rho))):
            alphas.append(ri * float(si @ q))
            q -= alphas[-1] * yi
        q *= gamma
        for (si, yi, ri), a in zip(zip(s, y, rho), reversed(alphas)):
            q += (a - ri * float(yi @ q)) * si
        return q

    return apply


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    for seed in (0, 1):
        for hidden in (8, 16):
            _, fitted, problem = e5_problem("mnist", seed, hidden)
            obj, lam = problem.objective, problem.lam
            h, g, b, exact = dense_reference(problem)
            op = fd_hessian_operator(obj, lam)
            preconditioners = {"none": None, **{name: two_loop(*lbfgs_memory(obj, fitted.lam_traj, tol, history))
                                                for name, (tol, history) in MEMORIES.items()}}
            for name, pre in preconditioners.items():
                reached, cells = cg_sweep(op, pre, h, g, b, exact, STEPS, TOL)
                print(f"digits s{seed} h{hidden} {name:<8s} residual <= {TOL} at k {reached}; per k residual/Spearman: "
                      + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
