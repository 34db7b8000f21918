"""Would sharing one reverse pass among several finite-difference HVPs get ``task_if_fast`` under 3 meta-epochs?
(issue #20, the <= 3 meta-epoch bar)

``task_if_fast`` costs one summed-loss pass (d(lam), b = grad L_eval and the task losses) plus one finite-difference
HVP per CG iteration, each one summed-loss pass at lam + eps u: 5 iterations on E5's 100-task problems, so about 6
passes. A pass over 100 tasks of an 8x8 MLP takes a few milliseconds, so part of it is per-pass overhead, which
several points evaluated in one pass (the tasks repeated once per point, one reverse pass of the summed losses)
would share. This times, on E5's quick problems at 100 tasks (digits, seed 0, hidden 8 and 16, unrolled MAML,
float64, trained as E5 trains them; ``scripts/measure_fast.py`` part e5), in one process and interleaved over
``REPEATS`` rounds, medians relative to one summed-loss pass of the training tasks (E5's meta-epoch):

- ``base``: the pass ``task_if_fast`` starts with (``losses_and_gradients``: training and evaluation tasks);
- ``k points``: the data gradients d at k points in one pass, k = 1, 2, 3, 4, 8.

It then prints the least cost of 5 CG iterations when the first HVP shares its pass with the base point (b from a
summed-loss pass over the evaluation tasks alone, which the first direction needs; the other 4 HVPs are sequential,
since each direction needs the previous product): eval pass + 2-point pass + 4 passes.

Usage: OMP_NUM_THREADS=1 python scripts/probe_block_passes.py   (about 1 min on one free core)
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.func import vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure_fast import e5_problem  # noqa: E402
from metainf.core.bilevel import TaskData  # noqa: E402
from metainf.linalg.chunked import chunks  # noqa: E402
from metainf.linalg.finite_difference import losses_and_gradients  # noqa: E402

REPEATS = 15
POINTS = (1, 2, 3, 4, 8)
CG_STEPS = 5


def data_gradients_at(obj, points: torch.Tensor) -> torch.Tensor:
    """[d(points[j])]_j, d(lam) = (1/M) sum_k tau_k D_lam L_O^k(lam), from one reverse pass per chunk of the summed
    losses of the tasks repeated once per point (``MetaObjective.losses_and_data_grad`` at several points)."""
    k, m = points.shape[0], obj.n_tasks
    copies = points.detach().clone().requires_grad_(True)
    out = torch.zeros_like(copies)
    for sl in chunks(m, obj.chunk):
        tasks = TaskData(*(x[sl] for x in obj.tasks))
        n = tasks.xs.shape[0]
        repeated = TaskData(*(x.repeat(k, *([1] * (x.dim() - 1))) for x in tasks))
        losses = vmap(lambda t, p: obj.inner.outer_loss(obj.model, p, t))(repeated, copies.repeat_interleave(n, 0))
        out += torch.autograd.grad(obj.tau[sl].to(points.dtype).repeat(k) @ losses / m, copies)[0]
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    for hidden in (8, 16):
        _, _, problem = e5_problem("mnist", 0, hidden)
        obj, ev, lam = problem.objective, problem.eval_objective, problem.lam
        gen = torch.Generator().manual_seed(0)
        pts = {k: lam + 1e-6 * torch.randn(k, lam.numel(), generator=gen, dtype=lam.dtype) for k in POINTS}
        one = data_gradients_at(obj, pts[1])[0]
        assert torch.allclose(one, obj.losses_and_data_grad(pts[1][0])[1], rtol=1e-10, atol=1e-14)
        assert torch.allclose(ev.losses_and_data_grad(lam)[1], losses_and_gradients(obj, ev, lam)[2], rtol=1e-10)
        times: dict[str, list[float]] = {}
        for _ in range(REPEATS):
            times.setdefault("epoch", []).append(timed(lambda: obj.losses_and_data_grad(lam)))
            times.setdefault("base", []).append(timed(lambda: losses_and_gradients(obj, ev, lam)))
            times.setdefault("eval", []).append(timed(lambda: ev.losses_and_data_grad(lam)))
            for k in POINTS:
                times.setdefault(k, []).append(timed(lambda: data_gradients_at(obj, pts[k])))
        epoch = statistics.median(times["epoch"])
        rel = {key: statistics.median(v) / epoch for key, v in times.items()}
        print(f"digits h{hidden} seed 0: {lam.numel()} parameters, {obj.n_tasks} training and {ev.n_tasks} "
              f"evaluation tasks; meta-epoch {epoch * 1e3:.2f} ms", flush=True)
        print(f"  base pass {rel['base']:.2f}, evaluation tasks alone {rel['eval']:.2f}; "
              + ", ".join(f"{k} points {rel[k]:.2f}" for k in POINTS))
        now = rel["base"] + CG_STEPS * rel[1]
        shared = rel["eval"] + rel[2] + (CG_STEPS - 1) * rel[1]
        print(f"  {CG_STEPS} CG iterations: {now:.2f} meta-epochs as task_if_fast runs them, {shared:.2f} with the "
              "first HVP sharing the base pass", flush=True)


if __name__ == "__main__":
    main()
