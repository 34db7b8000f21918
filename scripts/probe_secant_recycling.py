"""Can the trainer's L-BFGS curvature pairs stand in for HVPs in ``task_if_fast``'s solve? (issue #20)

``train_converged`` ends meta-training with full-batch L-BFGS, whose memory holds pairs (s_i, y_i) with
y_i = grad F(lam_{i+1}) - grad F(lam_i) ~ H_F s_i. ``probe_lbfgs_precond.py`` used them as a preconditioner; this
probe recycles them as a search space instead (augmented Krylov, as in recycled-Krylov solvers): the solution of
H_F v = b = grad L_eval(lam*) is sought in span(S) + K_k(H_F, b), S = [s_1 ... s_n], with the residual minimised
(least squares) over that span. Three variants on E5's 100-task digits problems (seeds 0-1, hidden 8 and 16,
unrolled MAML, float64, trained as E5 trains them; ``scripts/measure_fast.py`` part e5):

- ``free``: H_F S taken as Y = [y_1 ... y_n] (no HVP spent on the pairs), plus k Krylov HVPs;
- ``ideal``: H_F S from the dense total Hessian (n more HVPs in practice: an upper bound on what the pairs offer);
- ``krylov``: no pairs (the minimum-residual Krylov solution, MINRES's iterate).

for two memories: ``trainer`` (gradient tolerance 1e-4, 20 pairs, as ``train_converged`` runs L-BFGS before its
Newton polish) and ``tight`` (1e-6, up to 50 pairs). It prints the secant error ||H_F S - Y|| / ||Y||, and per k
the true relative residual ||b - H_F v|| / ||b|| and the Spearman correlation of the task scores with dense task-IF.
``task_if_fast`` stops at residual 0.05; under 3 meta-epochs needs it within about 1 HVP.

Usage: OMP_NUM_THREADS=1 python scripts/probe_secant_recycling.py   (about 2 min on one free core)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure_fast import dense_reference, e5_problem, spearman  # noqa: E402
from probe_lbfgs_precond import MEMORIES, lbfgs_memory  # noqa: E402

MAX_K = 5
TOL = 0.05


def min_residual(basis: Tensor, h_basis: Tensor, b: Tensor) -> Tensor:
    """v = basis c with c = argmin ||h_basis c - b||_2 (h_basis standing for H_F basis)."""
    return basis @ torch.linalg.lstsq(h_basis, b.unsqueeze(1)).solution.squeeze(1)


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    for seed in (0, 1):
        for hidden in (8, 16):
            _, fitted, problem = e5_problem("mnist", seed, hidden)
            obj = problem.objective
            h, g, b, exact = dense_reference(problem)
            krylov = [b]
            for _ in range(MAX_K):
                krylov.append(h @ krylov[-1])
            kry = torch.stack(krylov[:MAX_K], 1)
            h_kry = h @ kry
            empty = kry[:, :0]
            pairs = {"none": (empty, empty, empty)}
            for name, (tol, history) in MEMORIES.items():
                s, y = lbfgs_memory(obj, fitted.lam_traj, tol, history)
                big_s = torch.stack(s, 1)
                pairs[name] = (big_s, torch.stack(y, 1), h @ big_s)
            for name, (big_s, big_y, h_s) in pairs.items():
                variants = {"krylov": h_s} if name == "none" else {"free": big_y, "ideal": h_s}
                secant = "" if name == "none" else (f" n={big_s.shape[1]} secant error "
                                                    f"{float((h_s - big_y).norm() / big_y.norm()):.2f}")
                for variant, h_pairs in variants.items():
                    cells, reached = [], None
                    for k in range(0 if name != "none" else 1, MAX_K + 1):
                        v = min_residual(torch.cat([big_s, kry[:, :k]], 1), torch.cat([h_pairs, h_kry[:, :k]], 1), b)
                        res = float((b - h @ v).norm() / b.norm())
                        reached = reached or (k if res <= TOL else None)
                        cells.append(f"k{k} {res:.3f}/{spearman((g @ v).numpy(), exact):.3f}")
                    label = f"{name}/{variant}" if name != "none" else "krylov"
                    print(f"digits s{seed} h{hidden} {label:<14s}{secant}: residual <= {TOL} at k "
                          f"{reached or f'>{MAX_K}'}; residual/Spearman " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
