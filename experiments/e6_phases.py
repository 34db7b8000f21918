"""E6: influence by training phase. Does a unit's value depend on when it was seen (DVEmb's finding), in meta learning?

The exact Meta-DVEmb score of a unit (its first-order effect on the final evaluation loss, through the recorded
SGD trajectory) is a sum over training steps; ``metainf.methods.trajectory.phase_contributions`` splits it into
early / middle / late thirds of the steps. Per unit kind we report the share of the total absolute contribution
from each phase, the Spearman correlation between the early and late contributions (low: the ranking of units
depends on the phase), the overlap of the top-10% units by early and by late contribution, and, for TracIn (which
ignores the propagation through later steps), the same shares for contrast. Sign convention: positive helps.
"""

from __future__ import annotations


import numpy as np
import torch

from experiments import scoring, setups
from experiments.base import Experiment, RunContext
from metainf.methods.trajectory import phase_contributions
from metainf.metrics import correlations

PHASES = ("early", "middle", "late")
_BASE = {
    "mnist_source": "digits",  # scikit-learn's 8x8 digits, as before real MNIST (metainf.data.mnist)
    "n_way": 5, "k_shot": 1, "q_query": 2, "model": "mlp", "hidden": [8], "delta": 0.1, "tol": 1e-6,
    "max_iter": 300, "outer_steps": 150, "outer_batch": 8, "outer_lr": 1.0, "outer_optimizer": "sgd",
    "inners": ["unrolled"], "unrolled": {"steps": 1, "lr": 0.4}, "proximal": {"beta": 2.0},
    "kinds": ["task", "support", "query"],
    "by_dataset": {"omniglot": {"image_size": 12, "hidden": [4], "delta": 0.03}},  # 8x8, delta 0.1: lam -> 0
}
CONFIGS = {
    "smoke": {**_BASE, "n_train_tasks": 20, "n_eval_tasks": 10, "outer_steps": 30, "kinds": ["task"]},
    "quick": {**_BASE, "n_train_tasks": 40, "n_eval_tasks": 20},
    "paper": {**_BASE, "n_train_tasks": 200, "n_eval_tasks": 100, "hidden": [32], "outer_steps": 2000,
              "by_dataset": {"omniglot": {"delta": 0.03}}},
}


def _top_overlap(a: np.ndarray, b: np.ndarray, frac: float = 0.1) -> float:
    n = max(1, int(round(frac * a.size)))
    return len(set(np.argsort(-a)[:n]) & set(np.argsort(-b)[:n])) / n


def run(ctx: RunContext) -> dict:
    cfg = ctx.config
    torch.set_num_threads(1)
    setup = setups.build_setup(ctx, cfg["inners"][0])
    fitted = setups.fit(setup, cfg, ctx.seed)
    problem = setups.problems(setup, fitted, ctx.seed)["trajectory"]
    metrics: dict = {}
    series: dict = {}
    rows: list[dict] = []
    for method in ctx.methods:
        for kind in cfg["kinds"]:
            try:
                parts = phase_contributions(problem, kind, method, phases=len(PHASES)).reshape(len(PHASES), -1)
            except Exception as error:  # noqa: BLE001 - recorded as failed; the other methods' results are kept
                metrics.setdefault(scoring.metric_key(method), {})[f"{kind}_error"] = f"{type(error).__name__}: {error}"
                continue
            parts = parts.numpy()
            total = parts.sum(0)
            mass = np.abs(parts).sum(1)
            share = mass / max(mass.sum(), 1e-300)
            early_late = correlations(parts[0], parts[-1])["spearman"]
            entry = {f"{kind}_{p}_share": float(s) for p, s in zip(PHASES, share)}
            entry.update({f"{kind}_early_late_spearman": early_late,
                          f"{kind}_early_late_top10_overlap": _top_overlap(parts[0], parts[-1]),
                          f"{kind}_late_total_spearman": correlations(parts[-1], total)["spearman"]})
            metrics.setdefault(scoring.metric_key(method), {}).update(entry)
            series.setdefault(method, {})[kind] = parts.tolist()
            rows.append({"method": method, "unit": kind, **{p: float(s) for p, s in zip(PHASES, share)},
                         "early_vs_late_spearman": early_late,
                         "top10_overlap": entry[f"{kind}_early_late_top10_overlap"]})
    return {"metrics": metrics, "series": series,
            "tables": {"Share of |influence| by training phase": rows}}


EXPERIMENT = Experiment(
    id="E6", title="Influence by training phase (early / middle / late), exact Meta-DVEmb and TracIn",
    datasets=("omniglot", "mnist", "miniimagenet", "fc100"), configs=CONFIGS, run=run, default_methods=("dvemb_exact", "tracin"), seeds={"smoke": (0,), "quick": (0, 1, 2), "paper": (0, 1, 2)},
    reproduce_datasets=("mnist", "omniglot"),
)
