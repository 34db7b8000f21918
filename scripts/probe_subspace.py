"""Would a better search space than CG's Krylov space get ``task_if_fast`` under 3 meta-epochs? (issue #20)

CG after k iterations returns the Galerkin solution of H v = b over the Krylov space K_k = span{b, Hb, ..,
H^(k-1) b}, at one finite-difference HVP per dimension. This prints, for every k = 1..5, the Galerkin solution
v = V (V^T H V)^-1 V^T b (H the dense total Hessian) over

- ``krylov``: K_k alone (what CG reaches after k iterations);
- ``+G``: K_k plus the span of all M per-task total gradients g_k (the rows of G, which the task scores G v use);
- ``+Gtop{r}``: K_k plus the top r right singular vectors of G;
- ``+Grand{r}``: K_k plus r random combinations G^T w of the per-task gradients;

with its relative residual ||b - H v|| / ||b|| and the Spearman correlation of its task scores G v with exact
task-IF (G H^-1 b). Each added direction costs one more HVP (H applied to it); HVPs of directions known up front can
share a vmapped pass, which saves the per-pass overhead but not the per-point work.

Problems: E5's 100-task digits problems (seeds 0-1, hidden 8 and 16; ``scripts/measure_fast.py`` part e5) and E3's
quick digits problems (seeds 0-1, both inner problems; part e3 of the same script).

Usage: OMP_NUM_THREADS=1 python scripts/probe_subspace.py [e5] [e3]   (~2 min each on one core)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure_fast import e3_problem, e5_problem, spearman  # noqa: E402

STEPS = 5
RANKS = (4, 16)


def galerkin(h: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """argmin over x in span(v) of the H-energy error: Q (Q^T H Q)^-1 Q^T b, Q an orthonormal basis of span(v)."""
    q, r = torch.linalg.qr(v)
    q = q[:, r.diagonal().abs() > 1e-10 * r.diagonal().abs().max()]  # drop directions already in the span
    return q @ torch.linalg.solve(q.T @ h @ q, q.T @ b)


def trace(name: str, h: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> None:
    exact = (g @ torch.linalg.solve(h, b)).numpy()
    top = torch.linalg.svd(g, full_matrices=False)[2]
    rand = g.T @ torch.randn(g.shape[0], max(RANKS), dtype=g.dtype, generator=torch.Generator().manual_seed(0))
    spaces = {"+G": g.T, **{f"+Gtop{r}": top[:r].T for r in RANKS}, **{f"+Grand{r}": rand[:, :r] for r in RANKS}}
    krylov = [b]
    for k in range(1, STEPS + 1):
        base = torch.stack(krylov, 1)
        cells = []
        for label, extra in {"krylov": None, **spaces}.items():
            v = galerkin(h, b, base if extra is None else torch.cat([base, extra], 1))
            res = float((b - h @ v).norm() / b.norm())
            cells.append(f"{label} {res:.3f}/{spearman((g @ v).numpy(), exact):.4f}")
        print(f"{name} k{k}  res/Spearman  " + "  ".join(cells), flush=True)
        krylov.append(h @ krylov[-1])
    print(flush=True)


def part_e5() -> None:
    for seed in (0, 1):
        for hidden in (8, 16):
            problem = e5_problem("mnist", seed, hidden)[2]
            obj, lam = problem.objective, problem.lam
            trace(f"E5 mnist s{seed} h{hidden}", obj.dense_hessian(lam), obj.task_grads(lam),
                  problem.eval_objective.mean_loss_grad(lam))


def part_e3() -> None:
    for seed in (0, 1):
        for inner in ("unrolled", "proximal"):
            problem, h, _, _ = e3_problem("mnist", seed, inner)
            obj, lam = problem.objective, problem.lam
            trace(f"E3 mnist s{seed} {inner}", h, obj.task_grads(lam), problem.eval_objective.mean_loss_grad(lam))


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    parts = sys.argv[1:] or ["e5", "e3"]
    unknown = set(parts) - {"e3", "e5"}
    if unknown:
        print(f"unknown part(s) {sorted(unknown)}: choose e5 and/or e3", file=sys.stderr)
        raise SystemExit(2)
    if "e5" in parts:
        part_e5()
    if "e3" in parts:
        part_e3()


if __name__ == "__main__":
    main()
