"""Could ``task_if_fast`` stop CG earlier on a rule other than its relative residual? (issue #20, the <= 3 bar)

On E5's 100-task problems ``task_if_fast`` takes 5 finite-difference HVPs to reach relative residual 0.05, and 4
would bring it under 3 meta-epochs (``scripts/profile_fast.py``). This prints, for every CG iterate k = 1..12
(CG from 0 stopped after k iterations, finite-difference HVPs where ``task_if_fast`` uses them):

- ``res``: the relative residual ||b - H v_k|| / ||b|| (H the dense total Hessian), the rule ``task_if_fast`` uses;
- ``ds``: the relative change of the task scores, ||G v_k - G v_{k-1}|| / ||G v_k||, a rule that watches the output
  itself and would cost nothing (the HVP passes' task losses give G p for every direction p);
- on E3's quick problems (digits seeds 0-4 and Omniglot seed 0, both inner problems, rebuilt as
  ``scripts/measure_fast.py`` part e3 rebuilds them): the Spearman gap to dense task-IF against the committed
  converged-LOO effects, for tasks, support and query points;
- on E5's 100-task problems (part e5 of the same script): the Spearman correlation of the task scores with dense
  task-IF.

A summary line per problem gives the first k at which each rule reaches 0.05 and, on E3, the first k from which every
gap stays within 0.02.

Usage: OMP_NUM_THREADS=1 python scripts/probe_stopping.py [e3] [e5]   (e3: ~5 min, e5: ~2 min on one free core)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure_fast import E5_PROBLEMS, KINDS, dense_v, e3_problem, e5_problem, spearman  # noqa: E402
from experiments.scoring import unit_values  # noqa: E402
from metainf.influence import hessian_operator, instance_scores  # noqa: E402
from metainf.linalg.cg import cg  # noqa: E402
from metainf.linalg.finite_difference import fd_hessian_operator, prefer_fd  # noqa: E402

STEPS = 12
RULE = 0.05  # task_if_fast's tolerance, applied to both rules
GAP = 0.02  # the accuracy bar

E3_PROBLEMS = [("mnist", s) for s in range(5)] + [("omniglot", 0)]


def iterates(problem) -> list[torch.Tensor]:
    """v_k for k = 1..STEPS: CG from 0 stopped after k iterations, on the operator ``task_if_fast`` uses
    (finite-difference total HVPs where they apply, else the objective's HVP)."""
    obj, lam = problem.objective, problem.lam
    op = fd_hessian_operator(obj, lam) if prefer_fd(obj, lam) else hessian_operator(obj, lam, "exact")
    b = problem.eval_objective.mean_loss_grad(lam)
    return [cg(op, b, tol=0.0, max_iter=k)[0] for k in range(1, STEPS + 1)]


def first(values: list[float], bound: float) -> int | str:
    return next((k for k, x in enumerate(values, 1) if x <= bound), f">{STEPS}")


def trace(name: str, problem, h: torch.Tensor, score, extra) -> tuple[list[float], list[float]]:
    """Print res, ds and ``extra(v)`` per iterate; return (res, ds)."""
    b = problem.eval_objective.mean_loss_grad(problem.lam)
    res, ds, prev = [], [], None
    for k, v in enumerate(iterates(problem), 1):
        s = score(v)
        res.append(float((b - h @ v).norm() / b.norm()))
        ds.append(float((s - prev).norm() / s.norm()) if prev is not None else 1.0)
        prev = s
        print(f"{name} k{k:<2d} res {res[-1]:.3f}  ds {ds[-1]:.3f}  {extra(v)}", flush=True)
    return res, ds


def part_e3() -> None:
    for dataset, seed in E3_PROBLEMS:
        for inner in ("unrolled", "proximal"):
            problem, h, series, _ = e3_problem(dataset, seed, inner)
            obj, lam = problem.objective, problem.lam
            g = obj.task_grads(lam)
            truth = {k: np.array(series[k]["converged"]) for k in KINDS}

            def units(v: torch.Tensor) -> dict[str, np.ndarray]:
                support, query = instance_scores(obj, lam, v)
                full = {"task": g @ v / obj.n_tasks, "support": support, "query": query}
                return {k: unit_values(full[k], [tuple(u) for u in series[k]["units"]]) for k in KINDS}

            exact = units(dense_v(problem, h))
            ref = {k: spearman(exact[k], truth[k]) for k in KINDS}
            gaps: list[float] = []

            def gap(v: torch.Tensor) -> str:
                u = units(v)
                row = [spearman(u[k], truth[k]) - ref[k] for k in KINDS]
                gaps.append(max(-x for x in row))
                return "gap t/s/q " + "/".join(f"{x:+.3f}" for x in row)

            name = f"E3 {dataset} s{seed} {inner}"
            res, ds = trace(name, problem, h, lambda v: g @ v, gap)
            within = next((k for k in range(1, STEPS + 1) if max(gaps[k - 1:]) <= GAP), f">{STEPS}")
            print(f"{name}: res <= {RULE} at k {first(res, RULE)}, ds <= {RULE} at k {first(ds, RULE)}, every gap "
                  f"within {GAP} from k {within}\n", flush=True)


def part_e5() -> None:
    for dataset, seed in E5_PROBLEMS:
        for hidden in (8, 16):
            problem = e5_problem(dataset, seed, hidden)[2]
            obj, lam = problem.objective, problem.lam
            h, g = obj.dense_hessian(lam), obj.task_grads(lam)
            exact = (g @ dense_v(problem, h)).numpy()
            name = f"E5 {dataset} s{seed} h{hidden}"
            res, ds = trace(name, problem, h, lambda v: g @ v,
                            lambda v: f"vs exact {spearman((g @ v).numpy(), exact):.4f}")
            print(f"{name}: res <= {RULE} at k {first(res, RULE)}, ds <= {RULE} at k {first(ds, RULE)}\n", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    parts = sys.argv[1:] or ["e3", "e5"]
    unknown = set(parts) - {"e3", "e5"}
    if unknown:
        print(f"unknown part(s) {sorted(unknown)}: choose e3 and/or e5", file=sys.stderr)
        raise SystemExit(2)
    if "e3" in parts:
        part_e3()
    if "e5" in parts:
        part_e5()


if __name__ == "__main__":
    main()
