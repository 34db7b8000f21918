"""Shared pieces of the experiments: the problem set-up, the two trainings, unit selection, ground truth, methods.

Every experiment builds the same kind of problem from its config:

- task pools (train / eval / test) drawn with :func:`metainf.data.tasks.sample_task_pool` from the dataset's
  splits, seeded by the run's seed;
- an MLP (or Conv-4) over a flat parameter vector, and the ``unrolled`` or ``proximal`` inner problem;
- a recorded stochastic meta-training (the trajectory of TracIn / DVEmb and of trajectory-specific LOO), ending at
  lam_T, then full-batch convergence from lam_T to lam* (the point of the influence functions and converged LOO).

Ground truth is in the project's sign convention, L_eval(without u) - L_eval(with u), and cached per unit through
:func:`metainf.executor.run_units`, so an interrupted run resumes without redoing finished retrainings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from experiments.base import ConfigError, RunContext
from metainf.bilevel import make_inner
from metainf.data.registry import load_split
from metainf.data.tasks import TaskPool, sample_task_pool
from metainf.executor import run_units
from metainf.loo import LooResult, retrain, retrain_many
from metainf.methods import AttributionProblem, Scores, get_method, run_method
from metainf.models import FlatModel, build_model
from metainf.objective import MetaObjective, pool_tensors
from metainf.solvers import IndefiniteHessianError, SolverNotConvergedError
from metainf.train import (DENSE_NEWTON_MAX_PARAMS, Trajectory, task_total_hessians, total_hessian, train_converged,
                           train_stochastic)
from metainf.trajloo import trajectory_loo_many

Unit = tuple[int, int | None]

#: per-task Hessians (exact start curvature for task removal) are formed only below this size; above it, H is used
MAX_TASK_HESSIAN_BYTES = 500 * 2**20

#: errors a method may legitimately raise on a problem it cannot handle; reported, not fatal
METHOD_ERRORS = (IndefiniteHessianError, SolverNotConvergedError, NotImplementedError)


@dataclass
class Setup:
    """Pools, model, inner problem and the objectives built from them."""

    train_pool: TaskPool
    eval_pool: TaskPool
    model: FlatModel
    objective: MetaObjective
    eval_objective: MetaObjective
    inner_kind: str


@dataclass
class Fitted:
    """The two trainings of one set-up: stochastic (trajectory, lam_T) then converged from lam_T (lam*)."""

    lam_traj: Tensor
    trajectory: Trajectory
    train_config: dict[str, Any]
    lam_star: Tensor
    grad_norm: float
    converged: bool
    seconds: float


def load_opts(cfg: dict) -> dict:
    """Dataset options of the config (``image_size`` for Omniglot / Mini-ImageNet)."""
    return {"image_size": cfg["image_size"]} if cfg.get("image_size") else {}


def build_setup(ctx: RunContext, inner_kind: str, eval_split: str = "val") -> Setup:
    """Pools from the run's seed, the model and the objectives for ``inner_kind`` ("unrolled" or "proximal")."""
    cfg = ctx.config
    opts = load_opts(cfg)
    train = load_split(ctx.dataset, "train", ctx.data_root, **opts)
    held_out = load_split(ctx.dataset, eval_split, ctx.data_root, **opts)
    try:
        ptr = sample_task_pool(train, cfg["n_train_tasks"], cfg["n_way"], cfg["k_shot"], cfg["q_query"], seed=ctx.seed)
        pev = sample_task_pool(held_out, cfg["n_eval_tasks"], cfg["n_way"], cfg["k_shot"], cfg["q_query"],
                               seed=ctx.seed + 1000)
    except ValueError as error:  # more ways than classes, K+Q above the images per class: the config cannot run
        raise ConfigError(str(error)) from None
    model = build_model(cfg.get("model", "mlp"), ptr.input_shape, cfg["n_way"], hidden=tuple(cfg["hidden"]))
    inner = make_inner(inner_kind, **cfg[inner_kind])
    obj = MetaObjective(model, inner, pool_tensors(ptr), delta=cfg["delta"], chunk=cfg.get("chunk"))
    ev = MetaObjective(model, inner, pool_tensors(pev), chunk=cfg.get("chunk"))
    return Setup(ptr, pev, model, obj, ev, inner_kind)


def fit(setup: Setup, cfg: dict, seed: int) -> Fitted:
    """SGD/Adam meta-training with a recorded trajectory, then convergence of F from lam_T to ``cfg['tol']``."""
    t0 = time.perf_counter()
    tc = {"steps": cfg["outer_steps"], "batch": cfg["outer_batch"], "lr": cfg["outer_lr"],
          "optimizer": cfg.get("outer_optimizer", "sgd"), "seed": seed, "record_every": 1}
    lam0 = setup.model.init(seed)
    lam_t, traj = train_stochastic(setup.objective, lam0, tc["steps"], tc["batch"], tc["lr"], tc["optimizer"],
                                   seed=seed, record_every=1)
    res = train_converged(setup.objective, lam_t, tol=cfg["tol"], max_iter=cfg["max_iter"])
    return Fitted(lam_t, traj, tc, res.lam, res.grad_norm, res.converged, time.perf_counter() - t0)


def problems(setup: Setup, fitted: Fitted, seed: int) -> dict[str, AttributionProblem]:
    """The attribution problems at lam* (``"converged"``) and at lam_T (``"trajectory"``), sharing the trajectory."""
    ids = setup.train_pool.task_ids
    common = dict(objective=setup.objective, eval_objective=setup.eval_objective, trajectory=fitted.trajectory,
                  train_config=fitted.train_config, task_ids=ids, seed=seed)
    return {"converged": AttributionProblem(lam=fitted.lam_star, **common),
            "trajectory": AttributionProblem(lam=fitted.lam_traj, **common)}


def choose_units(obj: MetaObjective, kind: str, n: int, seed: int) -> list[Unit]:
    """The first ``n`` tasks, or ``n`` (task, point) pairs drawn without replacement with ``default_rng(seed)``."""
    m = obj.n_tasks
    if kind == "task":
        return [(k, None) for k in range(min(n, m))]
    width = obj.tasks.ws.shape[1] if kind == "support" else obj.tasks.wq.shape[1]
    flat = np.random.default_rng(seed).choice(m * width, size=min(n, m * width), replace=False)
    return [(int(i) // width, int(i) % width) for i in sorted(flat)]


def metric_key(method: str) -> str:
    """A method name usable as a metric key (no dots: ``pkg.mod:Cls`` -> ``pkg_mod:Cls``)."""
    return method.replace(".", "_")


def unit_values(scores: Tensor, units: list[Unit]) -> np.ndarray:
    """Pick the units' entries out of a score array shaped like ``problem.shape(kind)``."""
    s = scores.detach().cpu().numpy()
    return np.array([s[k] if j is None else s[k, j] for k, j in units])


def _converged_unit(obj: MetaObjective, lam: Tensor, ev: MetaObjective, kind: str, task: int, point: int | None,
                    tol: float, max_iter: int, hessian: Tensor | None) -> float:
    res = retrain(obj, lam, ev, kind, task, point, tol=tol, max_iter=max_iter, hessian=hessian)
    if not res.converged:
        raise RuntimeError(f"leave-one-out retraining of {kind} unit ({task}, {point}) stopped at gradient norm "
                           f"{res.grad_norm:.2e} > tol {tol:.1e}: raise max_iter or the outer L2 delta")
    return res.effect


def start_curvature(obj: MetaObjective, lam: Tensor, kind: str,
                    h: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(H, H_k): the total Hessian of F at lam* (``h`` if given) and, for task removal, the per-task total Hessians
    [M, P, P]; (None, None) above ``DENSE_NEWTON_MAX_PARAMS``. Built by ``metainf.train.total_hessian`` (dense per-task
    blocks for the proximal inner problem)."""
    if lam.numel() > DENSE_NEWTON_MAX_PARAMS:
        return None, None
    h = total_hessian(obj, lam) if h is None else h
    per_task_bytes = obj.n_tasks * lam.numel() ** 2 * lam.element_size()
    hk = task_total_hessians(obj, lam) if kind == "task" and per_task_bytes <= MAX_TASK_HESSIAN_BYTES else None
    return h, hk


def block_curvature(obj: MetaObjective, lam: Tensor) -> tuple[Tensor, Tensor]:
    """(H, H_k) for the proximal inner problem from ONE pass of dense per-task blocks::

        H_k = D^2 L_O^k (``task_total_hessians``),    H = delta I + (1/M) sum_k tau_k H_k   (symmetrised)

    the matrices of :func:`start_curvature` (``total_hessian`` forms the same blocks again for H)."""
    hk = task_total_hessians(obj, lam)
    h = obj.delta * torch.eye(lam.numel(), dtype=lam.dtype) + torch.einsum("k,kij->ij", obj.tau, hk) / obj.n_tasks
    return 0.5 * (h + h.T), hk


def unit_start_hessian(obj: MetaObjective, curvature: tuple[Tensor | None, Tensor | None], task: int) -> Tensor | None:
    """The exact total Hessian at lam* of F without task ``task`` (H - tau_k H_k / M) when H_k is known, else H."""
    h, hk = curvature
    if h is None or hk is None:
        return h
    return h - obj.tau[task] * hk[task] / obj.n_tasks


def converged_many(obj: MetaObjective, lam: Tensor, ev: MetaObjective, kind: str, units: list[Unit], tol: float,
                   max_iter: int, curvature: tuple[Tensor | None, Tensor | None], batch: int,
                   eval_star: float) -> list[LooResult]:
    """``metainf.loo.retrain_many`` of ``units`` from their exact start Hessians (:func:`unit_start_hessian`);
    raises if one of them did not reach ``tol``."""
    hessians = [unit_start_hessian(obj, curvature, k) for k, _ in units]
    results = retrain_many(obj, lam, ev, [(kind, k, j) for k, j in units], hessians, tol=tol, max_iter=max_iter,
                           batch=batch, eval_star=eval_star)
    for (k, j), res in zip(units, results):
        if not res.converged:
            raise RuntimeError(f"leave-one-out retraining of {kind} unit ({k}, {j}) stopped at gradient norm "
                               f"{res.grad_norm:.2e} > tol {tol:.1e}: raise max_iter or the outer L2 delta")
    return results


def _converged_batch(*args: Any) -> list[float]:
    """The effects of :func:`converged_many` (one cached job of :func:`converged_loo`)."""
    return [res.effect for res in converged_many(*args)]


def converged_loo(ctx: RunContext, setup: Setup, fitted: Fitted, kind: str, units: list[Unit], tag: str,
                  curvature: tuple[Tensor | None, Tensor | None] | None = None) -> np.ndarray:
    """Converged leave-one-out effects of ``units`` (warm start from lam*, same optimiser, gradient tolerance).

    For small models the Newton stage starts from the exact total Hessian of the objective without the unit
    at lam* (tasks: H - tau_k H_k / M) or from H (points), ``curvature`` = :func:`start_curvature` (computed if
    None); the result is fixed by the tolerance, not by this choice. With ``loo_batch: n`` in the config (and a
    start curvature) the units are retrained n at a time by ``metainf.loo.retrain_many``: quasi-Newton runs from
    those Hessians sharing batched evaluations of F, falling back to the plain path per unit; one cached job per
    batch.
    """
    cfg, obj, lam = ctx.config, setup.objective, fitted.lam_star
    curvature = start_curvature(obj, lam, kind) if curvature is None else curvature
    batch = cfg.get("loo_batch")
    if batch and curvature[0] is not None:
        eval_star = float(setup.eval_objective.mean_loss(lam))
        args = {f"{kind}-{b}-{b + len(units[b:b + batch])}": (obj, lam, setup.eval_objective, kind, units[b:b + batch],
                                                             cfg["tol"], cfg["max_iter"], curvature, batch, eval_star)
                for b in range(0, len(units), batch)}
        out = run_units(_converged_batch, args, executor="serial" if ctx.executor == "serial" else ctx.executor,
                        scheduler=ctx.scheduler, cache_dir=ctx.unit_cache(f"loo-{tag}-{kind}-batched"),
                        cache_key=f"{ctx.seed}", desc=f"converged LOO {tag} {kind}")
        return np.array([e for u in args for e in out[u]])
    args = {}
    for k, j in units:
        args[f"{kind}-{k}-{j}"] = (obj, lam, setup.eval_objective, kind, k, j, cfg["tol"], cfg["max_iter"],
                                   unit_start_hessian(obj, curvature, k))
    out = run_units(_converged_unit, args, executor="serial" if ctx.executor == "serial" else ctx.executor,
                    scheduler=ctx.scheduler, cache_dir=ctx.unit_cache(f"loo-{tag}-{kind}"),
                    cache_key=f"{ctx.seed}", desc=f"converged LOO {tag} {kind}")
    return np.array([out[u] for u in args])


def trajectory_loo(problem: AttributionProblem, kind: str, units: list[Unit]) -> np.ndarray:
    """Trajectory-specific leave-one-out (every occurrence masked) for ``units``."""
    return trajectory_loo_many(problem, kind, units, "all").numpy()


def score_all(methods: tuple[str, ...], problem: AttributionProblem, kinds: tuple[str, ...],
              options: dict[str, dict] | None = None) -> tuple[dict[str, dict[str, Scores]], dict[str, str]]:
    """Run every method on every unit kind it supports; methods that cannot handle the problem are reported."""
    scores: dict[str, dict[str, Scores]] = {}
    skipped: dict[str, str] = {}
    for name in methods:
        method = get_method(name, **(options or {}).get(name, {}))
        for kind in kinds:
            if kind not in method.kinds:
                continue
            try:
                scores.setdefault(name, {})[kind] = run_method(method, problem, kind)
            except METHOD_ERRORS as error:
                skipped[f"{name}/{kind}"] = f"{type(error).__name__}: {error}"
    return scores, skipped


# -- removal, editing and accuracy (E1, E2) ----------------------------------------------------------------------
def corrupt(pool: TaskPool, noise: dict | None, seed: int) -> TaskPool:
    """Apply the config's label noise (``{"kind": "tasks"|"instances", ...}``) to a training pool, or nothing."""
    from metainf.data.noise import corrupt_instances, corrupt_tasks

    if not noise:
        return pool
    opts = {k: v for k, v in noise.items() if k != "kind"}
    if noise["kind"] == "tasks":
        return corrupt_tasks(pool, seed=seed + 7, **opts)
    if noise["kind"] == "instances":
        return corrupt_instances(pool, seed=seed + 7, **opts)
    raise ConfigError(f"noise.kind must be 'tasks' or 'instances', got {noise['kind']!r}")


def build_noisy_setup(ctx: RunContext, inner_kind: str) -> tuple[Setup, MetaObjective]:
    """A set-up whose training pool carries the config's label noise, and a clean meta-test objective."""
    setup = build_setup(ctx, inner_kind)
    cfg = ctx.config
    noisy = corrupt(setup.train_pool, cfg.get("noise"), ctx.seed)
    obj = MetaObjective(setup.model, setup.objective.inner, pool_tensors(noisy), delta=cfg["delta"],
                        chunk=cfg.get("chunk"))
    test = load_split(ctx.dataset, "test", ctx.data_root, **load_opts(cfg))
    ptest = sample_task_pool(test, cfg["n_test_tasks"], cfg["n_way"], cfg["k_shot"], cfg["q_query"],
                             seed=ctx.seed + 2000)
    test_obj = MetaObjective(setup.model, setup.objective.inner, pool_tensors(ptest), chunk=cfg.get("chunk"))
    return Setup(noisy, setup.eval_pool, setup.model, obj, setup.eval_objective, inner_kind), test_obj


def weights_without(obj: MetaObjective, kind: str, mask: np.ndarray) -> MetaObjective:
    """The objective with every unit of ``kind`` where ``mask`` is True removed (weight 0, no re-normalisation)."""
    m = torch.as_tensor(mask)
    if kind == "task":
        return obj.with_weights(tau=obj.tau * (~m).to(obj.tau.dtype))
    if kind == "support":
        return obj.with_weights(ws=obj.tasks.ws * (~m).to(obj.tasks.ws.dtype))
    return obj.with_weights(wq=obj.tasks.wq * (~m).to(obj.tasks.wq.dtype))


def most_harmful(scores: Tensor, fraction: float) -> np.ndarray:
    """Boolean mask of the ``round(fraction * n)`` lowest scores (most harmful first; ties by position)."""
    flat = scores.detach().cpu().numpy().ravel()
    n = int(round(fraction * flat.size))
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(flat, kind="stable")[:n]] = True
    return mask.reshape(tuple(scores.shape))


def accuracy(test_obj: MetaObjective, lam: Tensor) -> tuple[float, float]:
    """Meta-test accuracy: mean over test tasks and the half-width of its 95% interval."""
    from metainf.objective import mean_ci95

    return mean_ci95(test_obj.accuracy(lam))


def retrain_without(obj: MetaObjective, lam_star: Tensor, kind: str, mask: np.ndarray, cfg: dict) -> tuple[Tensor, float]:
    """Group removal: re-minimise F without the masked units from lam* (warm start); returns (lam, seconds)."""
    t0 = time.perf_counter()
    res = train_converged(weights_without(obj, kind, mask), lam_star, tol=cfg["tol"], max_iter=cfg["max_iter"])
    return res.lam, time.perf_counter() - t0


def edit_without(obj: MetaObjective, lam_star: Tensor, kind: str, mask: np.ndarray) -> tuple[Tensor, float]:
    """Model editing by influence: lam* + H_F^-1 (sum of the removed units' d grad F / d weight); (lam, seconds)."""
    from metainf.influence import InfluenceConfig, edit_instances, edit_tasks

    t0 = time.perf_counter()
    icfg = InfluenceConfig(tol=1e-8, max_iter=2000)
    m = torch.as_tensor(mask)
    if kind == "task":
        lam = edit_tasks(obj, lam_star, torch.nonzero(m).flatten().tolist(), icfg)
    else:
        es = m if kind == "support" else torch.zeros_like(obj.tasks.ws, dtype=torch.bool)
        eq = m if kind == "query" else torch.zeros_like(obj.tasks.wq, dtype=torch.bool)
        lam = edit_instances(obj, lam_star, es, eq, icfg)
    return lam, time.perf_counter() - t0
