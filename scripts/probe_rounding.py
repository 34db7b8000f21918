"""How far does a rounding-level change move E1's Conv-4 training, and what does the summed-loss trainer save?

E1 trains Conv-4 in float32 with Adam for a fixed budget (``experiments/regime.py``). For each dataset and seed this
trains E1's full-data model twice from ``model.init(seed)``:

- as E1 does (``regime.train_budget``), giving lam_T and its meta-test accuracy (``removal.accuracy``: 400 test
  tasks, as E1 reports ``full.acc``);
- from the same lam_0 moved by one unit in the last place in every coordinate (``torch.nextafter`` towards +inf),
  a change of the size that another summation order, BLAS or device makes,

and prints the relative distance of the two lam_T and both accuracies. Their difference is the rounding floor of
one seed's figure, to set beside the spread over seeds that E1's intervals carry.

It also times, on one training batch of E1 (``outer_batch`` tasks, float32, one thread; median of 15 interleaved
rounds), the meta-gradient as the trainer computes it (``MetaObjective.grad``: one reverse pass of the summed task
losses) against the per-task path the trainer took before 3e769f8 (per-task total gradients ``task_grads``, then
their weighted mean), which gives the same gradient up to rounding for unrolled MAML. The two take other rounding,
so, by the first part, other figures: every Conv-4 result was rerun with the summed pass.

Usage: OMP_NUM_THREADS=1 python scripts/probe_rounding.py [omniglot] [mnist]   (~3 min per dataset on one core)
"""

from __future__ import annotations

import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import regime, removal, setups  # noqa: E402
from experiments.e1_removal import regime_config  # noqa: E402
from metainf.core.bilevel import TaskData  # noqa: E402
from metainf.core.objective import MetaObjective  # noqa: E402

SEEDS = (0, 1, 2)
ROUNDS = 15


def step_times(obj: MetaObjective, lam: torch.Tensor, batch: int) -> tuple[float, float, float]:
    """(per-task-gradient seconds, summed-pass seconds, relative difference of the two gradients) on the first
    ``batch`` tasks of ``obj`` at ``lam``."""
    idx = list(range(batch))
    sub = MetaObjective(obj.model, obj.inner, TaskData(*(x[idx] for x in obj.tasks)), obj.delta, obj.tau[idx],
                        obj.chunk)
    paths = {"per_task": lambda: sub.tau @ sub.task_grads(lam) / sub.n_tasks + sub.delta * lam,
             "summed": lambda: sub.grad(lam)}
    grads = {name: fn() for name, fn in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(ROUNDS):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    diff = float((grads["per_task"] - grads["summed"]).norm() / grads["per_task"].norm())
    return statistics.median(times["per_task"]), statistics.median(times["summed"]), diff


def probe(dataset: str) -> None:
    cfg = regime_config("quick", dataset)
    accs = []
    for seed in SEEDS:
        ctx = types.SimpleNamespace(config=cfg, dataset=dataset, data_root=None, torch_device=torch.device("cpu"),
                                    torch_dtype=lambda default: default, seed=seed)
        setup, test_obj = setups.build_noisy_setup(ctx, "unrolled")
        obj = setup.objective
        lam0 = setup.model.init(seed, setups.config_dtype(cfg))
        moved = torch.nextafter(lam0, torch.full_like(lam0, float("inf")))
        lam_a, _, t_a = regime.train_budget(obj, lam0, cfg, seed)
        lam_b, _, _ = regime.train_budget(obj, moved, cfg, seed)
        acc_a, acc_b = removal.accuracy(test_obj, lam_a)[0], removal.accuracy(test_obj, lam_b)[0]
        accs.append(acc_a)
        dist = float((lam_a - lam_b).norm() / lam_a.norm())
        per_task, summed, gdiff = step_times(obj, lam0, cfg["outer_batch"])
        print(f"{dataset} seed {seed}: lam_0 moved by 1 ulp ({float((moved - lam0).norm() / lam0.norm()):.1e} "
              f"relative) -> lam_T moved by {dist:.3f} relative; meta-test accuracy {acc_a:.4f} -> {acc_b:.4f} "
              f"({acc_b - acc_a:+.4f}); training {t_a:.1f} s. Gradient of one batch of {cfg['outer_batch']}: "
              f"per-task {per_task * 1e3:.1f} ms, summed pass {summed * 1e3:.1f} ms ({summed / per_task:.2f}x), "
              f"relative difference {gdiff:.1e}", flush=True)
    print(f"{dataset}: accuracy over seeds {', '.join(f'{a:.4f}' for a in accs)} (spread "
          f"{max(accs) - min(accs):.4f})\n", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    datasets = sys.argv[1:] or ["omniglot", "mnist"]
    unknown = set(datasets) - {"omniglot", "mnist"}
    if unknown:
        print(f"unknown dataset(s) {sorted(unknown)}: choose omniglot and/or mnist", file=sys.stderr)
        raise SystemExit(2)
    for dataset in datasets:
        probe(dataset)


if __name__ == "__main__":
    main()
