"""Warm-start leave-one-out with a paired control (Koh & Liang 2017, section 5.1).

From the trained lam* two runs continue for K steps of ``metainf.train.train_stochastic`` arithmetic on the same
task schedule (epoch-wise permutations from ``numpy.random.default_rng(seed)``, batch ``|B|``) and learning rate:
the control with every unit, and the run without unit u, whose weight is 0 in the batch slots where its task is
visited (mask convention of ``metainf.groundtruth.trajectory``: the rest of the batch keeps its 1/|B|)::

    effect(u) = L_eval(lam_K without u) - L_eval(lam_K control)        (positive: u helps)

with ``L_eval = eval_objective.mean_loss``; Adam restarts with zero moments at lam*. The pairing removes the
batch-order noise from the difference, but not the effect's dependence on the seed. The noise floor is what the
seed alone does: ``n_control`` pairs of controls (no removal) with different seeds, floor = sqrt(mean over pairs
of (L_eval(control a) - L_eval(control b))^2). Effects whose spread is not well above the floor carry no signal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metainf.core.objective import MetaObjective, stacked_value_and_grad
from metainf.core.problem import check_kind
from metainf.groundtruth.lds import EnsembleTrainer, subset_schedule
from metainf.groundtruth.trajectory import Lanes, replay

Unit = tuple[int, int | None]


@dataclass
class WarmStartResult:
    """``effects`` [U] in the order of the units; ``control_diffs`` [n_control] the seed-to-seed differences of
    L_eval between control runs; ``noise_floor`` their root mean square; ``control_loss`` L_eval of the paired
    control; ``steps`` = K."""

    effects: Tensor
    control_diffs: Tensor
    noise_floor: float
    control_loss: float
    steps: int
    seconds: float

    @property
    def signal_to_noise(self) -> float:
        """std of the effects over the noise floor (below about 1: the effects are noise)."""
        return float(self.effects.std()) / self.noise_floor if self.noise_floor > 0 else float("inf")


def eval_losses(eval_obj: MetaObjective, lams: Tensor) -> Tensor:
    """L_eval (the unweighted mean query loss over the evaluation pool) at every row of ``lams`` [U, P], batched."""
    u = lams.shape[0]
    ones = torch.ones(u, eval_obj.n_tasks, dtype=lams.dtype, device=lams.device)
    return stacked_value_and_grad(eval_obj, lams, ones, eval_obj.tasks.ws.expand(u, -1, -1),
                                  eval_obj.tasks.wq.expand(u, -1, -1), with_grad=False).losses.mean(1).detach()


def removal_lanes(obj: MetaObjective, kind: str, units: list[Unit], schedule: list[list[int]]) -> Lanes:
    """Lane 0 the control, lane 1 + i without ``units[i]`` in every visit of its task in ``schedule``."""
    check_kind(kind)
    slots = torch.zeros(len(units) + 1, len(schedule), len(schedule[0]), dtype=torch.bool)
    n_points = obj.tasks.ws.shape[1] if kind == "support" else obj.tasks.wq.shape[1]
    onehot = None if kind == "task" else torch.zeros(len(units) + 1, n_points, dtype=obj.tau.dtype)
    sched = torch.tensor(schedule)
    for i, (task, point) in enumerate(units, start=1):
        if not 0 <= task < obj.n_tasks:
            raise ValueError(f"task {task} is out of range for {obj.n_tasks} training tasks")
        slots[i] = sched == task
        if onehot is not None:
            if point is None or not 0 <= point < n_points:
                raise ValueError(f"{kind} units need a point index in [0, {n_points}), got {point!r}")
            onehot[i, point] = 1.0
    return Lanes(kind, slots, onehot)


def warmstart_loo(obj: MetaObjective, eval_obj: MetaObjective, lam_star: Tensor, kind: str, units: list[Unit],
                  steps: int, batch: int, lr: float, optimizer: str = "sgd", seed: int = 0, n_control: int = 4,
                  chunk: int = 16) -> WarmStartResult:
    """Paired warm-start LOO effects of ``units`` ((task, point) pairs, point None for tasks) and the noise floor.

    The paired runs are replayed side by side (``metainf.groundtruth.trajectory.replay``, ``chunk`` lanes at a time);
    the ``2 * n_control`` control runs (seeds ``seed + 1 ...``) train at once (``EnsembleTrainer``, full pool).
    """
    if steps < 1 or n_control < 1:
        raise ValueError(f"steps and n_control must be >= 1, got {steps} and {n_control}")
    t0 = time.perf_counter()
    members = np.arange(obj.n_tasks)
    schedule = subset_schedule(members, steps, batch, seed).tolist()
    lrs = [lr] * steps
    lanes = removal_lanes(obj, kind, units, schedule)
    finals = []
    for start in range(0, lanes.slots.shape[0], chunk):
        part = Lanes(kind, lanes.slots[start:start + chunk],
                     None if lanes.onehot is None else lanes.onehot[start:start + chunk])
        finals.append(replay(obj, lam_star, schedule, lrs, optimizer, part).lams[-1])
    losses = eval_losses(eval_obj, torch.cat(finals))
    controls = EnsembleTrainer(obj, eval_obj, lam_star, steps, batch, lr, optimizer)
    full = torch.ones(2 * n_control, obj.n_tasks, dtype=torch.bool)
    ctrl = controls(full, [seed + 1 + i for i in range(2 * n_control)]).mean(1).detach()
    diffs = ctrl[0::2] - ctrl[1::2]
    return WarmStartResult((losses[1:] - losses[0]).detach(), diffs, float(diffs.pow(2).mean().sqrt()),
                           float(losses[0]), steps, time.perf_counter() - t0)
