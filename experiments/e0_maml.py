"""E0: MAML sanity run. Meta-train MAML, then report 5-way 1-shot meta-test accuracy with a 95% interval.

This checks that the MAML the rest of the suite attributes (``metainf.core.bilevel.UnrolledInner`` driven by
``metainf.train.train_stochastic``) actually learns before its data are scored. The inner problem is
``theta_k(lam) = lam - a grad L_S^k(lam)`` repeated ``inner_steps`` times (second order unless ``first_order``), the
outer step Adam on ``(1/B) sum_{k in batch} D_lam L_O^k(lam)``. Meta-test accuracy is the post-adaptation query
accuracy (``MetaObjective.accuracy``) on ``n_test_tasks`` tasks from the *test* split (classes never seen in
training), with ``test_inner_steps`` adaptation steps (default: as in training; at inner lr 0.4 a Conv-4
meta-trained for one step diverges with three, measured: 80% -> 25% on Omniglot), summarised by
``metainf.metrics.mean_ci95`` (normal 95% interval over tasks). No influence scores are computed here, so no
sign convention is involved.

Deviation from Finn et al. (2017): tasks are drawn once into a fixed, seeded pool of ``n_train_tasks`` (the pool
``train_stochastic`` samples mini-batches from) instead of fresh tasks every step. The published full-Omniglot
figure (98.7%, Conv-4 width 64, 28x28, 60,000 steps, 4 rotations) is shown for context in its own row, labelled as
published; at quick scale the data are the Omniglot background subsets (or scikit-learn's digits for MNIST),
the model is smaller and training is minutes long, so only "clearly above chance" is expected.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from experiments.base import ConfigError, Experiment, RunContext, Workload
from metainf.core.bilevel import UnrolledInner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective, pool_tensors
from metainf.data.registry import data_source, load_split
from metainf.data.tasks import sample_task_pool
from metainf.metrics import mean_ci95
from metainf.train import train_stochastic

#: Finn et al. (2017), Table 1: MAML, Omniglot 5-way 1-shot, 98.7 +- 0.4 % (full Omniglot, Conv-4 width 64)
PUBLISHED_OMNIGLOT_5W1S = 0.987

_BASE: dict[str, Any] = {
    "mnist_source": "digits",  # scikit-learn's 8x8 digits, as before real MNIST (metainf.data.mnist)
    "n_way": 5, "k_shot": 1, "q_query": 5, "model": "conv4", "width": 16, "hidden": [64, 32], "norm": "group",
    "image_size": 16, "rotations": [0], "inner_steps": 1, "inner_lr": 0.4, "first_order": False,
    "test_inner_steps": 1, "meta_batch": 16, "meta_lr": 3e-3, "chunk": 64,
}
CONFIGS: dict[str, dict[str, Any]] = {
    # smoke checks the plumbing only (10 steps: Conv-4 stays near chance for its first ~50 steps)
    "smoke": {**_BASE, "width": 8, "n_train_tasks": 64, "steps": 10, "meta_batch": 4, "n_test_tasks": 200},
    # MNIST's 5 meta-train digits are fitted within ~200 steps (meta-train accuracy ~1); more steps only overfit
    "quick": {**_BASE, "n_train_tasks": 4000, "steps": 450, "n_test_tasks": 400,
              "by_dataset": {"mnist": {"steps": 250}}},
    "paper": {**_BASE, "width": 64, "image_size": 28, "rotations": [0, 90, 180, 270], "n_train_tasks": 20000,
              "steps": 60000, "meta_batch": 32, "meta_lr": 1e-3, "n_test_tasks": 1000},
}


def _load_opts(dataset: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = {"image_size": cfg["image_size"]}
    if dataset == "omniglot":
        opts["rotations"] = tuple(cfg["rotations"])
    if dataset == "mnist" and cfg.get("mnist_source"):
        opts["source"] = cfg["mnist_source"]
    return opts


def validate(scale: str, cfg: Mapping[str, Any]) -> None:
    """Config checks that need no data: Conv-4 needs image_size >= 16 (four 2x poolings), positive sizes."""
    if cfg["model"] == "conv4" and cfg["image_size"] < 16:
        raise ConfigError(f"E0 {scale}: conv4 needs image_size >= 16, got {cfg['image_size']}; raise image_size "
                          "or use model=mlp")
    for key in ("n_way", "k_shot", "q_query", "n_train_tasks", "n_test_tasks", "steps", "meta_batch",
                "inner_steps", "test_inner_steps"):
        if int(cfg[key]) < 1:
            raise ConfigError(f"E0 {scale}: {key} must be >= 1, got {cfg[key]}")
    if cfg["meta_batch"] > cfg["n_train_tasks"]:
        raise ConfigError(f"E0 {scale}: meta_batch {cfg['meta_batch']} exceeds n_train_tasks {cfg['n_train_tasks']}")


def train_steps(cfg: Mapping[str, Any], methods: tuple[str, ...]) -> tuple[Workload, ...]:
    """``steps`` Adam steps of ``meta_batch`` tasks on the config's model (nothing recorded but lam_0 and lam_T)."""
    if cfg["model"] != "conv4":
        return ()
    model = {"model": "conv4", "width": cfg["width"], "norm": cfg["norm"], "n_way": cfg["n_way"],
             "k_shot": cfg["k_shot"], "q_query": cfg["q_query"], "image_size": cfg["image_size"], "dtype": "float32",
             "delta": 0.0, "chunk": cfg["chunk"], "mnist_source": cfg["mnist_source"],
             "unrolled": {"steps": cfg["inner_steps"], "lr": cfg["inner_lr"], "first_order": cfg["first_order"]}}
    return (Workload("E0", model, cfg["steps"], cfg["meta_batch"], "unrolled", 2),)


def run(ctx: RunContext) -> dict:
    cfg = ctx.config
    torch.set_num_threads(1)  # per-task kernels are small: extra threads cost more in synchronisation on 2 cores
    start = time.perf_counter()
    dtype, device = ctx.torch_dtype(torch.float32), ctx.torch_device  # E0's own default: float32
    opts = _load_opts(ctx.dataset, cfg)
    train = load_split(ctx.dataset, "train", ctx.data_root, **opts)
    test = load_split(ctx.dataset, "test", ctx.data_root, **opts)
    for name, split in (("train", train), ("test", test)):
        if len(split.class_names) < cfg["n_way"]:
            raise ConfigError(f"E0: {cfg['n_way']}-way tasks need {cfg['n_way']} classes but the {ctx.dataset} "
                              f"{name} split has {len(split.class_names)}; lower n_way")
    n_way, k, q = cfg["n_way"], cfg["k_shot"], cfg["q_query"]
    ptr = sample_task_pool(train, cfg["n_train_tasks"], n_way, k, q, seed=ctx.seed)
    pte = sample_task_pool(test, cfg["n_test_tasks"], n_way, k, q, seed=ctx.seed + 1000)
    model = build_model(cfg["model"], ptr.input_shape, n_way, width=cfg["width"], hidden=tuple(cfg["hidden"]),
                        norm=cfg["norm"])
    model.module.to(device)
    inner = UnrolledInner(steps=cfg["inner_steps"], lr=cfg["inner_lr"], first_order=cfg["first_order"])
    obj = MetaObjective(model, inner, pool_tensors(ptr, dtype, device), chunk=cfg["chunk"])
    test_inner = UnrolledInner(steps=cfg["test_inner_steps"], lr=cfg["inner_lr"])
    test_obj = MetaObjective(model, test_inner, pool_tensors(pte, dtype, device), chunk=cfg["chunk"])
    lam0 = model.init(ctx.seed, dtype).to(device)
    acc_init, ci_init = mean_ci95(test_obj.accuracy(lam0))
    setup_s = time.perf_counter() - start

    t0 = time.perf_counter()
    lam, _ = train_stochastic(obj, lam0, steps=cfg["steps"], batch=cfg["meta_batch"], lr=cfg["meta_lr"],
                              optimizer="adam", seed=ctx.seed, record_every=cfg["steps"])
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    acc_vec = test_obj.accuracy(lam)
    acc, ci = mean_ci95(acc_vec)
    n_fit = min(len(ptr), cfg["n_test_tasks"])
    fit_obj = MetaObjective(model, test_inner, pool_tensors(ptr.subset(range(n_fit)), dtype, device),
                            chunk=cfg["chunk"])
    acc_train, ci_train = mean_ci95(fit_obj.accuracy(lam))
    eval_s = time.perf_counter() - t0
    chance = 1.0 / n_way
    runtime = time.perf_counter() - start
    ctx.log({"e0/test_acc": acc, "e0/runtime_s": runtime})

    shot = f"{n_way}-way {k}-shot"
    data = data_source(ctx.dataset, ctx.data_root, train)
    rows = [
        {"method": "MAML (ours)", "source": "measured", "data": data, "tasks": shot, "acc": acc, "ci95": ci,
         "n_test_tasks": len(pte), "runtime_s": runtime},
        {"method": "MAML, meta-train tasks (ours)", "source": "measured", "data": data, "tasks": shot,
         "acc": acc_train, "ci95": ci_train, "n_test_tasks": n_fit, "runtime_s": None},
        {"method": "initialisation, no meta-training (ours)", "source": "measured", "data": data, "tasks": shot,
         "acc": acc_init, "ci95": ci_init, "n_test_tasks": len(pte), "runtime_s": None},
        {"method": "chance (1 / n_way)", "source": "exact", "data": data, "tasks": shot, "acc": chance,
         "ci95": 0.0, "n_test_tasks": None, "runtime_s": None},
        {"method": "MAML, published (Finn et al. 2017), not ours", "source": "published",
         "data": "full Omniglot, Conv-4 width 64, 28x28, 60000 steps", "tasks": "5-way 1-shot",
         "acc": PUBLISHED_OMNIGLOT_5W1S, "ci95": 0.004, "n_test_tasks": None, "runtime_s": None},
    ]
    metrics = {"maml": {"acc": acc, "acc_ci95": ci, "train_task_acc": acc_train, "init_acc": acc_init,
                        "chance": chance, "above_chance": acc - ci - chance, "runtime_s": runtime,
                        "train_s": train_s, "eval_s": eval_s, "setup_s": setup_s,
                        "n_params": model.n_params}}
    return {"metrics": metrics, "tables": {"MAML meta-test accuracy": rows},
            "series": {"test_task_acc": acc_vec.tolist()}}


EXPERIMENT = Experiment(
    id="E0", title="MAML sanity run: 5-way 1-shot meta-test accuracy", datasets=("omniglot", "mnist"),
    configs=CONFIGS, run=run, default_methods=("maml",),
    seeds={"smoke": (0,), "quick": (0, 1, 2), "paper": (0, 1, 2)}, validate=validate,
    reproduce_datasets=("omniglot",), train_steps=train_steps,
)
