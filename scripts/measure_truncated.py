"""How many CG iterations ``task_if_truncated`` needs: Spearman with dense task-IF on the E5 problems (issue #7).

Problems: E5's quick config (``experiments/e5_cost.py``: 5-way 1-shot 2-query, unrolled MAML 1 step, delta 0.1) at
100 training tasks, hidden 8 and 16, trained as E5 trains them (``setups.fit``, then the converged problem):

- the six E5 problems: digits seeds 0 and 1, Omniglot (8x8) seed 0;
- six held-out ones: digits seeds 2 and 3, Omniglot seed 1.

For each, the reference is task-IF from the dense total Hessian (``MetaObjective.dense_hessian``, ``torch.linalg.
solve``), and ``task_if_truncated`` runs with ``cg_iters`` in 1..5 (finite-difference HVPs, as in E5). Prints one
row per problem and the lowest Spearman per iteration count over each group.

Usage: OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_truncated.py   (about 5 minutes on one core)
"""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import torch

CPU = torch.device("cpu")  # what a RunContext resolves --device cpu to

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import setups  # noqa: E402
from experiments.e5_cost import CONFIGS  # noqa: E402
from metainf.methods import get_method, run_method  # noqa: E402
from metainf.metrics import correlations  # noqa: E402

ITERS = (1, 2, 3, 4, 5)
GROUPS = {
    "E5 problems": [("mnist", 0), ("mnist", 1), ("omniglot", 0)],
    "held out": [("mnist", 2), ("mnist", 3), ("omniglot", 1)],
}


def problem(dataset: str, seed: int, hidden: int):
    cfg = {**CONFIGS["quick"], "n_train_tasks": 100, "hidden": [hidden], **CONFIGS["quick"]["by_dataset"].get(
        dataset, {})}
    setup = setups.build_setup(types.SimpleNamespace(config=cfg, dataset=dataset, data_root=None, torch_device=CPU,
                                                     torch_dtype=lambda default: default, seed=seed),
                               "unrolled")
    return setups.problems(setup, setups.fit(setup, cfg, seed), seed)["converged"]


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    print(f"{'group':<12s} {'problem':<22s} " + " ".join(f"cg{n:<6d}" for n in ITERS))
    for group, items in GROUPS.items():
        lowest = {n: 1.0 for n in ITERS}
        for dataset, seed in items:
            for hidden in (8, 16):
                p = problem(dataset, seed, hidden)
                obj, lam = p.objective, p.lam
                v = torch.linalg.solve(obj.dense_hessian(lam), p.eval_objective.mean_loss_grad(lam))
                exact = (obj.task_grads(lam) @ v / obj.n_tasks).numpy()
                row = {}
                for n in ITERS:
                    scores = run_method(get_method("task_if_truncated", cg_iters=n), p, "task").values.numpy()
                    row[n] = correlations(scores, exact)["spearman"]
                    lowest[n] = min(lowest[n], row[n])
                print(f"{group:<12s} {f'{dataset} s{seed} h{hidden}':<22s} "
                      + " ".join(f"{row[n]:<8.4f}" for n in ITERS), flush=True)
        print(f"{group:<12s} {'lowest':<22s} " + " ".join(f"{lowest[n]:<8.4f}" for n in ITERS), flush=True)


if __name__ == "__main__":
    main()
