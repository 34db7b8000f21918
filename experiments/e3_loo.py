"""E3: agreement of every attribution method with leave-one-out retraining, for tasks, support and query points.

Two ground truths, both in the sign convention L_eval(without u) - L_eval(with u):

- converged LOO: F without the unit re-minimised from lam* to the gradient tolerance
  (``metainf.groundtruth.converged.retrain``); methods score the converged model lam*;
- trajectory-specific LOO: the recorded SGD run replayed with the unit masked (``metainf.groundtruth.trajectory``);
  methods score the model lam_T at the end of that run.

For every method and unit kind: Pearson and Spearman with each ground truth over the chosen units (all tasks up to
``n_units.task``; ``n_units.support`` / ``n_units.query`` seeded (task, point) pairs), the scoring time, and the
retraining time. The noise floor of converged retraining (a second retraining from a perturbed start) is reported
beside the spread of the true effects.

Trajectory LOO reports its chaos floor (``metainf.groundtruth.trajectory.chaos_floors``): the recorded schedule
replayed without removal from lam_0 moved by one removal's first kick (``kick_size`` of the unit kind) in random
directions, floor = RMS change of L_eval. Metrics ``<problem>.traj_chaos_floor.<kind>``,
``<problem>.traj_chaos_ratio.<kind>`` (floor over the std of the kind's trajectory effects) and
``<problem>.traj_reliable``: 1 when every kind's ratio is below ``CHAOS_RATIO`` (0.5) of
``metainf.groundtruth.trajectory``, else 0 (its mean over seeds is the fraction of reliable seeds); the trajectory
rows of the table carry ``chaos_floor``, ``chaos_ratio`` and ``reliable``. An unreliable trajectory ground truth is
a chaotic replay: its correlations say nothing about the methods.

Problems (:func:`problem_configs`): the primary ones are the inner problems in ``inners`` at ``k_shot`` (1 shot:
metric keys ``unrolled.<method>.<kind>_<truth>_spearman``, ``proximal...``), with per-inner settings in
``by_inner``; ``variants`` adds further problems under their own key, e.g. ``unrolled_5shot`` (5-shot support points:
at 1 shot removing a support point removes its class from the task, not a small change). ``ground_truth.k_shot``
records the shot count of each problem.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from experiments import e3_conv4, ground_truth, regime, scoring, setups
from experiments.base import Experiment, RunContext, Workload
from experiments.e1_removal import regime_config
from experiments.regime import SCALABLE_METHODS
from metainf.core.problem import AttributionProblem
from metainf.groundtruth.converged import noise_floor
from metainf.groundtruth.trajectory import chaos_floors, kick_size, trajectory_reliable
from metainf.methods import available_methods
from metainf.metrics import correlations
from metainf.train import DENSE_NEWTON_MAX_PARAMS, total_hessian

#: the metric key of the Conv-4 part: its inner problem, then the model
CONV4_PROBLEM = "unrolled_conv4"
METHODS = ("task_if", "task_if_truncated", "task_if_fast", "direct_if", "single_level_if", "tracin", "tracin_cp",
           "dvemb_exact", "dvemb_fisher", "grad_dot", "grad_cos", "trak", "ga_unlearn", "loss", "random")

_BASE = {
    "mnist_source": "digits",  # scikit-learn's 8x8 digits, as before real MNIST (metainf.data.mnist)
    "n_way": 5, "k_shot": 1, "q_query": 2, "model": "mlp", "hidden": [8], "delta": 0.1, "tol": 1e-8,
    "max_iter": 500, "outer_steps": 200, "outer_batch": 8, "outer_lr": 1.0, "outer_optimizer": "sgd",
    "inners": ["unrolled"], "unrolled": {"steps": 1, "lr": 0.4}, "proximal": {"beta": 2.0},
    "kinds": ["task", "support", "query"], "trajectory_ground_truth": True,
    "by_inner": {}, "variants": {}, "loo_batch": 16,
    "conv4": None,  # the Conv-4 part (experiments.e3_conv4): Omniglot only, see CONFIGS
    "by_dataset": {"omniglot": {"image_size": 12, "hidden": [4], "delta": 0.03}},  # 8x8, delta 0.1: lam* = 0
}
#: settings of the proximal problem at quick scale (in the default quick ``inners``). Every evaluation of F re-solves 40
#: inner problems by Newton-CG, warm started. CG applies Hess L_S by one reverse-mode linearisation per solve
#: (``cg_hvp``, ~3x cheaper than a jvp per product); 20 iterations give the 200-iteration total gradient to 1e-16 here,
#: 10 suffice for the Newton directions (the inner solutions are fixed by the stationarity tolerance). Converged LOO
#: (every problem) is batched (``loo_batch``, ``metainf.groundtruth.converged.retrain_many``): 16 BFGS runs from the
#: exact start Hessians (H - tau_k H_k / M for a task, H for a point) share vmapped evaluations of F and stop at the
#: same ||grad F_-u|| <= tol as the plain path, which takes over for a run that does not converge (seed 1: one task
#: whose nearby stationary point is a saddle). Methods that need no replay through the inner solver, against converged
#: LOO only. Measured single-threaded on the 2-core machine, per seed: 50-120 s (training 14-19 s, start Hessians 4.5 s,
#: LOO 27-95 s, noise floors 3-5 s); 4.6 min for the 3 quick seeds.
_PROXIMAL_QUICK = {
    "proximal": {"beta": 2.0, "newton_steps": 2, "cg_iters": 20, "newton_cg_iters": 10, "cg_hvp": "vjp"},
    "outer_steps": 50,
    "trajectory_ground_truth": False,
    "methods": ["task_if", "task_if_truncated", "task_if_fast", "direct_if", "grad_dot", "grad_cos", "loss",
                "random"],
    "n_units": {"task": 40, "support": 40, "query": 40},
}
#: the second problem: removing one of K > 1 examples of a class (at 1 shot a support point is its class)
_FIVE_SHOT = {"inner": "unrolled", "k_shot": 5, "kinds": ["support"],
              "methods": ["task_if", "task_if_truncated", "task_if_fast", "direct_if", "dvemb_exact", "tracin",
                          "grad_dot", "loss", "random"]}


def conv4_config(scale: str, lds: dict, warmstart: dict) -> dict:
    """The Conv-4 part's config: E1's learning regime at ``scale`` (unrolled MAML), the LDS, warm-start and
    per-evaluation-task settings (``experiments.e3_conv4``; the cold solves are timed beside the projected ones at
    smoke scale only, so that CI runs that path: at quick scale they cost 255 s for a comparison already made,
    ``--set conv4.per_eval.compare_cold=true`` to repeat it). The per-evaluation-task solves share one Hutchinson
    diagonal of H_F, factored once (``per_eval.options``): on this problem it takes the 20 solves from 118 CG
    iterations to 80 and from 280 meta-epochs to 172, its 8 probe HVPs included
    (``results/probes/preconditioners-omniglot-quick.json``)."""
    return {**regime_config(scale), "inner": "unrolled", "methods": list(SCALABLE_METHODS), "lds": lds,
            "warmstart": warmstart, "per_eval": {"methods": ["task_if_fast"], "compare_cold": scale == "smoke",
                                                 "options": {"precond": "diag_hutchinson"}}}


#: LDS over 24 subsets of half the tasks (their corrupted share spread on purpose), one retraining per subset and
#: estimate (measured: ~20 s per 500-step Conv-4 run, 8 runs vmapped at once, single-threaded)
_CONV4_QUICK = conv4_config("quick", {"n_subsets": 24, "alpha": 0.5, "n_seeds": 1, "vary_corrupted": True,
                                      "batch": 8},
                            {"n_units": 20, "steps": 50, "n_control": 4})
CONFIGS = {
    # smoke keeps 40 training tasks (with 8 the converged minimum is nearly singular and removal of one task
    # changes the landscape qualitatively) and scores only 8 units per kind
    "smoke": {**_BASE, "n_train_tasks": 40, "n_eval_tasks": 20, "outer_steps": 100,
              "n_units": {"task": 8, "support": 8, "query": 8},
              "by_dataset": {**_BASE["by_dataset"], "omniglot": {
                  **_BASE["by_dataset"]["omniglot"],
                  "conv4": conv4_config("smoke", {"n_subsets": 4, "alpha": 0.5, "n_seeds": 1, "vary_corrupted": True,
                                                  "batch": 4}, {"n_units": 3, "steps": 2, "n_control": 1})}}},
    "quick": {**_BASE, "n_train_tasks": 40, "n_eval_tasks": 20, "n_units": {"task": 40, "support": 40, "query": 40},
              "inners": ["unrolled", "proximal"],
              "by_inner": {"proximal": _PROXIMAL_QUICK},
              "variants": {"unrolled_5shot": _FIVE_SHOT},
              "by_dataset": {**_BASE["by_dataset"], "omniglot": {**_BASE["by_dataset"]["omniglot"],
                                                                 "conv4": _CONV4_QUICK}}},
    # paper: Omniglot keeps full-size images and width 32; only the outer L2 of the quick Omniglot set-up
    "paper": {**_BASE, "n_train_tasks": 200, "n_eval_tasks": 100, "hidden": [32], "inners": ["unrolled", "proximal"],
              "by_dataset": {"omniglot": {"delta": 0.03, "conv4": conv4_config(
                  "paper", {"n_subsets": 100, "alpha": 0.5, "n_seeds": 2, "vary_corrupted": True, "batch": 8},
                  {"n_units": 100, "steps": 200, "n_control": 8})}},
              "outer_steps": 2000, "n_units": {"task": 200, "support": 100, "query": 100},
              "variants": {"unrolled_5shot": _FIVE_SHOT}},
}


def _corr(pred: np.ndarray, actual: np.ndarray, prefix: str) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in correlations(pred, actual).items()}


def _merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in recursively (dicts merge, anything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def problem_configs(cfg: dict) -> dict[str, dict]:
    """name -> config of every problem E3 runs; the name keys its metrics, series and figures.

    The primary problems are ``cfg["inners"]`` (named by the inner problem, at ``k_shot``), each with
    ``cfg["by_inner"][inner]`` merged in; then every ``cfg["variants"][name]`` (a partial config naming its
    ``inner``, e.g. another ``k_shot``) merged over the config of its inner. A problem config may restrict
    ``methods`` (run in the order of the run's methods) and sets its own ``n_units``, ``kinds``, ...
    """
    bare = {k: v for k, v in cfg.items() if k not in ("by_inner", "variants", "conv4")}
    out = {inner: _merge({**bare, "inner": inner}, cfg["by_inner"].get(inner, {})) for inner in cfg["inners"]}
    for name, variant in cfg["variants"].items():
        out[name] = _merge(_merge({**bare, "inner": variant["inner"]}, cfg["by_inner"].get(variant["inner"], {})),
                           variant)
    return out


def run_problem(ctx: RunContext, name: str, cfg: dict) -> tuple[dict, dict, list[dict]]:
    """(metrics, series, table rows) of one problem: fit, converged (and trajectory) LOO, every method scored."""
    ctx = dataclasses.replace(ctx, config=cfg)
    inner_kind, kinds = cfg["inner"], tuple(cfg["kinds"])
    methods = tuple(m for m in ctx.methods if "methods" not in cfg or m in cfg["methods"])
    setup = setups.build_setup(ctx, inner_kind)
    fitted = setups.fit(setup, cfg, ctx.seed)
    probs = setups.problems(setup, fitted, ctx.seed)
    obj, lam = setup.objective, fitted.lam_star
    t0 = time.perf_counter()
    # converged LOO and its noise floor by metainf.groundtruth.converged.retrain_many
    batched = bool(cfg.get("loo_batch"))
    proximal = obj.inner.dense_blocks  # exact dense per-task blocks (the proximal inner problem)
    hk_star = None
    if lam.numel() > DENSE_NEWTON_MAX_PARAMS:
        h_star = None
    elif batched and proximal:  # H and the per-task blocks H_k from one pass (task removal needs both)
        h_star, hk_star = ground_truth.block_curvature(obj, lam)
    else:
        h_star = total_hessian(obj, lam)
    if h_star is not None and proximal:  # task-IF's solve then costs matrix products, same operator
        obj = obj.with_dense_hessian(lam, "exact", h_star)  # one objective (and inner-state cache) from here on
        setup = dataclasses.replace(setup, objective=obj)
        probs = {k: dataclasses.replace(p, objective=obj) for k, p in probs.items()}
    truth: dict[str, dict] = {}
    gt_metrics: dict = {"train_grad_norm": fitted.grad_norm, "train_s": fitted.seconds, "k_shot": cfg["k_shot"],
                        "hessian_s": time.perf_counter() - t0}
    for kind in kinds:
        units = scoring.choose_units(obj, kind, cfg["n_units"][kind], ctx.seed)
        t0 = time.perf_counter()
        if hk_star is not None:
            curvature = (h_star, hk_star if kind == "task" else None)
        else:
            curvature = ground_truth.start_curvature(obj, lam, kind, h_star)
        conv = ground_truth.converged_loo(ctx, setup, fitted, kind, units, name, curvature)
        t_conv = time.perf_counter() - t0
        k0, j0 = units[0]
        t0 = time.perf_counter()
        floor = noise_floor(obj, lam, setup.eval_objective, kind, k0, j0, tol=cfg["tol"],
                            hessian=ground_truth.unit_start_hessian(obj, curvature, k0), chord=batched)
        if batched:
            gt_metrics[f"{kind}_noise_floor_s"] = time.perf_counter() - t0
        truth[kind] = {"units": units, "converged": conv}
        gt_metrics.update({f"{kind}_loo_s": t_conv, f"{kind}_noise_floor": floor,
                           f"{kind}_effect_std": float(conv.std())})
        if cfg["trajectory_ground_truth"]:
            t0 = time.perf_counter()
            truth[kind]["trajectory"] = ground_truth.trajectory_loo(probs["trajectory"], kind, units)
            gt_metrics[f"{kind}_trajloo_s"] = time.perf_counter() - t0
    metrics: dict = {"ground_truth": gt_metrics}
    series = {kind: {"units": [list(u) for u in truth[kind]["units"]],
                     "converged": truth[kind]["converged"].tolist(),
                     **({"trajectory": truth[kind]["trajectory"].tolist()} if "trajectory" in truth[kind] else {}),
                     "predicted": {}} for kind in kinds}
    rows: list[dict] = []
    skipped_all: dict[str, str] = {}
    for gt_name, problem in probs.items():
        if gt_name == "trajectory" and not cfg["trajectory_ground_truth"]:
            continue
        scores, skipped = scoring.score_all(methods, problem, kinds)
        skipped_all.update({f"{gt_name}/{k}": v for k, v in skipped.items()})
        for method, by_kind in scores.items():
            for kind, sc in by_kind.items():
                pred = scoring.unit_values(sc.values, truth[kind]["units"])
                actual = truth[kind][gt_name]
                m = metrics.setdefault(scoring.metric_key(method), {})
                m.update(_corr(pred, actual, f"{kind}_{gt_name}"))
                m[f"{kind}_{gt_name}_seconds"] = sc.seconds
                m[f"{kind}_{gt_name}_peak_mb"] = sc.peak_rss_mb
                series[kind]["predicted"].setdefault(gt_name, {})[method] = pred.tolist()
                loo_s = gt_metrics[f"{kind}_loo_s" if gt_name == "converged" else f"{kind}_trajloo_s"]
                rows.append({"problem": name, "inner": inner_kind, "k_shot": cfg["k_shot"], "ground_truth": gt_name,
                             "unit": kind, "method": method, "n": len(pred), **correlations(pred, actual),
                             "score_s": sc.seconds, "retrain_s": loo_s,
                             "speedup": loo_s / max(sc.seconds, 1e-9)})
    metrics["skipped"] = {k.replace(".", "_").replace("/", "__"): v for k, v in skipped_all.items()}
    if cfg["trajectory_ground_truth"]:  # last, so that no cached inner state changes the numbers above
        metrics.update(chaos_metrics(probs["trajectory"], truth, kinds, ctx.seed, gt_metrics))
        for row in rows:
            if row["ground_truth"] == "trajectory":
                row.update({"chaos_floor": metrics["traj_chaos_floor"][row["unit"]],
                            "chaos_ratio": metrics["traj_chaos_ratio"][row["unit"]],
                            "reliable": gt_metrics[f"{row['unit']}_traj_reliable"]})
    return metrics, series, rows


def chaos_metrics(problem: AttributionProblem, truth: dict, kinds: tuple[str, ...], seed: int,
                  gt_metrics: dict) -> dict:
    """The chaos floor of trajectory LOO per unit kind (one replay for all kinds), its ratio to the std of the
    kind's trajectory effects and the reliability flag (module docstring); timing and per-kind details go into
    ``gt_metrics``."""
    t0 = time.perf_counter()
    floors = chaos_floors(problem, [kick_size(problem, kind, truth[kind]["units"]) for kind in kinds], seed=seed)
    out: dict = {"traj_chaos_floor": {}, "traj_chaos_ratio": {}}
    flags = []
    for kind, cf in zip(kinds, floors):
        effects = truth[kind]["trajectory"]
        std = float(np.std(effects, ddof=1))
        reliable = trajectory_reliable(cf.floor, effects)
        flags.append(reliable)
        out["traj_chaos_floor"][kind] = cf.floor
        out["traj_chaos_ratio"][kind] = cf.floor / std if std > 0 else float("inf")
        gt_metrics.update({f"{kind}_traj_effect_std": std, f"{kind}_traj_kick": cf.size,
                           f"{kind}_traj_reliable": float(reliable)})
    out["traj_reliable"] = float(all(flags))
    gt_metrics["traj_chaos_s"] = time.perf_counter() - t0
    return out


def run(ctx: RunContext) -> dict:
    torch.set_num_threads(1)  # tiny per-task kernels: more threads cost 30x in synchronisation on 2 cores
    metrics: dict = {}
    series: dict = {}
    rows: list[dict] = []
    for name, cfg in problem_configs(ctx.config).items():
        t0 = time.perf_counter()
        metrics[name], series[name], problem_rows = run_problem(ctx, name, cfg)
        metrics[name]["ground_truth"]["problem_s"] = time.perf_counter() - t0
        rows += problem_rows
    tables = {"Agreement with leave-one-out retraining": rows}
    conv4 = ctx.config["conv4"]
    if conv4:
        t0 = time.perf_counter()
        methods = scoring.part_methods(ctx.methods, conv4["methods"], EXPERIMENT.default_methods)
        metrics[CONV4_PROBLEM], series[CONV4_PROBLEM], conv4_rows = e3_conv4.run_conv4(ctx, CONV4_PROBLEM, conv4,
                                                                                      methods)
        metrics[CONV4_PROBLEM]["problem_s"] = time.perf_counter() - t0
        tables["Conv-4: LDS and warm-start leave-one-out"] = conv4_rows
    return {"metrics": metrics, "series": series, "tables": tables}


def _validate(scale: str, config: dict) -> None:
    from experiments.base import ConfigError

    inners = [*config["inners"], *(v.get("inner") for v in config["variants"].values())]
    unknown = set(inners) - {"unrolled", "proximal"}
    if unknown:
        raise ConfigError(f"E3: unknown inner problems {sorted(map(str, unknown))}; use 'unrolled' and/or "
                          "'proximal' (every entry of 'variants' names its 'inner')")
    clash = set(config["variants"]) & set(config["inners"])
    if clash:
        raise ConfigError(f"E3: variants {sorted(clash)} reuse the name of a primary inner problem; rename them")
    if config["n_train_tasks"] < 2:
        raise ConfigError("E3: leave-one-out needs at least 2 training tasks")


def train_steps(cfg: dict, methods: tuple[str, ...]) -> tuple[Workload, ...]:
    """The Conv-4 part's outer steps (the MLP part is not estimated; ``experiments.e3_conv4``): training, the LDS's
    ``2 * n_seeds * n_subsets`` retrainings (``outer_steps`` each), and warm-start LOO's paired replays (one per
    unit plus the full-data lane) and ``2 * n_control`` controls (``warmstart.steps`` each)."""
    conv4 = cfg["conv4"]
    if not conv4:
        return ()
    lds, warm = conv4["lds"], conv4["warmstart"]
    runs = 1 + 2 * lds["n_seeds"] * lds["n_subsets"]
    lanes = min(warm["n_units"], conv4["n_train_tasks"]) + 1 + 2 * warm["n_control"]
    steps = runs * conv4["outer_steps"] + lanes * warm["steps"]
    return (regime.workload("E3 conv4", conv4, steps, 1, conv4["inner"]),)


EXPERIMENT = Experiment(
    id="E3", title="Agreement of every method with converged and trajectory-specific leave-one-out retraining",
    datasets=("mnist", "omniglot", "miniimagenet", "fc100"), configs=CONFIGS, run=run,
    default_methods=tuple(m for m in METHODS if m in available_methods()),
    # five quick seeds for the distribution of exact task-IF over seeds (issue "Fast task-IF"); one on Omniglot,
    # whose Conv-4 part retrains 2 x 24 subsets
    seeds={"smoke": (0,), "quick": (0, 1, 2, 3, 4), "paper": (0, 1, 2)}, validate=_validate,
    reproduce_datasets=("mnist", "omniglot"), dataset_seeds={"omniglot": {"quick": (0,)}}, train_steps=train_steps,
    # the partial LDS of the Conv-4 part is undefined (NaN) for a prediction linear in the corrupted count: the oracle
    undefined_ok=e3_conv4.PARTIAL_LDS_KEYS,
)
