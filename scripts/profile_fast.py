"""Where ``task_if_fast``'s time goes on E5's problems, and its cost before / after issue #20's one-pass change.

Rebuilds E5's quick problem (digits, unrolled MAML, MLP, float64; ``experiments/e5_cost.py``) at M tasks and hidden
width H, trained as E5 trains it, and times in one process, interleaved over ``REPEATS`` rounds (the machine's load
drifts), medians in meta-epochs (one F value and total gradient at the initial point, as E5):

- ``per-task pass``: G and grad L_eval in one batched per-task-gradient pass (``task_and_eval_grads``);
- ``summed pass``: task losses, base meta-gradient and grad L_eval in one summed-loss pass (``losses_and_gradients``);
- ``fd hvp``: one finite-difference total HVP (one summed-loss pass at lam + eps u);
- ``before``: the previous ``task_if_fast``: per-task pass + CG on FD HVPs to relative residual 0.05 + G v;
- ``after``: ``task_if_fast`` now (summed pass + the same CG; G v from the HVP passes' losses);
- ``run_method``: the same through ``run_method`` (as E5 times it: with the peak-memory sampler thread).

It also prints the CG iterations and the Spearman correlation of the two score vectors (they agree to about 1e-7).

Usage: OMP_NUM_THREADS=1 python scripts/profile_fast.py [M H] ...   (default: 100 8 and 100 16; seed 0; ~1 min each)
"""

from __future__ import annotations

import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import setups  # noqa: E402
from experiments.e5_cost import CONFIGS  # noqa: E402
from metainf.linalg.finite_difference import (fd_hessian_operator, losses_and_gradients,  # noqa: E402
                                              task_and_eval_grads)
from metainf.linalg.cg import cg  # noqa: E402
from metainf.methods import get_method, run_method  # noqa: E402
from metainf.metrics import correlations  # noqa: E402

REPEATS = 9


def profile(n_tasks: int, hidden: int, seed: int) -> None:
    cfg = {**CONFIGS["quick"], "n_train_tasks": n_tasks, "hidden": [hidden]}
    ctx = types.SimpleNamespace(config=cfg, dataset="mnist", data_root=None, torch_device=torch.device("cpu"),
                                torch_dtype=lambda default: default, seed=seed)
    setup = setups.build_setup(ctx, "unrolled")
    obj, ev = setup.objective, setup.eval_objective
    lam0 = setup.model.init(seed, obj.tasks.xs.dtype)
    problem = setups.problems(setup, setups.fit(setup, cfg, seed), seed)["converged"]
    lam = problem.lam
    u = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(0), dtype=lam.dtype)
    grads, b = task_and_eval_grads(obj, ev, lam)
    hvp = fd_hessian_operator(obj, lam, obj.tau @ grads / obj.n_tasks)

    def before() -> torch.Tensor:
        g, rhs = task_and_eval_grads(obj, ev, lam)
        op = fd_hessian_operator(obj, lam, obj.tau @ g / obj.n_tasks)
        v, _ = cg(op, rhs, tol=0.05, max_iter=50)
        return g @ v / obj.n_tasks

    after_info = {}

    def after() -> torch.Tensor:
        method = get_method("task_if_fast")
        scores = method.score(problem, "task")
        after_info["iters"] = method.last_info.iterations
        return scores

    fns = {"meta-epoch": lambda: obj.value_and_grad(lam0), "per-task pass": lambda: task_and_eval_grads(obj, ev, lam),
           "summed pass": lambda: losses_and_gradients(obj, ev, lam), "fd hvp": lambda: hvp(u),
           "before": before, "after": after,
           "run_method": lambda: run_method(get_method("task_if_fast"), problem, "task")}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(REPEATS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    epoch = statistics.median(times["meta-epoch"])
    rho = correlations(before().numpy(), after().numpy())["spearman"]
    print(f"m{n_tasks}_h{hidden} seed {seed} (P = {lam.numel()}): CG iterations {after_info['iters']}, Spearman "
          f"before/after {rho:.6f}")
    for name, ts in times.items():
        med = statistics.median(ts)
        q1, q3 = statistics.quantiles(ts, n=4)[0], statistics.quantiles(ts, n=4)[2]
        print(f"  {name:<14s} {med * 1e3:8.2f} ms  {med / epoch:5.2f} meta-epochs  (IQR {q1 / epoch:.2f}-"
              f"{q3 / epoch:.2f})", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    args = sys.argv[1:]
    try:
        points = [tuple(int(a) for a in args[i:i + 2]) for i in range(0, len(args), 2)] if args else [(100, 8),
                                                                                                    (100, 16)]
    except ValueError:
        print("usage: profile_fast.py [M H] ... (integers)", file=sys.stderr)
        raise SystemExit(2)
    if any(len(p) != 2 for p in points):
        print("usage: profile_fast.py [M H] ... (pairs of integers)", file=sys.stderr)
        raise SystemExit(2)
    for m, h in points:
        profile(m, h, 0)


if __name__ == "__main__":
    main()
