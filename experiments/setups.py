"""The problem of every experiment: task pools, model, inner problem and objectives from the run's config, the
two trainings, and the attribution problems at lam* and lam_T.

- task pools (train / eval / test) drawn with :func:`metainf.data.tasks.sample_task_pool` from the dataset's
  splits, seeded by the run's seed;
- an MLP (or Conv-4) over a flat parameter vector, and the ``unrolled`` or ``proximal`` inner problem;
- a recorded stochastic meta-training (the trajectory of TracIn / DVEmb and of trajectory-specific LOO), ending at
  lam_T, then full-batch convergence from lam_T to lam* (the point of the influence functions and converged LOO).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from experiments.base import ConfigError, RunContext
from metainf.core.bilevel import make_inner
from metainf.core.models import FlatModel, build_model
from metainf.core.objective import MetaObjective, pool_tensors
from metainf.data.noise import corrupt_instances, corrupt_tasks
from metainf.data.registry import load_split
from metainf.data.tasks import TaskPool, sample_task_pool
from metainf.methods import AttributionProblem
from metainf.train import DivergenceError, Trajectory, train_converged, train_stochastic


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


def load_opts(cfg: dict, dataset: str) -> dict:
    """Dataset options of the config: ``image_size`` (resize), and for MNIST the source ``mnist_source``
    (``"digits"`` keeps the small MLP experiments on scikit-learn's 8x8 digits; see ``metainf.data.mnist``)."""
    opts = {"image_size": cfg["image_size"]} if cfg.get("image_size") else {}
    if dataset == "mnist" and cfg.get("mnist_source"):
        opts["source"] = cfg["mnist_source"]
    return opts


#: the config's ``dtype`` (default float64: the exact MLP experiments; float32 for Conv-4)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: config keys of the Conv-4 model (``metainf.core.models.Conv4``), honoured when present (``--set width=32``)
CONV4_KEYS = ("width", "norm", "activation", "pool", "zero_head")


def config_dtype(cfg: dict) -> torch.dtype:
    """The floating type of the config's pools and parameters (``dtype``: "float32" or "float64", default 64)."""
    name = cfg.get("dtype", "float64")
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def model_from_config(cfg: dict, input_shape: tuple[int, ...]) -> FlatModel:
    """``cfg["model"]`` ("mlp" with ``hidden``, or "conv4" with the ``CONV4_KEYS`` present in the config)."""
    kind = cfg.get("model", "mlp")
    if kind == "conv4":
        return build_model(kind, input_shape, cfg["n_way"], **{k: cfg[k] for k in CONV4_KEYS if k in cfg})
    return build_model(kind, input_shape, cfg["n_way"], hidden=tuple(cfg["hidden"]))


def build_setup(ctx: RunContext, inner_kind: str, eval_split: str = "val") -> Setup:
    """Pools from the run's seed, the model and the objectives for ``inner_kind`` ("unrolled" or "proximal")."""
    cfg = ctx.config
    opts = load_opts(cfg, ctx.dataset)
    train = load_split(ctx.dataset, "train", ctx.data_root, **opts)
    held_out = load_split(ctx.dataset, eval_split, ctx.data_root, **opts)
    try:
        ptr = sample_task_pool(train, cfg["n_train_tasks"], cfg["n_way"], cfg["k_shot"], cfg["q_query"], seed=ctx.seed)
        pev = sample_task_pool(held_out, cfg["n_eval_tasks"], cfg["n_way"], cfg["k_shot"], cfg["q_query"],
                               seed=ctx.seed + 1000)
    except ValueError as error:  # more ways than classes, K+Q above the images per class: the config cannot run
        raise ConfigError(str(error)) from None
    try:
        model = model_from_config(cfg, ptr.input_shape)
    except ValueError as error:  # an unknown norm / activation / pooling, an image too small for Conv-4
        raise ConfigError(str(error)) from None
    model.module.to(ctx.torch_device)
    inner = make_inner(inner_kind, **cfg[inner_kind])
    dtype, device = ctx.torch_dtype(config_dtype(cfg)), ctx.torch_device  # --dtype, else the config's
    obj = MetaObjective(model, inner, pool_tensors(ptr, dtype, device), delta=cfg["delta"], chunk=cfg.get("chunk"))
    ev = MetaObjective(model, inner, pool_tensors(pev, dtype, device), chunk=cfg.get("chunk"))
    return Setup(ptr, pev, model, obj, ev, inner_kind)


#: a meta-loss at initialisation above this many times chance level (log n_way) means the inner step blew up
INNER_BLOWUP_FACTOR = 1e3


def check_inner_step(setup: Setup, lam0: Tensor, cfg: dict) -> None:
    """Raise ``DivergenceError`` naming the config key when the mean task loss at the initialisation exceeds
    ``INNER_BLOWUP_FACTOR * log(n_way)``: an untrained model is near chance level, so such a loss comes from an
    exploding inner adaptation (too large an inner learning rate)."""
    loss = float(setup.objective.task_losses(lam0).mean())
    chance = math.log(cfg["n_way"])
    if not loss <= INNER_BLOWUP_FACTOR * chance:
        key = "unrolled.lr" if setup.inner_kind == "unrolled" else "proximal.beta (raise it)"
        raise DivergenceError(f"the inner adaptation diverged: the meta-loss at initialisation is {loss:.3g}, over "
                              f"{INNER_BLOWUP_FACTOR:g}x chance level log(n_way) = {chance:.3g}; lower {key}")


def fit(setup: Setup, cfg: dict, seed: int) -> Fitted:
    """SGD/Adam meta-training with a recorded trajectory, then convergence of F from lam_T to ``cfg['tol']``."""
    t0 = time.perf_counter()
    tc = {"steps": cfg["outer_steps"], "batch": cfg["outer_batch"], "lr": cfg["outer_lr"],
          "optimizer": cfg.get("outer_optimizer", "sgd"), "seed": seed, "record_every": 1}
    x = setup.objective.tasks.xs  # the run's dtype and device
    lam0 = setup.model.init(seed, x.dtype).to(x.device)
    check_inner_step(setup, lam0, cfg)
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


def corrupt(pool: TaskPool, noise: dict | None, seed: int) -> TaskPool:
    """Apply the config's label noise (``{"kind": "tasks"|"instances", ...}``) to a training pool, or nothing."""
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
    dtype, device = ctx.torch_dtype(config_dtype(cfg)), ctx.torch_device
    obj = MetaObjective(setup.model, setup.objective.inner, pool_tensors(noisy, dtype, device), delta=cfg["delta"],
                        chunk=cfg.get("chunk"))
    test = load_split(ctx.dataset, "test", ctx.data_root, **load_opts(cfg, ctx.dataset))
    ptest = sample_task_pool(test, cfg["n_test_tasks"], cfg["n_way"], cfg["k_shot"], cfg["q_query"],
                             seed=ctx.seed + 2000)
    test_obj = MetaObjective(setup.model, setup.objective.inner, pool_tensors(ptest, dtype, device),
                             chunk=cfg.get("chunk"))
    return Setup(noisy, setup.eval_pool, setup.model, obj, setup.eval_objective, inner_kind), test_obj
