"""E3: agreement of every attribution method with leave-one-out retraining, for tasks, support and query points.

Two ground truths, both in the sign convention L_eval(without u) - L_eval(with u):

- converged LOO: F without the unit re-minimised from lam* to the gradient tolerance (``metainf.loo.retrain``);
  methods score the converged model lam*;
- trajectory-specific LOO: the recorded SGD run replayed with the unit masked (``metainf.trajloo``); methods
  score the model lam_T at the end of that run.

For every method and unit kind: Pearson and Spearman with each ground truth over the chosen units (all tasks up to
``n_units.task``; ``n_units.support`` / ``n_units.query`` seeded (task, point) pairs), the scoring time, and the
retraining time. The noise floor of converged retraining (a second retraining from a perturbed start) is reported
beside the spread of the true effects.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from experiments import common
from experiments.base import Experiment, RunContext
from metainf.loo import noise_floor
from metainf.methods import available_methods
from metainf.metrics import correlations

METHODS = ("task_if", "direct_if", "single_level_if", "tracin", "tracin_cp", "dvemb_exact", "dvemb_fisher",
           "grad_dot", "grad_cos", "trak", "ga_unlearn", "loss", "random")

_BASE = {
    "n_way": 5, "k_shot": 1, "q_query": 2, "model": "mlp", "hidden": [8], "delta": 0.1, "tol": 1e-8,
    "max_iter": 500, "outer_steps": 200, "outer_batch": 8, "outer_lr": 1.0, "outer_optimizer": "sgd",
    "inners": ["unrolled"], "unrolled": {"steps": 1, "lr": 0.4}, "proximal": {"beta": 2.0},
    "kinds": ["task", "support", "query"], "trajectory_ground_truth": True,
    "by_dataset": {"omniglot": {"image_size": 8}},
}
CONFIGS = {
    # smoke keeps 40 training tasks (with 8 the converged minimum is nearly singular and removal of one task
    # changes the landscape qualitatively) and scores only 8 units per kind
    "smoke": {**_BASE, "n_train_tasks": 40, "n_eval_tasks": 20, "outer_steps": 100,
              "n_units": {"task": 8, "support": 8, "query": 8}},
    "quick": {**_BASE, "n_train_tasks": 40, "n_eval_tasks": 20, "n_units": {"task": 40, "support": 40, "query": 40}},
    "paper": {**_BASE, "n_train_tasks": 200, "n_eval_tasks": 100, "hidden": [32], "inners": ["unrolled", "proximal"],
              "outer_steps": 2000, "n_units": {"task": 200, "support": 100, "query": 100}},
}


def _corr(pred: np.ndarray, actual: np.ndarray, prefix: str) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in correlations(pred, actual).items()}


def run(ctx: RunContext) -> dict:
    cfg = ctx.config
    torch.set_num_threads(1)  # tiny per-task kernels: more threads cost 30x in synchronisation on 2 cores
    kinds = tuple(cfg["kinds"])
    metrics: dict = {}
    series: dict = {}
    rows: list[dict] = []
    for inner_kind in cfg["inners"]:
        setup = common.build_setup(ctx, inner_kind)
        fitted = common.fit(setup, cfg, ctx.seed)
        probs = common.problems(setup, fitted, ctx.seed)
        truth: dict[str, dict] = {}
        gt_metrics: dict = {"train_grad_norm": fitted.grad_norm, "train_s": fitted.seconds}
        for kind in kinds:
            units = common.choose_units(setup.objective, kind, cfg["n_units"][kind], ctx.seed)
            t0 = time.perf_counter()
            conv = common.converged_loo(ctx, setup, fitted, kind, units, inner_kind)
            t_conv = time.perf_counter() - t0
            k0, j0 = units[0]
            floor = noise_floor(setup.objective, fitted.lam_star, setup.eval_objective, kind, k0, j0, tol=cfg["tol"])
            truth[kind] = {"units": units, "converged": conv}
            gt_metrics.update({f"{kind}_loo_s": t_conv, f"{kind}_noise_floor": floor,
                               f"{kind}_effect_std": float(conv.std())})
            if cfg["trajectory_ground_truth"]:
                t0 = time.perf_counter()
                truth[kind]["trajectory"] = common.trajectory_loo(probs["trajectory"], kind, units)
                gt_metrics[f"{kind}_trajloo_s"] = time.perf_counter() - t0
        metrics[inner_kind] = {"ground_truth": gt_metrics}
        series[inner_kind] = {kind: {"units": [list(u) for u in truth[kind]["units"]],
                                     "converged": truth[kind]["converged"].tolist(),
                                     **({"trajectory": truth[kind]["trajectory"].tolist()}
                                        if "trajectory" in truth[kind] else {}),
                                     "predicted": {}} for kind in kinds}
        skipped_all: dict[str, str] = {}
        for gt_name, problem in probs.items():
            if gt_name == "trajectory" and not cfg["trajectory_ground_truth"]:
                continue
            scores, skipped = common.score_all(ctx.methods, problem, kinds)
            skipped_all.update({f"{gt_name}/{k}": v for k, v in skipped.items()})
            for method, by_kind in scores.items():
                for kind, sc in by_kind.items():
                    pred = common.unit_values(sc.values, truth[kind]["units"])
                    actual = truth[kind][gt_name]
                    m = metrics[inner_kind].setdefault(common.metric_key(method), {})
                    m.update(_corr(pred, actual, f"{kind}_{gt_name}"))
                    m[f"{kind}_{gt_name}_seconds"] = sc.seconds
                    m[f"{kind}_{gt_name}_peak_mb"] = sc.peak_rss_mb
                    series[inner_kind][kind]["predicted"].setdefault(gt_name, {})[method] = pred.tolist()
                    loo_s = gt_metrics[f"{kind}_loo_s" if gt_name == "converged" else f"{kind}_trajloo_s"]
                    rows.append({"inner": inner_kind, "ground_truth": gt_name, "unit": kind, "method": method,
                                 "n": len(pred), **correlations(pred, actual), "score_s": sc.seconds,
                                 "retrain_s": loo_s, "speedup": loo_s / max(sc.seconds, 1e-9)})
        metrics[inner_kind]["skipped"] = {k.replace(".", "_").replace("/", "__"): v for k, v in skipped_all.items()}
    return {"metrics": metrics, "series": series, "tables": {"Agreement with leave-one-out retraining": rows}}


def figures(result: dict, out_dir: Path) -> list[Path]:
    """Predicted vs actual change for task-IF (and DVEmb on trajectory LOO), one panel per unit kind."""
    from replication.figures import method_color, new_figure, save_figure

    paths = []
    dataset = result.get("dataset", "")
    for seed, payload in result["per_seed"].items():
        for inner_kind, by_kind in payload["series"].items():
            for gt_name, methods in (("converged", ("task_if", "direct_if")), ("trajectory", ("dvemb_exact", "tracin"))):
                kinds = [k for k in by_kind if gt_name in by_kind[k]]
                if not kinds:
                    continue
                fig, axes = new_figure(ncols=len(kinds))
                axes = np.ravel(axes)
                for ax, kind in zip(axes, kinds):
                    actual = np.array(by_kind[kind][gt_name])
                    for method in methods:
                        pred = by_kind[kind]["predicted"].get(gt_name, {}).get(method)
                        if pred is None:
                            continue
                        pred = np.array(pred)
                        # scale each method's scores to the spread of the actual effects for a common axis
                        scale = actual.std() / pred.std() if pred.std() > 0 else 1.0
                        r = correlations(pred, actual)["spearman"]
                        ax.scatter(actual, pred * scale, s=12, color=method_color(method),
                                   label=f"{method} (rho={r:.2f})")
                    lim = np.abs(actual).max() * 1.1 if actual.size else 1.0
                    ax.plot([-lim, lim], [-lim, lim], color="0.7", lw=0.8, zorder=0)
                    ax.set_xlabel(f"actual change, {gt_name} LOO")
                    ax.set_ylabel("predicted (rescaled)")
                    ax.set_title(f"{kind} units")
                    ax.legend(fontsize=7)
                fig.suptitle(f"E3 {dataset} {inner_kind}, seed {seed}")
                paths.append(save_figure(fig, out_dir / f"e3-{dataset}-{inner_kind}-{gt_name}-seed{seed}.png"))
    return paths


def _validate(scale: str, config: dict) -> None:
    from experiments.base import ConfigError

    unknown = set(config["inners"]) - {"unrolled", "proximal"}
    if unknown:
        raise ConfigError(f"E3: unknown inner problems {sorted(unknown)}; use 'unrolled' and/or 'proximal'")
    if config["n_train_tasks"] < 2:
        raise ConfigError("E3: leave-one-out needs at least 2 training tasks")


EXPERIMENT = Experiment(
    id="E3", title="Agreement of every method with converged and trajectory-specific leave-one-out retraining",
    datasets=("mnist", "omniglot", "miniimagenet", "fc100"), configs=CONFIGS, run=run, figures=figures,
    default_methods=tuple(m for m in METHODS if m in available_methods()),
    seeds={"smoke": (0,), "quick": (0,), "paper": (0, 1, 2)}, validate=_validate,
    reproduce_datasets=("mnist",),
)
