"""How ``task_if_fast`` sets its solve: agreement with converged LOO on E3's problems, cost on E5's (issue #20).

Part ``e3`` rebuilds the exact (MLP) problems of E3 at quick scale as ``experiments/e3_loo.py`` builds them: the
config stored in ``results/E3/<dataset>-quick.json`` (``problem_configs``), ``setups.fit``, and for the proximal
inner problem the dense block Hessian served to the HVPs (``use_block_hessian``). It does not retrain leave-one-out:
the converged-LOO effects of the committed units are read from the same file. It first checks that the rebuild
matches: dense task-IF must reproduce the committed ``task_if`` Spearman. Then it scores every candidate solve of
``task_if_truncated`` (finite-difference HVPs for the unrolled problem, as E3 runs it) for tasks, support and query
points:

- ``cg<k>``: k CG iterations from 0 (``cg3`` is ``task_if_truncated``);
- ``rtol<t>``: CG until the relative residual ||b - H v|| / ||b|| <= t (at most 100 iterations);
- ``fisher<k>``: k iterations of CG preconditioned by the empirical Fisher of the task gradients (Woodbury);
- ``damp<r>``: CG to 1e-8 on H + r I (damping).

It prints each candidate's Spearman minus that of dense task-IF, per problem and as the mean over the quick seeds of
each dataset (the ``aggregate`` of E3), with the iterations used.

Part ``e5`` rebuilds E5's problems at 100 tasks (digits seeds 0-1, Omniglot seed 0; hidden 8 and 16; trained as E5
trains them) and reports, for ``cg3`` and the ``rtol`` candidates: the iterations used, the Spearman of the task
scores with dense task-IF, and the time in meta-epochs as E5 measures it (one F value and gradient at the initial
point, median of 3 after a warm-up, timed in the same process just before each run), median and IQR over 5 runs.

Usage: OMP_NUM_THREADS=1 python scripts/measure_fast.py [e3] [e5]   (e3: ~4 min, e5: ~6 min on one free core)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch

CPU = torch.device("cpu")  # what a RunContext resolves --device cpu to

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import setups  # noqa: E402
from experiments.ground_truth import block_curvature  # noqa: E402
from experiments.scoring import unit_values  # noqa: E402
from experiments.e3_loo import problem_configs  # noqa: E402
from experiments.e5_cost import CONFIGS as E5_CONFIGS, median_time  # noqa: E402
from metainf.core.bilevel import ProximalInner  # noqa: E402
from metainf.linalg.cg import cg  # noqa: E402
from metainf.methods import get_method, run_method  # noqa: E402
from metainf.metrics import correlations  # noqa: E402

KINDS = ("task", "support", "query")
E3_PROBLEMS = [("mnist", 0), ("mnist", 1), ("mnist", 2), ("omniglot", 0)]
E5_PROBLEMS = [("mnist", 0), ("mnist", 1), ("omniglot", 0)]
RTOLS = (0.15, 0.1, 0.075, 0.05, 0.03)
E5_CANDIDATES: dict[str, dict] = {"cg3": {"cg_iters": 3, "tol": 0.0},
                                  **{f"rtol{t}": {"cg_iters": 100, "tol": t} for t in (0.1, 0.05, 0.03)}}
CANDIDATES: dict[str, dict] = {
    **{f"cg{k}": {"cg_iters": k, "tol": 0.0} for k in (3, 4, 5, 6, 8, 10, 15)},
    **{f"rtol{t}": {"cg_iters": 100, "tol": t} for t in RTOLS},
    **{f"fisher{k}": {"cg_iters": k, "tol": 0.0, "precond": "fisher"} for k in (3, 5, 10)},
    **{f"damp{r}": {"cg_iters": 200, "tol": 1e-8, "damping": r} for r in (0.01, 0.03)},
}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return correlations(a, b)["spearman"]


def e3_problem(dataset: str, seed: int, inner: str):
    """(problem, its dense total Hessian, stored series of ``inner``, committed task_if metrics) of one E3 quick
    problem."""
    stored = json.loads((ROOT / "results" / "E3" / f"{dataset}-quick.json").read_text())
    # results written before real MNIST was added store no mnist_source: they used scikit-learn's 8x8 digits
    cfg = {"mnist_source": "digits", **problem_configs(stored["config"])[inner]}
    setup = setups.build_setup(types.SimpleNamespace(config=cfg, dataset=dataset, data_root=None, torch_device=CPU,
                                                     torch_dtype=lambda default: default, seed=seed), inner)
    fitted = setups.fit(setup, cfg, seed)
    problem = setups.problems(setup, fitted, seed)["converged"]
    obj, lam = problem.objective, problem.lam
    if isinstance(obj.inner, ProximalInner):  # as E3: HVPs from the dense block Hessian
        h = block_curvature(obj, lam)[0]
        problem = dataclasses.replace(problem, objective=obj.with_dense_hessian(lam, "exact", h))
    else:
        h = obj.dense_hessian(lam)
    per_seed = stored["per_seed"][str(seed)]
    return problem, h, per_seed["series"][inner], per_seed["metrics"][inner]["task_if"]


def e5_problem(dataset: str, seed: int, hidden: int, n_tasks: int = 100):
    """(set-up, fitted, converged problem) of E5's quick grid point (``n_tasks`` tasks, hidden width ``hidden``) on
    ``dataset``, trained as E5 trains it (unrolled MAML, its ``by_dataset`` settings merged in)."""
    quick = E5_CONFIGS["quick"]
    cfg = {**quick, "n_train_tasks": n_tasks, "hidden": [hidden], **quick["by_dataset"].get(dataset, {})}
    ctx = types.SimpleNamespace(config=cfg, dataset=dataset, data_root=None, torch_device=CPU,
                                torch_dtype=lambda default: default, seed=seed)
    setup = setups.build_setup(ctx, "unrolled")
    fitted = setups.fit(setup, cfg, seed)
    return setup, fitted, setups.problems(setup, fitted, seed)["converged"]


def dense_v(problem, h: torch.Tensor) -> torch.Tensor:
    """v = H^-1 grad L_eval by a dense solve (the reference: exact task-IF)."""
    return torch.linalg.solve(h, problem.eval_objective.mean_loss_grad(problem.lam))


def dense_reference(problem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """At lam*: (dense total Hessian H, per-task gradients G [M, P], b = grad L_eval, exact task-IF's unscaled task
    scores G H^-1 b), the reference the solver probes compare against."""
    obj, lam = problem.objective, problem.lam
    h, g = obj.dense_hessian(lam), obj.task_grads(lam)
    return h, g, problem.eval_objective.mean_loss_grad(lam), (g @ dense_v(problem, h)).numpy()


def cg_sweep(op, pre, h: torch.Tensor, g: torch.Tensor, b: torch.Tensor, exact: np.ndarray, steps: int,
             tol: float) -> tuple[int | str, list[str]]:
    """CG on ``op`` (preconditioner ``pre`` or None) from 0 for k = 1..``steps`` iterations: the first k whose true
    relative residual ||b - H v_k|| / ||b|| reaches ``tol`` (``">steps"`` if none does) and, per k, the cell
    ``residual/Spearman`` of the task scores G v_k with exact task-IF's ``exact``."""
    cells, residuals = [], []
    for k in range(1, steps + 1):
        v = cg(op, b, pre, tol=0.0, max_iter=k)[0]
        residuals.append(float((b - h @ v).norm() / b.norm()))
        cells.append(f"{residuals[-1]:.3f}/{spearman((g @ v).numpy(), exact):.4f}")
    return next((k for k, r in enumerate(residuals, 1) if r <= tol), f">{steps}"), cells


def unit_scores(problem, method, series) -> dict[str, np.ndarray]:
    return {kind: unit_values(run_method(method, problem, kind).values,
                                     [tuple(u) for u in series[kind]["units"]]) for kind in KINDS}


def part_e3() -> None:
    from metainf.influence import instance_scores

    gaps: dict[tuple, dict[str, list]] = {}
    for dataset, seed in E3_PROBLEMS:
        for inner in ("unrolled", "proximal"):
            problem, h, series, committed = e3_problem(dataset, seed, inner)
            truth = {k: np.array(series[k]["converged"]) for k in KINDS}
            obj, lam = problem.objective, problem.lam
            v = dense_v(problem, h)
            s, q = instance_scores(obj, lam, v)
            full = {"task": obj.task_grads(lam) @ v / obj.n_tasks, "support": s, "query": q}
            exact = {k: unit_values(full[k], [tuple(u) for u in series[k]["units"]]) for k in KINDS}
            ref = {k: spearman(exact[k], truth[k]) for k in KINDS}
            check = max(abs(ref[k] - committed[f"{k}_converged_spearman"]) for k in KINDS)
            print(f"{dataset} s{seed} {inner}: dense task-IF vs LOO t/s/q {ref['task']:.3f}/{ref['support']:.3f}/"
                  f"{ref['query']:.3f} (max |diff| to committed task_if {check:.1e})", flush=True)
            for name, opts in CANDIDATES.items():
                method = get_method("task_if_truncated", **opts)
                sc = unit_scores(problem, method, series)
                gap = [spearman(sc[k], truth[k]) - ref[k] for k in KINDS]
                vs_exact = spearman(sc["task"], exact["task"])
                gaps.setdefault((dataset, inner), {}).setdefault(name, []).append(
                    (*gap, method.last_info.iterations))
                print(f"  {name:<10s} gap t/s/q {gap[0]:+.3f}/{gap[1]:+.3f}/{gap[2]:+.3f}  vs exact {vs_exact:.3f}  "
                      f"iters {method.last_info.iterations}", flush=True)
    print("\nmean over the quick seeds: Spearman gap to dense task-IF (task/support/query), mean iterations")
    for (dataset, inner), by_name in gaps.items():
        for name, rows in by_name.items():
            m = np.mean(np.array(rows), axis=0)
            print(f"{dataset:<9s} {inner:<9s} {name:<10s} {m[0]:+.3f}/{m[1]:+.3f}/{m[2]:+.3f}  iters {m[3]:.1f}")


def part_e5() -> None:
    for dataset, seed in E5_PROBLEMS:
        for hidden in (8, 16):
            setup, _, problem = e5_problem(dataset, seed, hidden)
            lam0 = setup.model.init(seed)
            obj, lam = problem.objective, problem.lam
            exact = (obj.task_grads(lam) @ dense_v(problem, obj.dense_hessian(lam))).numpy()
            for name, opts in E5_CANDIDATES.items():
                runs, iters, rho = [], 0, 0.0
                for _ in range(5):  # each run against a meta-epoch timed just before it (the machine's load drifts)
                    epoch_s = median_time(lambda: obj.value_and_grad(lam0))
                    method = get_method("task_if_truncated", **opts)
                    sc = run_method(method, problem, "task")
                    runs.append(sc.seconds / epoch_s)
                    iters, rho = method.last_info.iterations, spearman(sc.values.numpy(), exact)
                q1, med, q3 = np.percentile(runs, [25, 50, 75])
                print(f"{dataset} s{seed} h{hidden} {name:<9s}: iters {iters}  vs exact {rho:.4f}  meta-epochs "
                      f"{med:.2f} (IQR {q1:.2f}-{q3:.2f})", flush=True)


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
