"""The ground truth of the linear datamodeling score (LDS; Park et al. 2023, TRAK): losses of models retrained on
random subsets of the training tasks.

N subsets each hold a fraction alpha of the M training tasks (:func:`draw_subsets`, optionally with the share of
corrupted tasks varied on purpose). Every subset is retrained with ``2 * n_seeds`` seeds: estimate A averages the
evaluation losses of its first ``n_seeds`` seeds, estimate B those of the other ``n_seeds``. The LDS of a method
(``metainf.metrics.lds``) is taken against the mean of A and B; the ceiling (``metainf.metrics.lds_ceiling``) is
the Spearman between A and B, i.e. how well one retraining estimate ranks the subsets like another.

Retraining is supplied by the caller, so the module is model-agnostic: a :data:`TrainMany` maps (masks [B, M] bool,
seeds [B]) to the evaluation losses [B, E] of B retrainings. :class:`EnsembleTrainer` is the default for a
``MetaObjective``: ``metainf.train.train_stochastic`` on the objective restricted to each subset, B subsets
trained at once with ``torch.func.vmap`` over stacked parameters (each with its own batch order); :class:`PerRun`
adapts a one-run callable ``train_on(mask, seed) -> losses``. Batches of runs fan out through
``metainf.runtime.executor.run_units`` (serial, a local process pool, or Dask).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from metainf.core.bilevel import TaskData
from metainf.core.objective import MetaObjective, check_finite, stacked_value_and_grad
from metainf.metrics import LDS, lds, lds_ceiling
from metainf.runtime.executor import run_units
from metainf.train import optimizer_step

#: (subset masks [B, M] bool, one seed per run) -> evaluation losses [B, E] of the B retrained models
TrainMany = Callable[[Tensor, Sequence[int]], Tensor]


def draw_subsets(n_units: int, n_subsets: int = 24, alpha: float = 0.5, seed: int = 0,
                 corrupted: Sequence[bool] | np.ndarray | None = None) -> Tensor:
    """N subset masks [n_subsets, n_units] (bool), each holding round(alpha * n_units) units, from
    ``numpy.random.default_rng(seed)``.

    Without ``corrupted`` every subset is a uniform draw. With a boolean ``corrupted`` per unit the number of
    corrupted units per subset is spread evenly over its feasible range [max(0, size - n_clean), min(n_corrupted,
    size)] across the subsets (in shuffled order), the rest drawn from the clean units: the corrupted share varies
    on purpose, which spreads the subsets' losses beyond retraining noise.
    """
    size = int(round(alpha * n_units))
    if not 0 < size <= n_units or n_subsets < 2:
        raise ValueError(f"need 0 < alpha * n_units <= n_units and at least 2 subsets, got alpha={alpha}, "
                         f"n_units={n_units}, n_subsets={n_subsets}")
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_subsets, n_units), dtype=bool)
    if corrupted is None:
        for i in range(n_subsets):
            masks[i, rng.choice(n_units, size, replace=False)] = True
        return torch.from_numpy(masks)
    bad = np.asarray(corrupted, dtype=bool)
    if bad.shape != (n_units,):
        raise ValueError(f"corrupted must hold one flag per unit ({n_units}), got shape {bad.shape}")
    bad_idx, good_idx = np.flatnonzero(bad), np.flatnonzero(~bad)
    lo, hi = max(0, size - good_idx.size), min(bad_idx.size, size)
    counts = rng.permutation(np.rint(np.linspace(lo, hi, n_subsets)).astype(int))
    for i, c in enumerate(counts):
        masks[i, rng.choice(bad_idx, c, replace=False)] = True
        masks[i, rng.choice(good_idx, size - c, replace=False)] = True
    return torch.from_numpy(masks)


@dataclass
class SubsetLosses:
    """Two independent estimates of every subset's evaluation losses.

    ``masks`` [N, M]; ``losses_a`` / ``losses_b`` [N, E], each the mean over ``n_seeds`` retrainings; ``seeds_a`` /
    ``seeds_b`` [N, n_seeds] the seeds used (disjoint); ``seconds`` the wall time of all retrainings.
    """

    masks: Tensor
    losses_a: Tensor
    losses_b: Tensor
    seeds_a: np.ndarray
    seeds_b: np.ndarray
    seconds: float = float("nan")

    @property
    def losses(self) -> Tensor:
        """The ground truth the LDS is taken against: the mean of both estimates (all 2 * n_seeds runs)."""
        return 0.5 * (self.losses_a + self.losses_b)

    @property
    def alpha(self) -> float:
        return float(self.masks.double().mean())

    def score(self, scores: Tensor | np.ndarray, n_boot: int = 1000, seed: int = 0, covariates=None) -> LDS:
        """LDS of per-unit ``scores`` (L_eval(without u) - L_eval(with u), positive = helps) against
        :attr:`losses`: ``metainf.metrics.lds`` (partial with ``covariates`` [N] or [N, k])."""
        s = scores.detach().double().cpu().numpy() if isinstance(scores, Tensor) else scores
        return lds(s, self.masks.cpu().numpy(), self.losses.double().cpu().numpy(), n_boot, seed, covariates)

    def ceiling(self, n_boot: int = 1000, seed: int = 0, covariates=None) -> LDS:
        """Spearman between the two estimates A and B over subsets, with its CI (``metainf.metrics.lds_ceiling``;
        partial with ``covariates``). It bounds what a method's LDS against one estimate can reach; against their
        mean the bound is higher."""
        return lds_ceiling(self.losses_a.double().cpu().numpy(), self.losses_b.double().cpu().numpy(),
                           self.masks.cpu().numpy(), n_boot, seed, covariates)


def run_batch(train: TrainMany, masks: Tensor, seeds: list[int]) -> Tensor:
    """``train(masks, seeds)`` detached: one unit of work for :func:`metainf.runtime.executor.run_units`."""
    return train(masks, seeds).detach()


def subset_losses(train: TrainMany, masks: Tensor, n_seeds: int = 1, seed: int = 0, batch: int = 8,
                  executor: str = "serial", n_workers: int | None = None, progress: bool = False,
                  cache_dir: str | os.PathLike | None = None) -> SubsetLosses:
    """Retrain every subset ``2 * n_seeds`` times and average each half into an estimate (:class:`SubsetLosses`).

    Run (subset i, estimate e, repeat r) uses seed ``seed + (e * n_seeds + r) * N + i``: all distinct, so the two
    estimates share no retraining. Runs are grouped ``batch`` at a time into calls of ``train`` (one vmapped
    ensemble for :class:`EnsembleTrainer`), and the calls fan out through ``metainf.runtime.executor.run_units`` with
    ``executor`` / ``n_workers`` (``train`` must then be picklable). With ``cache_dir`` every finished call is
    saved there, so an interrupted run resumes where it stopped (the folder is bound to the masks and seeds).
    """
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds}")
    n = masks.shape[0]
    seeds = seed + (np.arange(2 * n_seeds)[:, None] * n + np.arange(n)[None, :])  # [2 * n_seeds, N]
    jobs = [(i, int(seeds[j, i])) for j in range(2 * n_seeds) for i in range(n)]
    units = {f"runs{b:04d}": (train, masks[[i for i, _ in jobs[b:b + batch]]], [s for _, s in jobs[b:b + batch]])
             for b in range(0, len(jobs), batch)}
    t0 = time.perf_counter()
    key = hashlib.sha256(masks.numpy().tobytes() + seeds.tobytes()).hexdigest()[:16] if cache_dir else None
    out = run_units(run_batch, units, executor=executor, n_workers=n_workers, progress=progress, desc="LDS subsets",
                    cache_dir=cache_dir, cache_key=key)
    losses = torch.cat([out[k] for k in units]).reshape(2 * n_seeds, n, -1)
    seconds = time.perf_counter() - t0
    return SubsetLosses(masks, losses[:n_seeds].mean(0), losses[n_seeds:].mean(0), seeds[:n_seeds].T,
                        seeds[n_seeds:].T, seconds)


def subset_objective(obj: MetaObjective, mask: Tensor) -> MetaObjective:
    """F restricted to the tasks in ``mask``: (1 / |S|) sum_{k in S} tau_k L_O^k + (delta/2) ||lam||^2."""
    idx = torch.nonzero(mask).flatten()
    return MetaObjective(obj.model, obj.inner, TaskData(*(x[idx] for x in obj.tasks)), obj.delta, obj.tau[idx],
                         obj.chunk)


def subset_schedule(members: np.ndarray, steps: int, batch: int, seed: int) -> np.ndarray:
    """The task indices [steps, batch] that ``train_stochastic(subset_objective(obj, mask), ..., seed=seed)``
    visits, mapped back to the full pool (``members`` = the subset's task indices in pool order)."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    out = []
    for _ in range(steps):
        if len(order) < batch:
            order += rng.permutation(members.size).tolist()
        out.append(members[order[:batch]])
        order = order[batch:]
    return np.stack(out)


@dataclass
class PerRun:
    """A :data:`TrainMany` from a one-run callable ``train_on(mask [M] bool, seed) -> eval losses [E]``."""

    train_on: Callable[[Tensor, int], Tensor]

    def __call__(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        return torch.stack([torch.as_tensor(self.train_on(m, int(s))) for m, s in zip(masks, seeds)])


@dataclass
class EnsembleTrainer:
    """The default :data:`TrainMany` for a meta-objective: ``train_stochastic`` on each subset, vmapped.

    Run b is ``metainf.train.train_stochastic(subset_objective(objective, masks[b]), lam0, steps, batch, lr,
    optimizer, seed=seeds[b])`` (same batch order and update rule; the unrolled meta-gradients are per-task gradients
    vmapped over runs, so they round differently from the trainer's summed-loss pass, by about 1e-6 relative in
    float32: each run is a valid retraining, not a bit-for-bit copy of ``train_stochastic``), and returns
    ``eval_objective.task_losses`` of its final lam. ``lam0`` is one start for every run (only the batch order
    depends on the seed) or a function of the seed, e.g. ``model.init``: then the initialisation varies too. The B runs
    step together: their parameters are stacked [B, P] and every step's meta-gradients are one ``vmap`` over runs of a
    ``vmap`` over the batch's tasks (unrolled inner problem; the proximal one, with data-dependent inner solves, loops
    over runs). Every subset must hold at least ``batch`` tasks.
    """

    objective: MetaObjective
    eval_objective: MetaObjective
    lam0: Tensor | Callable[[int], Tensor]
    steps: int
    batch: int
    lr: float
    optimizer: str = "sgd"

    def train(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        """The final meta-parameters of every run, [B, P]."""
        members = [torch.nonzero(m).flatten().numpy() for m in masks]
        if min(m.size for m in members) < self.batch:
            raise ValueError(f"every subset needs at least batch={self.batch} tasks, the smallest has "
                             f"{min(m.size for m in members)}")
        sched = np.stack([subset_schedule(m, self.steps, self.batch, int(s)) for m, s in zip(members, seeds)], 1)
        if callable(self.lam0):
            lam = torch.stack([self.lam0(int(s)).detach() for s in seeds])
        else:
            lam = self.lam0.detach().expand(len(members), -1).clone()
        m1, m2 = torch.zeros_like(lam), torch.zeros_like(lam)
        for t in range(self.steps):
            idx = torch.from_numpy(sched[t])  # [B, batch]
            g = check_finite(self.batch_grads(lam, idx), "a meta-gradient")
            lam, m1, m2 = optimizer_step(self.optimizer, lam, m1, m2, g, self.lr, t)
        return lam

    def batch_grads(self, lams: Tensor, idx: Tensor) -> Tensor:
        """(1/|B_t|) sum_{k in B_t^b} tau_k g_k(lam_b) + delta lam_b for every run b, [B, P]."""
        obj = self.objective
        tasks = TaskData(*(x[idx] for x in obj.tasks))  # [B, batch, ...]
        tau = obj.tau[idx]
        if not obj.inner.stationary:  # no per-task state to solve: every run's tasks in one vmapped pass
            model, inner = obj.model, obj.inner

            def one(lam: Tensor, tk: TaskData, tau_b: Tensor) -> Tensor:
                gk = vmap(lambda t: inner.total_grad(model, lam, t, lam))(tk)
                return tau_b @ gk / tau_b.shape[0] + obj.delta * lam

            return vmap(one)(lams, tasks, tau)
        return torch.stack([
            MetaObjective(obj.model, obj.inner, TaskData(*(x[b] for x in tasks)), obj.delta, tau[b], obj.chunk).grad(
                lams[b]) for b in range(lams.shape[0])])

    def __call__(self, masks: Tensor, seeds: Sequence[int]) -> Tensor:
        lams = self.train(masks, seeds)
        ev = self.eval_objective
        b = lams.shape[0]
        ones = torch.ones(b, ev.n_tasks, dtype=lams.dtype, device=lams.device)
        return stacked_value_and_grad(ev, lams, ones, ev.tasks.ws.expand(b, -1, -1), ev.tasks.wq.expand(b, -1, -1),
                                      with_grad=False).losses.detach()
