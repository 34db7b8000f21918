"""Trajectory-specific leave-one-out: the ground truth of the trajectory-based methods (TracIn, DVEmb).

The recorded run (``metainf.train.train_stochastic``) is replayed from the same ``lam_0`` with the same task
schedule, learning rates and optimiser; only the removed unit's weight changes, and only in the batch slots where
it occurs (mask convention: the rest of the batch keeps its ``1/|B_t|``, nothing is re-averaged)::

    step t:  lam_{t+1} = U_t(lam_t, g_t),
             g_t = (1/|B_t|) sum_{s in B_t} w_s tau_{k_s} g_{k_s}(lam_t; ws, wq) + delta lam_t

    trajectory_loo(u) = L_eval(lam_T without u) - L_eval(lam_T with u)      (positive: u helps)

with ``L_eval = problem.eval_objective.mean_loss``. A unit is a task (its slot weight ``w_s``), a support point or a
query point of one task (its ``ws``/``wq`` entry while that task's slot is computed). ``occurrence="all"`` removes
the unit from every visit of its task; an integer removes it from that visit only (visits = the task's batch slots
in schedule order). Units are replayed side by side as "lanes", each through the trainer's own step.

Its own reliability: a replayed run can be chaotic, and then every removal effect is amplified noise.
:func:`chaos_floors` replays the schedule from slightly perturbed starts without any removal, and
:func:`trajectory_reliable` flags the effects of a unit kind as unreliable when that floor reaches half their spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metainf.core.bilevel import TaskData
from metainf.core.problem import AttributionProblem, check_kind
from metainf.core.objective import MetaObjective
from metainf.linalg.chunked import chunks
from metainf.runtime.seeding import seeded_randn
from metainf.train import Trajectory, batch_objective, optimizer_step

Unit = tuple[int, int | None]


@dataclass
class Lanes:
    """Side-by-side modified runs: lane u scales its unit's weight by ``scale`` in the slots ``slots[u]``.

    ``slots`` is ``[U, T, B]`` bool; ``onehot`` ``[U, S]`` / ``[U, Q]`` marks the point of instance units.
    """

    kind: str
    slots: Tensor
    onehot: Tensor | None = None
    scale: float = 0.0

    def weights(self, obj: MetaObjective, idx: list[int], t: int) -> tuple[Tensor, Tensor, Tensor]:
        """(tau [U, B], ws [U, B, S], wq [U, B, Q]) of the lanes at step t."""
        hit = self.slots[:, t, :].to(obj.tau)  # the lanes' masks are built on the CPU
        u = hit.shape[0]
        tau = obj.tau[idx].expand(u, -1)
        ws = obj.tasks.ws[idx].expand(u, -1, -1)
        wq = obj.tasks.wq[idx].expand(u, -1, -1)
        if self.kind == "task":
            return tau * (1 - (1 - self.scale) * hit), ws, wq
        factor = 1 - (1 - self.scale) * hit[:, :, None] * self.onehot.to(obj.tau)[:, None, :]
        return (tau, ws * factor, wq) if self.kind == "support" else (tau, ws, wq * factor)


def _lane_grads(obj: MetaObjective, lams: Tensor, idx: list[int], tau: Tensor, ws: Tensor, wq: Tensor) -> Tensor:
    """Batch meta-gradients g_t of every lane, [U, P]: each lane through the trainer's own step (its batch
    objective's ``grad``), one after the other, so every lane rounds as ``train_stochastic`` does."""
    tasks = TaskData(*(x[idx] for x in obj.tasks))
    return torch.stack([
        MetaObjective(obj.model, obj.inner, tasks._replace(ws=ws[u], wq=wq[u]), obj.delta, tau[u], obj.chunk).grad(
            lams[u]) for u in range(lams.shape[0])])


@dataclass
class ReplayResult:
    """``lams[t]`` = lam_t of every lane ([U, P]) for t = 0..T (only [lam_T] unless ``keep``); Adam moments
    ``m1[t]``, ``m2[t]`` before step t when ``keep`` and the optimiser is Adam (else empty)."""

    lams: list[Tensor]
    m1: list[Tensor]
    m2: list[Tensor]


def replay(obj: MetaObjective, lam0: Tensor, schedule: list[list[int]], lrs: list[float], optimizer: str = "sgd",
           lanes: Lanes | None = None, keep: bool = False) -> ReplayResult:
    """Re-run the outer loop over a fixed ``schedule`` for every lane (one unmodified lane if ``lanes`` is None),
    from ``lam0`` ([P], shared by the lanes, or [lanes, P], one start per lane)."""
    n_lanes = 1 if lanes is None else lanes.slots.shape[0]
    lam = lam0.detach().expand(n_lanes, -1).clone()
    m1, m2 = torch.zeros_like(lam), torch.zeros_like(lam)
    adam = keep and optimizer == "adam"
    out = ReplayResult([lam] if keep else [], [m1] if adam else [], [m2] if adam else [])
    for t, idx in enumerate(schedule):
        if lanes is None:  # the recorded run itself: the trainer's own gradient, so the replay is bit for bit
            g = batch_objective(obj, idx).grad(lam[0])[None]
        else:
            g = _lane_grads(obj, lam, idx, *lanes.weights(obj, idx, t))
        lam, m1, m2 = optimizer_step(optimizer, lam, m1, m2, g, lrs[t], t)
        if keep:
            out.lams.append(lam)
            if adam:
                out.m1.append(m1)
                out.m2.append(m2)
    if not keep:
        out.lams.append(lam)
    return out


def _check_reproduces(traj: Trajectory, step: int, lam: Tensor) -> None:
    """Raise if a replayed iterate differs from the recorded one beyond rounding."""
    ref = traj.lams[traj.steps.index(step)]
    err = float((lam - ref).norm() / ref.norm().clamp_min(1e-300))
    if err > torch.finfo(ref.dtype).eps ** 0.5:
        raise ValueError(f"replaying the recorded schedule does not reproduce lam at step {step} (relative error "
                         f"{err:.1e}): train_config['optimizer'] or the objective differ from the recorded run")


def require_trajectory(problem: AttributionProblem) -> Trajectory:
    if problem.trajectory is None or not problem.trajectory.schedule:
        raise ValueError("this needs the recorded stochastic training trajectory (problem.trajectory)")
    return problem.trajectory


def trajectory_states(problem: AttributionProblem) -> ReplayResult:
    """lam_t for every step t = 0..T (and the Adam moments): the recorded iterates when every step was recorded
    with SGD (first step re-checked), otherwise a deterministic replay of the schedule, checked against the
    recorded checkpoints. The optimiser is ``problem.train_config["optimizer"]`` (default SGD)."""
    traj = require_trajectory(problem)
    optimizer = problem.train_config.get("optimizer", "sgd")
    n_steps = len(traj.schedule)
    if optimizer == "sgd" and traj.steps == list(range(n_steps + 1)):
        first = replay(problem.objective, traj.lams[0], traj.schedule[:1], traj.lrs[:1], optimizer).lams[-1][0]
        _check_reproduces(traj, 1, first)  # one step guards against a missing optimizer in train_config
        return ReplayResult(list(traj.lams), [], [])
    res = replay(problem.objective, traj.lams[0], traj.schedule, traj.lrs, optimizer, keep=True)
    for step in traj.steps:
        _check_reproduces(traj, step, res.lams[step][0])
    return ReplayResult([x[0] for x in res.lams], [x[0] for x in res.m1], [x[0] for x in res.m2])


def visit_slots(schedule: list[list[int]], task: int) -> list[tuple[int, int]]:
    """The visits of ``task``: its (step, slot) pairs in schedule order."""
    return [(t, s) for t, idx in enumerate(schedule) for s, k in enumerate(idx) if k == task]


def unit_lanes(problem: AttributionProblem, kind: str, units: list[Unit], occurrence: str | int = "all",
               scale: float = 0.0) -> Lanes:
    """Lanes scaling each unit's weight by ``scale`` in all its task's visits or in visit number ``occurrence``."""
    check_kind(kind)
    schedule = require_trajectory(problem).schedule
    shape = problem.shape(kind)
    slots = torch.zeros(len(units), len(schedule), max(map(len, schedule)), dtype=torch.bool)
    onehot = None if kind == "task" else torch.zeros(len(units), shape[1], dtype=problem.lam.dtype)
    for u, (task, point) in enumerate(units):
        if not 0 <= task < shape[0]:
            raise ValueError(f"task {task} is out of range for {shape[0]} training tasks")
        if kind != "task":
            if point is None or not 0 <= point < shape[1]:
                raise ValueError(f"{kind} units need a point index in [0, {shape[1]}), got {point!r}")
            onehot[u, point] = 1.0
        visits = visit_slots(schedule, task)
        if occurrence != "all":
            if not isinstance(occurrence, int) or not 0 <= occurrence < len(visits):
                raise ValueError(f"occurrence must be 'all' or a visit index in [0, {len(visits)}) for task {task}, "
                                 f"got {occurrence!r}")
            visits = [visits[occurrence]]
        for t, s in visits:
            slots[u, t, s] = True
    return Lanes(kind, slots, onehot, scale)


def trajectory_loo_many(problem: AttributionProblem, kind: str, units: list[Unit], occurrence: str | int = "all",
                        scale: float = 0.0, chunk: int = 16) -> Tensor:
    """L_eval(lam_T with the unit's weight scaled by ``scale``) - L_eval(lam_T) for each unit (task, point).

    ``scale=0`` is removal; other values give the finite-difference runs of the first-order tests. Units are
    replayed in lanes of ``chunk``; a reference lane checks that the replay reproduces the recorded lam_T.
    """
    traj = require_trajectory(problem)
    optimizer = problem.train_config.get("optimizer", "sgd")
    lanes = unit_lanes(problem, kind, units, occurrence, scale)
    slots = torch.cat([torch.zeros_like(lanes.slots[:1]), lanes.slots])  # lane 0: the unmodified run
    onehot = None if lanes.onehot is None else torch.cat([torch.zeros_like(lanes.onehot[:1]), lanes.onehot])
    finals = []
    for sl in chunks(slots.shape[0], chunk):
        part = Lanes(kind, slots[sl], None if onehot is None else onehot[sl], scale)
        finals.append(replay(problem.objective, traj.lams[0], traj.schedule, traj.lrs, optimizer, part).lams[-1])
    lam_t = torch.cat(finals)
    _check_reproduces(traj, traj.steps[-1], lam_t[0])
    losses = torch.stack([problem.eval_objective.mean_loss(lam) for lam in lam_t])
    return (losses[1:] - losses[0]).detach()


def trajectory_loo(problem: AttributionProblem, kind: str, task: int, point: int | None = None,
                   occurrence: str | int = "all") -> float:
    """L_eval(lam_T without the unit) - L_eval(lam_T with it) for one task, support point or query point."""
    return float(trajectory_loo_many(problem, kind, [(task, point)], occurrence)[0])


def trajectory_loo_all(problem: AttributionProblem, kind: str, occurrence: str | int = "all",
                       chunk: int = 16) -> Tensor:
    """Trajectory-specific LOO of every unit of ``kind``, shaped like the scores (``problem.shape(kind)``)."""
    shape = problem.shape(kind)
    if kind == "task":
        units: list[Unit] = [(k, None) for k in range(shape[0])]
    else:
        units = [(k, j) for k in range(shape[0]) for j in range(shape[1])]
    return trajectory_loo_many(problem, kind, units, occurrence, chunk=chunk).reshape(shape)


#: trajectory LOO of a unit kind is flagged unreliable when its chaos floor reaches this fraction of the std of
#: the kind's effects
CHAOS_RATIO = 0.5


def kick_size(problem: AttributionProblem, kind: str, units: list[Unit]) -> float:
    """The change of lam_1 when one unit is dropped from the first batch, median over ``units``:
    lr_0 / |B_0| * median_u tau_k ||d g_k / d w_u (lam_0)||, with d g_k / d w_u = g_k for a task and the
    derivative of the task's total gradient in the point weight for a support / query point."""
    check_kind(kind)
    traj = require_trajectory(problem)
    obj, lam0 = problem.objective, traj.lams[0]
    if kind == "task":
        g = obj.task_grads(lam0)[[k for k, _ in units]]
        norms = obj.tau[[k for k, _ in units]] * g.norm(dim=1)
    else:
        state = obj.state_at(lam0)
        norms = []
        for k, j in units:
            t = TaskData(*(x[k] for x in obj.tasks))
            es, eq = torch.zeros_like(t.ws), torch.zeros_like(t.wq)
            (es if kind == "support" else eq)[j] = 1.0
            norms.append(obj.tau[k] * obj.inner.dgrad_dweights(obj.model, lam0, t, state[k], es, eq).norm())
        norms = torch.stack(norms)
    return float(traj.lrs[0] / len(traj.schedule[0]) * norms.median())


@dataclass
class ChaosFloor:
    """``floor``: root mean square over replays of L_eval(lam_T replayed from lam_0 + size * d_i) - L_eval(lam_T);
    ``size``: the norm of the perturbation; ``diffs`` [n_replays] the individual differences."""

    floor: float
    size: float
    diffs: Tensor


def chaos_floors(problem: AttributionProblem, sizes: list[float], n_replays: int = 4,
                 seed: int = 0) -> list[ChaosFloor]:
    """How far the replayed trajectory moves L_eval without any removal, for every perturbation size in ``sizes``.

    The recorded schedule is replayed (all weights kept) from lam_0 + size * d_i, d_i (i < ``n_replays``) random
    unit directions from ``torch.Generator().manual_seed(seed)``, shared by the sizes; all lanes in one replay.
    With ``size`` = :func:`kick_size` of a unit kind the perturbation is one removal's kick at step 0 in a random
    direction. A removal kicks the run like this at every visit of its task: in a stable (contracting) run the
    random kick fades while the removal's kicks add up, in a chaotic one both grow and the removal effects are
    dominated by the amplified noise, its floor comparable to their spread (:func:`trajectory_reliable`).
    """
    traj = require_trajectory(problem)
    obj, lam0 = problem.objective, traj.lams[0]
    gen = torch.Generator().manual_seed(seed)
    d = seeded_randn(n_replays, lam0.numel(), generator=gen, dtype=lam0.dtype, device=lam0.device)
    d = d / d.norm(dim=1, keepdim=True)
    starts = torch.cat([lam0[None], *(lam0 + size * d for size in sizes)])
    lanes = Lanes("task", torch.zeros(starts.shape[0], len(traj.schedule), max(map(len, traj.schedule)),
                                      dtype=torch.bool))
    lam_t = replay(obj, starts, traj.schedule, traj.lrs, problem.train_config.get("optimizer", "sgd"), lanes).lams[-1]
    _check_reproduces(traj, traj.steps[-1], lam_t[0])
    losses = torch.stack([problem.eval_objective.mean_loss(lam) for lam in lam_t]).detach()
    diffs = (losses[1:] - losses[0]).reshape(len(sizes), n_replays)
    return [ChaosFloor(float(x.pow(2).mean().sqrt()), size, x) for size, x in zip(sizes, diffs)]


def trajectory_reliable(floor: float, effects, ratio: float = CHAOS_RATIO) -> bool:
    """The rule: trajectory LOO is reliable when its chaos floor is below ``ratio`` x the std of its effects."""
    return floor < ratio * float(torch.as_tensor(effects, dtype=torch.float64).std())
