"""E2: label-flip detection. Fraction of corrupted units found vs fraction inspected, and accuracy after removal.

Two noisy training pools per dataset: ``task_noise`` flips labels inside a fraction of the tasks (detect tasks);
``instance_noise`` flips a fraction of individual points (detect support and query points). Each method scores the
units against the clean validation loss; units are inspected from the lowest score up (most harmful first).
Reported per method and unit kind: the detection curve (fraction of corrupted units found after inspecting each
fraction), its area (AUC; random inspection gives about 0.5), the fraction found after inspecting 40%, and the
meta-test accuracy after removing the first ``removal_fraction`` and retraining (``removal_methods`` only).

On Omniglot a third setting, ``conv4_task_noise``, runs in E1's learning regime (``conv4``: Conv-4 on 16 px,
second-order MAML trained by Adam for a fixed budget, float32; 40% of the training tasks with 60% of their query
labels flipped, ``experiments.e1_removal``). Its methods (``experiments.regime.SCALABLE_METHODS``) score the tasks
at lam_T with E1's damping rule; ``instance_methods`` also score the query points (only query labels are noisy).
Removal retrains the same Adam schedule from the same lam_0 without the units (``experiments.regime``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from experiments import regime, removal, scoring, setups
from experiments.base import Experiment, RunContext, Workload
from experiments.e1_removal import regime_config
from metainf.methods import Scores, available_methods

#: the MLP settings' methods
MLP_METHODS = ("task_if", "direct_if", "single_level_if", "tracin", "dvemb_exact", "dvemb_fisher", "grad_dot",
               "trak", "loss", "random")
METHODS = tuple(dict.fromkeys(MLP_METHODS + regime.SCALABLE_METHODS))
GRID = [round(0.05 * i, 2) for i in range(1, 21)]

_BASE = {
    "mnist_source": "digits",  # scikit-learn's 8x8 digits, as before real MNIST (metainf.data.mnist)
    "n_way": 5, "k_shot": 1, "q_query": 2, "model": "mlp", "hidden": [8], "delta": 0.1, "tol": 1e-6,
    "max_iter": 300, "outer_steps": 100, "outer_batch": 8, "outer_lr": 1.0, "outer_optimizer": "sgd",
    "inners": ["unrolled"], "unrolled": {"steps": 1, "lr": 0.4}, "proximal": {"beta": 2.0},
    "settings": {
        "task_noise": {"noise": {"kind": "tasks", "fraction": 0.4, "flip_rate": 0.6, "where": "both"},
                       "kinds": ["task"]},
        "instance_noise": {"noise": {"kind": "instances", "fraction": 0.3, "where": "both"},
                           "kinds": ["support", "query"]},
    },
    "removal_fraction": 0.25, "removal_methods": ["task_if", "dvemb_exact", "tracin", "loss", "random"],
    "conv4": None,  # the Conv-4 setting, Omniglot only (module docstring)
    "by_dataset": {"omniglot": {"image_size": 12, "hidden": [4], "delta": 0.03}},  # 8x8, delta 0.1: lam* = 0
}


def conv4_config(scale: str) -> dict:
    """The Conv-4 setting: E1's learning regime at ``scale``, its methods, and which of them score query points and
    are judged by retraining."""
    return {**regime_config(scale), "inner": "unrolled", "methods": list(regime.SCALABLE_METHODS),
            "kinds": ["task", "query"], "instance_methods": ["task_if_truncated", "task_if_fast"],
            "removal_methods": ["task_if_truncated", "tracin_cp", "random"], "removal_fraction": 0.25}


def _with_conv4(scale: str) -> dict:
    return {"omniglot": {**_BASE["by_dataset"]["omniglot"], "conv4": conv4_config(scale)}}

CONFIGS = {
    "smoke": {**_BASE, "n_train_tasks": 40, "n_eval_tasks": 20, "n_test_tasks": 50, "outer_steps": 50,
              "removal_methods": ["task_if", "random"], "by_dataset": _with_conv4("smoke")},
    "quick": {**_BASE, "n_train_tasks": 40, "n_eval_tasks": 20, "n_test_tasks": 200,
              "by_dataset": _with_conv4("quick")},
    # paper: full-size Omniglot images and the paper-scale width; only the smaller outer L2 is kept from the
    # quick-scale Omniglot set-up (chosen there so that lam = 0 is not a strict minimum; unverified at this size)
    "paper": {**_BASE, "n_train_tasks": 200, "n_eval_tasks": 100, "n_test_tasks": 600, "hidden": [32],
              "by_dataset": {"omniglot": {"delta": 0.03, "conv4": conv4_config("paper")}},
              "outer_steps": 2000},
}


def detection_curve(scores: np.ndarray, corrupted: np.ndarray, grid: list[float]) -> list[float]:
    """Fraction of corrupted units among the first ``f * n`` inspected (lowest scores first), for f in ``grid``."""
    order = np.argsort(scores.ravel(), kind="stable")
    hits = np.cumsum(corrupted.ravel()[order])
    total = max(int(corrupted.sum()), 1)
    n = scores.size
    return [float(hits[max(int(round(f * n)), 1) - 1] / total) for f in grid]


def detect(setting: str, method: str, kind: str, sc: Scores, corrupted: np.ndarray, fraction: float,
           retrain: Callable[[np.ndarray], tuple[float, float]] | None) -> tuple[dict, dict, list[float]]:
    """(metric entry, table row, detection curve) of one method's scores on one unit kind; ``retrain`` (removal
    mask -> meta-test accuracy and its 95% half-width) is given for the methods judged by retraining."""
    curve = detection_curve(sc.values.cpu().numpy(), corrupted, GRID)
    entry = {f"{kind}_auc": float(np.mean(curve)), f"{kind}_found_at_40": curve[GRID.index(0.4)],
             f"{kind}_score_s": sc.seconds}
    row = {"setting": setting, "unit": kind, "method": method, "auc": entry[f"{kind}_auc"],
           "found_at_40": entry[f"{kind}_found_at_40"], "score_s": sc.seconds}
    if retrain is not None:
        acc = retrain(removal.most_harmful(sc.values, fraction))
        entry[f"{kind}_test_acc_at_25"] = acc[0]
        row.update({"test_acc_at_25": acc[0], "acc_ci95": acc[1]})
    if setting == "task_noise" and method in ("task_if", "random"):
        row["paper_ref"] = "detection/influence" if method == "task_if" else "detection/random"
    return entry, row, curve


def run_conv4(ctx: RunContext, cfg: dict, methods: tuple[str, ...]) -> tuple[dict, dict, list[dict]]:
    """(metrics, curves, rows) of the Conv-4 setting (module docstring)."""
    setting = "conv4_task_noise"
    ctx = dataclasses.replace(ctx, config=cfg)
    fit = regime.fit_regime(ctx, cfg["inner"])
    obj, pool = fit.setup.objective, fit.setup.train_pool
    truth = {"task": pool.task_corrupted, "query": pool.query_corrupted}
    opts = regime.method_options(cfg, fit.damping)
    scores, skipped = scoring.score_all(methods, fit.problem, ("task",), opts)
    instance = tuple(m for m in methods if m in cfg["instance_methods"])
    kinds = tuple(k for k in cfg["kinds"] if k != "task")
    more, skipped_more = scoring.score_all(instance, fit.problem, kinds, opts)
    for method, by_kind in more.items():
        scores.setdefault(method, {}).update(by_kind)
    m: dict = {"full": {"acc": fit.acc[0], "acc_ci95": fit.acc[1], "train_s": fit.train_s},
               "n_params": fit.setup.model.n_params, "dtype": cfg["dtype"], "damping": fit.damping}
    curves: dict = {}
    rows: list[dict] = []
    for method, by_kind in scores.items():
        for kind, sc in by_kind.items():
            def retrain(mask: np.ndarray, kind: str = kind) -> tuple[float, float]:
                lam, _ = regime.retrain_without(obj, fit.lam0, kind, mask, cfg, ctx.seed)
                return removal.accuracy(fit.test_objective, lam)

            entry, row, curve = detect(setting, method, kind, sc, truth[kind].numpy(), cfg["removal_fraction"],
                                       retrain if method in cfg["removal_methods"] else None)
            m.setdefault(scoring.metric_key(method), {}).update(entry)
            curves.setdefault(kind, {})[method] = curve
            rows.append(row)
    m["skipped"] = {k.replace("/", "__"): v for k, v in {**skipped, **skipped_more}.items()}
    return m, curves, rows


def run(ctx: RunContext) -> dict:
    cfg = ctx.config
    torch.set_num_threads(1)
    metrics: dict = {}
    series: dict = {}
    rows: list[dict] = []
    inner_kind = cfg["inners"][0]
    for setting, spec in cfg["settings"].items():
        sub = RunContext(**{**ctx.__dict__, "config": {**cfg, "noise": spec["noise"]}})
        setup, test_obj = setups.build_noisy_setup(sub, inner_kind)
        fitted = setups.fit(setup, cfg, ctx.seed)
        problem = setups.problems(setup, fitted, ctx.seed)["converged"]
        full = removal.accuracy(test_obj, fitted.lam_star)
        m = metrics.setdefault(setting, {"full": {"acc": full[0], "acc_ci95": full[1]}})
        methods = scoring.part_methods(ctx.methods, MLP_METHODS, EXPERIMENT.default_methods)
        scores, skipped = scoring.score_all(methods, problem, tuple(spec["kinds"]))
        pool = setup.train_pool
        truth = {"task": pool.task_corrupted, "support": pool.support_corrupted, "query": pool.query_corrupted}
        for method, by_kind in scores.items():
            for kind, sc in by_kind.items():
                def retrain(mask: np.ndarray, kind: str = kind) -> tuple[float, float]:
                    lam, _ = removal.retrain_without(setup.objective, fitted.lam_star, kind, mask, cfg)
                    return removal.accuracy(test_obj, lam)

                entry, row, curve = detect(setting, method, kind, sc, truth[kind].numpy(), cfg["removal_fraction"],
                                           retrain if method in cfg["removal_methods"] else None)
                m.setdefault(scoring.metric_key(method), {}).update(entry)
                series.setdefault(setting, {}).setdefault(kind, {})[method] = curve
                rows.append(row)
        m["skipped"] = {k.replace("/", "__"): v for k, v in skipped.items()}
    if cfg["conv4"]:
        conv4 = cfg["conv4"]
        methods = scoring.part_methods(ctx.methods, conv4["methods"], EXPERIMENT.default_methods)
        metrics["conv4_task_noise"], series["conv4_task_noise"], conv4_rows = run_conv4(ctx, conv4, methods)
        rows += conv4_rows
    return {"metrics": metrics, "series": {"grid": GRID, "curves": series},
            "tables": {"Label-flip detection": rows}}


def train_steps(cfg: dict, methods: tuple[str, ...]) -> tuple[Workload, ...]:
    """The Conv-4 setting's outer steps (the MLP settings are not estimated): training, then one retraining per
    removal method on tasks and per removal-and-instance method on every other kind (``outer_steps`` each)."""
    conv4 = cfg["conv4"]
    if not conv4:
        return ()
    part = scoring.part_methods(methods, conv4["methods"], EXPERIMENT.default_methods)
    removed = [m for m in part if m in conv4["removal_methods"]]
    others = len([k for k in conv4["kinds"] if k != "task"]) * len([m for m in removed
                                                                     if m in conv4["instance_methods"]])
    runs = 1 + len(removed) + others
    return (regime.workload("E2 conv4", conv4, runs * conv4["outer_steps"], 2, conv4["inner"]),)


EXPERIMENT = Experiment(
    id="E2", title="Label-flip detection: corrupted units found and accuracy after removal vs fraction inspected",
    datasets=("mnist", "omniglot", "miniimagenet", "fc100"), configs=CONFIGS, run=run,
    default_methods=tuple(m for m in METHODS if m in available_methods()),
    seeds={"smoke": (0,), "quick": (0, 1, 2), "paper": (0, 1, 2)},
    reproduce_datasets=("mnist", "omniglot"), train_steps=train_steps,
)
