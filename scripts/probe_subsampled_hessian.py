"""Does a total Hessian estimated on a subset of the tasks keep task-IF's accuracy? (issue #20, cheaper HVPs)

For E3's quick exact problems (digits seeds 0-2 and Omniglot seed 0, unrolled MAML only: the proximal problems'
HVPs come from their dense block Hessian; rebuilt as ``scripts/measure_fast.py`` rebuilds them, against the
committed converged-LOO effects of ``results/E3/<dataset>-quick.json``), v = H_S^-1 grad L_eval is solved densely
with H_S = delta I + (1/|S|) sum_{k in S} D^2 L_O^k, the total Hessian of a random fraction of the tasks (fractions
0.5 and 0.75, two draws each), and the task / support / query scores' Spearman with LOO is printed as its
difference to that of the full Hessian (dense task-IF). A dense solve is the best any solver on H_S can do, so a
large loss here rules out subsampled HVPs for ``task_if_fast``.

Usage: OMP_NUM_THREADS=1 python scripts/probe_subsampled_hessian.py   (about 2 min on one free core)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure_fast import E3_PROBLEMS, KINDS, e3_problem, spearman  # noqa: E402
from experiments.scoring import unit_values  # noqa: E402
from metainf.influence import instance_scores  # noqa: E402

FRACTIONS = (0.5, 0.75)
DRAWS = 2


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    for dataset, seed in E3_PROBLEMS:
        problem, h, series, _ = e3_problem(dataset, seed, "unrolled")
        obj, lam = problem.objective, problem.lam
        truth = {k: np.array(series[k]["converged"]) for k in KINDS}
        grads, b = obj.task_grads(lam), problem.eval_objective.mean_loss_grad(lam)

        def agreement(v: torch.Tensor) -> dict[str, float]:
            support, query = instance_scores(obj, lam, v)
            full = {"task": grads @ v / obj.n_tasks, "support": support, "query": query}
            return {k: spearman(unit_values(full[k], [tuple(u) for u in series[k]["units"]]), truth[k]) for k in KINDS}

        ref = agreement(torch.linalg.solve(h, b))
        line = [f"{dataset} s{seed} M={obj.n_tasks} full H: t/s/q {ref['task']:.3f}/{ref['support']:.3f}/"
                f"{ref['query']:.3f}"]
        for fraction in FRACTIONS:
            for draw in range(DRAWS):
                idx = torch.randperm(obj.n_tasks, generator=torch.Generator().manual_seed(draw))
                sub = obj.subset(lam, idx[: int(fraction * obj.n_tasks)].tolist())
                got = agreement(torch.linalg.solve(sub.dense_hessian(lam), b))
                line.append(f"{fraction} draw {draw}: " + "/".join(f"{got[k] - ref[k]:+.3f}" for k in KINDS))
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
