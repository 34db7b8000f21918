"""E6: influence by training phase. Does a unit's value depend on when it was seen (DVEmb's finding), in meta learning?

The exact Meta-DVEmb score of a unit (its first-order effect on the final evaluation loss, through the recorded
SGD trajectory) is a sum over training steps; ``metainf.methods.trajectory.phase_contributions`` splits it into
early / middle / late thirds of the steps. Per unit kind we report the share of the total absolute contribution
from each phase, the Spearman correlation between the early and late contributions (low: the ranking of units
depends on the phase), the overlap of the top-10% units by early and by late contribution, and, for TracIn (which
ignores the propagation through later steps), the same shares for contrast. Sign convention: positive helps.

On Omniglot the same split runs in E1's learning regime too (``conv4``: Conv-4 on 16 px, second-order MAML trained
by Adam for a fixed budget, float32, 40% of the tasks with noisy query labels; ``experiments.regime.fit_regime``),
with the per-step methods that scale to it (``dvemb_fisher``, the paper-faithful Fisher variant, and
``tracin_cp``, with the config's ``method_options``: TracInCP at its checkpoint interval), under the metric prefix
``conv4``; the share of corrupted tasks among the top-10% most harmful
by early and by late contribution is reported beside it (``<kind>_early_bottom10_corrupted`` / ``late_``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from experiments import regime, scoring, setups
from experiments.base import Experiment, RunContext, Workload
from experiments.e1_removal import regime_config
from metainf.core.problem import AttributionProblem
from metainf.methods import get_method
from metainf.methods.trajectory import phase_contributions
from metainf.metrics import correlations
from metainf.runtime.interrupts import reraise_interruption

PHASES = ("early", "middle", "late")
#: the MLP part's methods (exact Meta-DVEmb, and TracIn for contrast)
MLP_METHODS = ("dvemb_exact", "tracin")
_BASE = {
    "mnist_source": "digits",  # scikit-learn's 8x8 digits, as before real MNIST (metainf.data.mnist)
    "n_way": 5, "k_shot": 1, "q_query": 2, "model": "mlp", "hidden": [8], "delta": 0.1, "tol": 1e-6,
    "max_iter": 300, "outer_steps": 150, "outer_batch": 8, "outer_lr": 1.0, "outer_optimizer": "sgd",
    "inners": ["unrolled"], "unrolled": {"steps": 1, "lr": 0.4}, "proximal": {"beta": 2.0},
    "kinds": ["task", "support", "query"],
    "conv4": None,  # the learning-regime part, Omniglot only (module docstring)
    "by_dataset": {"omniglot": {"image_size": 12, "hidden": [4], "delta": 0.03}},  # 8x8, delta 0.1: lam -> 0
}


def conv4_config(scale: str) -> dict:
    """The learning-regime part: E1's regime at ``scale`` (unrolled MAML), its per-step methods, tasks only."""
    return {**regime_config(scale), "inner": "unrolled", "methods": ["dvemb_fisher", "tracin_cp"], "kinds": ["task"]}


def _with_conv4(scale: str) -> dict:
    return {"omniglot": {**_BASE["by_dataset"]["omniglot"], "conv4": conv4_config(scale)}}


CONFIGS = {
    "smoke": {**_BASE, "n_train_tasks": 20, "n_eval_tasks": 10, "outer_steps": 30, "kinds": ["task"],
              "by_dataset": _with_conv4("smoke")},
    "quick": {**_BASE, "n_train_tasks": 40, "n_eval_tasks": 20, "by_dataset": _with_conv4("quick")},
    "paper": {**_BASE, "n_train_tasks": 200, "n_eval_tasks": 100, "hidden": [32], "outer_steps": 2000,
              "by_dataset": {"omniglot": {"delta": 0.03, "conv4": conv4_config("paper")}}},
}


def _top_overlap(a: np.ndarray, b: np.ndarray, frac: float = 0.1) -> float:
    n = max(1, int(round(frac * a.size)))
    return len(set(np.argsort(-a)[:n]) & set(np.argsort(-b)[:n])) / n


def phase_split(problem: AttributionProblem, methods: tuple[str, ...], kinds: list[str],
                corrupted: dict[str, np.ndarray] | None = None,
                options: dict[str, dict] | None = None) -> tuple[dict, dict, list[dict]]:
    """(metrics, series, rows) of every method's early / middle / late split on every unit kind (module
    docstring); with ``corrupted`` flags per kind, the corrupted share of each phase's 10% most harmful units.
    ``options``: keyword arguments per method name (the config's ``method_options``, e.g. TracInCP's checkpoint
    ``interval``)."""
    metrics: dict = {}
    series: dict = {}
    rows: list[dict] = []
    for method in methods:
        for kind in kinds:
            try:
                instance = get_method(method, **(options or {}).get(method, {}))
                parts = phase_contributions(problem, kind, instance, phases=len(PHASES)).reshape(len(PHASES), -1)
            except Exception as error:  # noqa: BLE001 - recorded as failed; the other methods' results are kept
                reraise_interruption(error)
                metrics.setdefault(scoring.metric_key(method), {})[f"{kind}_error"] = f"{type(error).__name__}: {error}"
                continue
            parts = parts.cpu().numpy()
            total = parts.sum(0)
            mass = np.abs(parts).sum(1)
            share = mass / max(mass.sum(), 1e-300)
            early_late = correlations(parts[0], parts[-1])["spearman"]
            entry = {f"{kind}_{p}_share": float(s) for p, s in zip(PHASES, share)}
            entry.update({f"{kind}_early_late_spearman": early_late,
                          f"{kind}_early_late_top10_overlap": _top_overlap(parts[0], parts[-1]),
                          f"{kind}_late_total_spearman": correlations(parts[-1], total)["spearman"]})
            row = {"method": method, "unit": kind, **{p: float(s) for p, s in zip(PHASES, share)},
                   "early_vs_late_spearman": early_late, "top10_overlap": entry[f"{kind}_early_late_top10_overlap"]}
            if corrupted is not None:
                bad = corrupted[kind].reshape(-1)
                for phase, part in (("early", parts[0]), ("late", parts[-1])):
                    n = max(1, int(round(0.1 * part.size)))
                    entry[f"{kind}_{phase}_bottom10_corrupted"] = float(bad[np.argsort(part)[:n]].mean())
                row.update({"early_bottom10_corrupted": entry[f"{kind}_early_bottom10_corrupted"],
                            "late_bottom10_corrupted": entry[f"{kind}_late_bottom10_corrupted"]})
            metrics.setdefault(scoring.metric_key(method), {}).update(entry)
            series.setdefault(method, {})[kind] = parts.tolist()
            rows.append(row)
    return metrics, series, rows


def run(ctx: RunContext) -> dict:
    cfg = ctx.config
    torch.set_num_threads(1)
    setup = setups.build_setup(ctx, cfg["inners"][0])
    fitted = setups.fit(setup, cfg, ctx.seed)
    problem = setups.problems(setup, fitted, ctx.seed)["trajectory"]
    methods = scoring.part_methods(ctx.methods, MLP_METHODS, EXPERIMENT.default_methods)
    metrics, series, rows = phase_split(problem, methods, cfg["kinds"])
    tables = {"Share of |influence| by training phase": rows}
    conv4 = cfg["conv4"]
    if conv4:
        fit = regime.fit_regime(dataclasses.replace(ctx, config=conv4), conv4["inner"])
        pool = fit.setup.train_pool
        corrupted = {"task": pool.task_corrupted.numpy(), "query": pool.query_corrupted.numpy(),
                     "support": pool.support_corrupted.numpy()}
        conv4_methods = scoring.part_methods(ctx.methods, conv4["methods"], EXPERIMENT.default_methods)
        metrics["conv4"], series["conv4"], conv4_rows = phase_split(
            fit.problem, conv4_methods, conv4["kinds"], corrupted, regime.method_options(conv4, fit.damping))
        metrics["conv4"].update({"n_params": fit.setup.model.n_params, "dtype": conv4["dtype"],
                                 "full": {"acc": fit.acc[0], "acc_ci95": fit.acc[1], "train_s": fit.train_s}})
        series["conv4_corrupted"] = corrupted["task"].astype(int).tolist()
        tables["Conv-4 (learning regime): share of |influence| by training phase"] = conv4_rows
    return {"metrics": metrics, "series": series, "tables": tables}


def train_steps(cfg: dict, methods: tuple[str, ...]) -> tuple[Workload, ...]:
    """The Conv-4 part's outer steps (the MLP part is not estimated): one recorded training."""
    conv4 = cfg["conv4"]
    return (regime.workload("E6 conv4", conv4, conv4["outer_steps"], 1, conv4["inner"]),) if conv4 else ()


EXPERIMENT = Experiment(
    id="E6", title="Influence by training phase (early / middle / late), exact Meta-DVEmb and TracIn",
    datasets=("omniglot", "mnist", "miniimagenet", "fc100"), configs=CONFIGS, run=run,
    default_methods=(*MLP_METHODS, "dvemb_fisher", "tracin_cp"),
    seeds={"smoke": (0,), "quick": (0, 1, 2), "paper": (0, 1, 2)},
    reproduce_datasets=("mnist", "omniglot"), train_steps=train_steps,
)
