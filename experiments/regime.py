"""The learning regime of E1: a fixed Adam budget from one initialisation, removal by retraining, and the
influence edit at that (non-stationary) point.

At Conv-4 scale the meta-parameters are trained by Adam for a fixed number of steps (``outer_steps``: part of
the protocol, since longer training overfits noisy query labels), so lam_T is *not* a stationary point of F and
there is no converged leave-one-out to compare with. Removal is judged by retraining:

- :func:`train_budget`: ``metainf.train.train_stochastic`` with Adam, ``outer_steps`` x ``outer_batch`` tasks at
  ``outer_lr`` from lam_0, the batch order drawn from the run's seed; the recorded trajectory feeds TracIn / DVEmb.
- :func:`retrain_without`: the same schedule (same lam_0, steps, batch size, learning rate and seed) on the
  objective without the removed units: removed tasks leave the pool (its batches hold only kept tasks), removed
  support / query points get weight 0 in their task's loss.
- :func:`edit_without`: lam_T + (H_F + damping I)^-1 sum_u G_u with G_u = d(grad F)/d omega_u of the removed
  units (the first-order change of the stationarity condition when their weights go from 1 to 0), solved by
  ``cg_iters`` truncated CG iterations with total HVPs (:func:`total_hvp`: autodiff in float32, where a difference
  quotient of the meta-gradient is not accurate). lam_T is not a minimum, so this is the
  influence function's edit applied where its derivation does not strictly hold; it is reported as such.

Damping rule (:func:`damping_rule`): ``damping_factor`` x lambda_max(H_F) at lam_T, lambda_max from
``damping_power_iters`` power iterations on the total HVP. lam_T is not a minimum and H_F is indefinite there
(``scripts/measure_conv4_curvature.py``: on Omniglot seed 0 at quick scale lambda_max ~ 480 and a negative
eigenvalue ~ -0.45 after 8 power iterations, with 0.1 x the mean empirical-Fisher eigenvalue ~ 0.005), so the
damping must exceed |lambda_min| for CG to see positive curvature: a fixed fraction of lambda_max does, with
margin, where kronfluence's heuristic (0.1 x the mean eigenvalue of its curvature) does not. The same value goes to
every curvature-based method of a run and is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from experiments import removal, setups
from experiments.base import RunContext, Workload
from experiments.removal import weights_without
from metainf.core.objective import MetaObjective
from metainf.core.problem import AttributionProblem
from metainf.influence import hessian_operator
from metainf.linalg.finite_difference import fd_hessian_operator, prefer_fd
from metainf.linalg.neumann import power_iteration
from metainf.linalg.cg import cg
from metainf.methods.static import masked_unit_gradient
from metainf.train import Trajectory, batch_objective, train_stochastic


#: the attribution methods that scale to Conv-4 (the Conv-4 parts of E2 and E3): E1's, task_if_fast and grad_cos
SCALABLE_METHODS = ("task_if_truncated", "task_if_fast", "direct_if", "single_level_if", "trak", "tracin_cp",
                    "dvemb_fisher", "grad_cos", "random")
#: curvature-based methods given the run's damping (:func:`damping_rule`)
DAMPED = ("task_if", "task_if_truncated", "task_if_fast", "task_if_fisher", "task_if_nystrom", "direct_if",
          "single_level_if")


@dataclass(frozen=True)
class Trained:
    """One seed's model in the learning regime: the set-up (noisy training pool, clean validation tasks), the clean
    meta-test objective, lam_0, lam_T with its trajectory and training time, the full-data meta-test accuracy (mean,
    95% half-width), the damping of :func:`damping_rule`, and the attribution problem at lam_T."""

    setup: setups.Setup
    test_objective: MetaObjective
    lam0: Tensor
    lam: Tensor
    train_s: float
    acc: tuple[float, float]
    damping: float
    problem: AttributionProblem


def fit_regime(ctx: RunContext, inner_kind: str) -> Trained:
    """Build the noisy set-up of ``ctx.config``, train it by :func:`train_budget` from ``model.init(seed)``, measure
    its meta-test accuracy and the damping at lam_T (:class:`Trained`)."""
    cfg = ctx.config
    setup, test_obj = setups.build_noisy_setup(ctx, inner_kind)
    obj = setup.objective
    x = obj.tasks.xs  # the run's dtype (--dtype) and device, as setups.fit takes them
    lam0 = setup.model.init(ctx.seed, x.dtype).to(x.device)
    lam, traj, t_train = train_budget(obj, lam0, cfg, ctx.seed)
    acc = removal.accuracy(test_obj, lam)
    damping = damping_rule(obj, lam, cfg["damping_factor"], cfg["damping_power_iters"], ctx.seed)
    problem = AttributionProblem(lam=lam, objective=obj, eval_objective=setup.eval_objective, trajectory=traj,
                                 train_config=train_config(cfg, ctx.seed), task_ids=setup.train_pool.task_ids,
                                 seed=ctx.seed)
    return Trained(setup, test_obj, lam0, lam, t_train, acc, damping, problem)


def workload(part: str, cfg: dict, steps: int, recorded_runs: int, inner: str = "unrolled") -> Workload:
    """``steps`` outer steps on ``cfg``'s model at batch ``outer_batch``, with ``recorded_runs`` trajectories of
    :func:`train_budget` held at once (it records every step: ``outer_steps + 1`` vectors each)."""
    return Workload(part, cfg, steps, cfg["outer_batch"], inner, recorded_runs * (cfg["outer_steps"] + 1))


def method_options(cfg: dict, damping: float) -> dict[str, dict]:
    """The config's ``method_options``, with ``damping`` for every curvature-based method (:data:`DAMPED`)."""
    opts = {name: dict(o) for name, o in cfg["method_options"].items()}
    for name in DAMPED:
        opts.setdefault(name, {})["damping"] = damping
    return opts


def train_config(cfg: dict, seed: int) -> dict:
    """How :func:`train_budget` trains (the ``train_config`` of the attribution problem, recorded in results)."""
    return {"steps": cfg["outer_steps"], "batch": cfg["outer_batch"], "lr": cfg["outer_lr"],
            "optimizer": cfg["outer_optimizer"], "seed": seed, "record_every": 1}


def train_budget(obj: MetaObjective, lam0: Tensor, cfg: dict, seed: int) -> tuple[Tensor, Trajectory, float]:
    """(lam_T, trajectory, seconds) of the fixed-budget meta-training of ``obj`` from ``lam0``."""
    tc = train_config(cfg, seed)
    t0 = time.perf_counter()
    lam, traj = train_stochastic(obj, lam0, tc["steps"], tc["batch"], tc["lr"], tc["optimizer"], seed=seed,
                                 record_every=tc["record_every"])
    return lam, traj, time.perf_counter() - t0


def without(obj: MetaObjective, kind: str, mask: np.ndarray) -> MetaObjective:
    """``obj`` without the units of ``kind`` where ``mask`` is True: tasks dropped from the pool, points weighted 0."""
    if kind == "task":
        return batch_objective(obj, np.flatnonzero(~np.asarray(mask)).tolist())
    return weights_without(obj, kind, mask)


def retrain_without(obj: MetaObjective, lam0: Tensor, kind: str, mask: np.ndarray, cfg: dict,
                    seed: int) -> tuple[Tensor, float]:
    """(lam, seconds): :func:`train_budget` of the objective without the masked units, from the same ``lam0``."""
    lam, _, seconds = train_budget(without(obj, kind, mask), lam0, cfg, seed)
    return lam, seconds


def total_hvp(obj: MetaObjective, lam: Tensor) -> Callable[[Tensor], Tensor]:
    """u -> H_F u: a finite difference of the meta-gradient for unrolled second-order MAML in float64, else the
    autodiff HVP (``metainf.linalg.finite_difference.prefer_fd``: in float32 no difference quotient is accurate)."""
    return fd_hessian_operator(obj, lam) if prefer_fd(obj, lam) else hessian_operator(obj, lam, "exact")


def damping_rule(obj: MetaObjective, lam: Tensor, factor: float, power_iters: int, seed: int = 0) -> float:
    """``factor`` x lambda_max(H_F(lam)) from ``power_iters`` power iterations (module docstring)."""
    return factor * abs(power_iteration(total_hvp(obj, lam), lam, iters=power_iters, seed=seed))


def edit_without(obj: MetaObjective, lam: Tensor, kind: str, mask: np.ndarray, damping: float,
                 cg_iters: int) -> tuple[Tensor, float]:
    """(lam + (H_F + damping I)^-1 sum_{u in mask} G_u, seconds): the influence edit (module docstring).

    G_u = d(grad F)/d omega_u (tasks: tau_k g_k / M), summed over the mask without forming any G_u
    (``metainf.methods.static.masked_unit_gradient``). H_F u is
    :func:`total_hvp`. Raises
    ``metainf.solvers.IndefiniteHessianError`` if CG meets non-positive curvature."""
    t0 = time.perf_counter()
    m = torch.as_tensor(np.asarray(mask))
    b = masked_unit_gradient(obj, lam, kind, m)
    op = total_hvp(obj, lam)
    dlam, _ = cg(lambda u: op(u) + damping * u, b, tol=0.0, max_iter=cg_iters)
    return lam + dlam, time.perf_counter() - t0
