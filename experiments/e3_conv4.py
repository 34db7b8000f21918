"""E3's Conv-4 part: attribution judged by ground truths that scale to a model that learns.

At Conv-4 scale (E1's learning regime: Conv-4 on 16 px Omniglot, second-order MAML, Adam for a fixed budget,
float32, 40% of the training tasks with noisy query labels) lam_T is not a stationary point and converged
leave-one-out is dominated by optimisation noise, so the per-unit ground truth of the exact MLP part does not
exist here. Two ground truths replace it, each reporting its own reliability:

- **LDS** (``metainf.groundtruth.lds``; Park et al. 2023): ``lds.n_subsets`` subsets of ``lds.alpha`` of the
  training tasks, with the share of corrupted tasks spread evenly over its feasible range (``vary_corrupted``),
  each retrained by the same Adam schedule from the run's lam_0 (only the batch order depends on the retraining
  seed) ``2 * lds.n_seeds`` times; estimate A and estimate B each average ``n_seeds`` of those runs. A method's LDS
  is the Spearman over subsets between ``- sum_{u in S} score[u]`` and the mean of A and B of the evaluation loss
  (the unweighted mean query loss over the clean validation tasks, ``eval_objective``), with a bootstrap 95%
  interval over subsets. The ceiling is Spearman(A, B): how well one retraining estimate ranks the subsets like
  another. Metrics ``<problem>.<method>.task_lds`` (``_ci95_low/high``, ``_per_eval``) and
  ``<problem>.lds.lds_ceiling``; the oracle row scores ``-1`` for a corrupted task and 0 otherwise. Because the
  subsets' losses are driven by their count of corrupted tasks, the *partial* LDS (``task_lds_partial``, with its
  ceiling ``lds_ceiling_partial``; ``metainf.metrics.lds`` with that count as the covariate) asks what a method
  predicts beyond it; the oracle's is undefined (NaN), and a partial ceiling near 0 says that the ground truth
  cannot rank methods beyond finding the corrupted tasks.
- **LDS per evaluation task with each task's own scores** (the datamodel of Park et al. is per test example): for
  the methods in ``per_eval.methods`` (``task_if_fast``), ``score_per_eval`` gives one score column per evaluation
  task (one solve each, every solve after the first started from the Galerkin projection onto the earlier ones,
  ``metainf.linalg.cg.cg_successive``), and ``task_lds_per_eval_own`` (``task_lds_partial_per_eval_own``) ranks each
  evaluation task's losses by its own column. ``task_lds_per_eval`` ranks every evaluation task by the scores of the
  mean evaluation loss. ``per_eval.options`` (a Hutchinson-diagonal preconditioner at the default config) apply to
  these solves only: factored once, one preconditioner serves all of them. ``per_eval_solve`` records the solves'
  seconds and CG iterations, and with ``per_eval.compare_cold`` the same solves from 0 beside them (issue
  "Fast task-IF", item 3).
- **Warm-start leave-one-out with a paired control** (``metainf.groundtruth.warmstart``; Koh & Liang 2017, 5.1):
  from lam_T, ``warmstart.steps`` more Adam steps with and without each of the first ``warmstart.n_units``
  tasks on the same batch order; the effect is the difference of the evaluation loss. Its noise floor (the RMS
  difference between controls with different seeds) and signal-to-noise ratio (std of the effects over the floor)
  are reported beside every method's Spearman with it (``<problem>.<method>.task_warmstart_spearman``). Below a
  ratio of about 1 the effects are noise, and the Spearmans say nothing about the methods.

Every method scores the tasks at lam_T (``experiments.regime.fit_regime``, as E1 trains). Curvature-based methods
share E1's damping rule (``experiments.regime.damping_rule``: lam_T is not a minimum and H_F is indefinite there),
``task_if_fast`` included. The problem's metrics go under ``<problem>`` (``unrolled_conv4`` at the default config): the
inner problem, then the model.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from experiments import regime, scoring
from experiments.base import RunContext
from metainf.groundtruth.lds import EnsembleTrainer, draw_subsets, subset_losses
from metainf.groundtruth.warmstart import warmstart_loo
from metainf.methods import AttributionProblem, get_method
from metainf.metrics import correlations


#: the partial-LDS metrics and row cells, undefined (NaN) where the prediction is linear in the corrupted count
PARTIAL_LDS_KEYS = frozenset({*(f"task_lds_partial{s}" for s in ("", "_ci95_low", "_ci95_high", "_per_eval",
                                                                   "_per_eval_ci95_low", "_per_eval_ci95_high")),
                              "lds_partial", "lds_partial_ci95_low", "lds_partial_ci95_high"})


def per_eval_scores(name: str, problem: AttributionProblem, options: dict,
                    compare_cold: bool) -> tuple[np.ndarray, dict]:
    """(scores [M, E], solve record) of method ``name``'s ``score_per_eval`` with ``options``: one solve per
    evaluation task, each started from the Galerkin projection onto the solutions before it
    (``metainf.linalg.cg.cg_successive``), sharing the preconditioner ``options["precond"]`` if any. With
    ``compare_cold`` the same solves run again from 0: the record holds each mode's seconds, total CG iterations and
    convergence, and the relative difference of the two score matrices."""
    record: dict = {}
    matrices = []
    for label, project in (("projected", True), *((("cold", False),) if compare_cold else ())):
        method = get_method(name, **{**options, "project": project})
        t0 = time.perf_counter()
        matrices.append(method.score_per_eval(problem).detach().double().cpu())
        record[f"{label}_s"] = time.perf_counter() - t0
        record[f"{label}_iterations"] = sum(info.iterations for info in method.last_infos)
        record[f"{label}_converged"] = all(info.converged for info in method.last_infos)
    record["n_eval"] = int(matrices[0].shape[1])
    record["precond"] = options.get("precond", "none")
    if compare_cold:
        record["cold_vs_projected_rel_diff"] = float((matrices[0] - matrices[1]).norm() / matrices[1].norm())
    return matrices[0].numpy(), record


def run_conv4(ctx: RunContext, name: str, cfg: dict, methods: tuple[str, ...]) -> tuple[dict, dict, list[dict]]:
    """(metrics, series, table rows) of the Conv-4 problem ``name`` with config ``cfg`` (module docstring)."""
    ctx = dataclasses.replace(ctx, config=cfg)
    fit = regime.fit_regime(ctx, cfg["inner"])
    obj, eval_obj, lam = fit.setup.objective, fit.setup.eval_objective, fit.lam
    corrupted = fit.setup.train_pool.task_corrupted.numpy().astype(bool)
    metrics: dict = {"n_params": fit.setup.model.n_params, "dtype": cfg["dtype"], "damping": fit.damping,
                     "full": {"acc": fit.acc[0], "acc_ci95": fit.acc[1], "train_s": fit.train_s}}
    scores, skipped = scoring.score_all(methods, fit.problem, ("task",), regime.method_options(cfg, fit.damping))
    values = {m: by_kind["task"].values.detach().double().cpu().numpy() for m, by_kind in scores.items()}
    seconds = {m: by_kind["task"].seconds for m, by_kind in scores.items()}
    values["oracle"] = -corrupted.astype(float)

    lcfg, wcfg = cfg["lds"], cfg["warmstart"]
    masks = draw_subsets(obj.n_tasks, lcfg["n_subsets"], lcfg["alpha"], ctx.seed,
                         corrupted if lcfg["vary_corrupted"] else None)
    trainer = EnsembleTrainer(obj, eval_obj, fit.lam0, cfg["outer_steps"], cfg["outer_batch"],
                              cfg["outer_lr"], cfg["outer_optimizer"])
    truth = subset_losses(trainer, masks, lcfg["n_seeds"], seed=ctx.seed + 10_000, batch=lcfg["batch"],
                          executor=ctx.executor, cache_dir=ctx.cache_dir / f"{name}-lds", progress=True)
    ceiling = truth.ceiling(seed=ctx.seed)
    n_corrupted = truth.masks.double().numpy() @ corrupted.astype(float)  # each subset's count of corrupted tasks
    metrics["lds"] = {**ceiling.as_metrics("lds_ceiling"),
                      **truth.ceiling(seed=ctx.seed, covariates=n_corrupted).as_metrics("lds_ceiling_partial"),
                      "n_subsets": int(masks.shape[0]),
                      "alpha": truth.alpha, "n_seeds": lcfg["n_seeds"], "retrain_s": truth.seconds,
                      "loss_std": float(truth.losses.mean(1).std())}

    units = [(k, None) for k in range(min(wcfg["n_units"], obj.n_tasks))]
    warm = warmstart_loo(obj, eval_obj, lam, "task", units, wcfg["steps"], cfg["outer_batch"],
                         cfg["outer_lr"], cfg["outer_optimizer"], seed=ctx.seed, n_control=wcfg["n_control"])
    effects = warm.effects.double().cpu().numpy()
    metrics["warmstart"] = {"noise_floor": warm.noise_floor, "effect_std": float(effects.std(ddof=1)),
                            "signal_to_noise": warm.signal_to_noise, "steps": warm.steps, "n_units": len(units),
                            "seconds": warm.seconds}

    own: dict[str, dict] = {}
    per_eval_series: dict[str, list] = {}
    for method in (m for m in cfg["per_eval"]["methods"] if m in values):
        try:
            options = {**regime.method_options(cfg, fit.damping).get(method, {}), **cfg["per_eval"].get("options", {})}
            matrix, record = per_eval_scores(method, fit.problem, options, cfg["per_eval"]["compare_cold"])
        except scoring.METHOD_ERRORS as error:
            skipped[f"{method}/task_per_eval"] = f"{type(error).__name__}: {error}"
            continue
        own[method] = {"per_eval_solve": record}
        per_eval_series[method] = matrix.tolist()
        for prefix, covariates in (("task_lds_per_eval_own", None), ("task_lds_partial_per_eval_own", n_corrupted)):
            result = truth.score(matrix, seed=ctx.seed, covariates=covariates)
            own[method].update({prefix: result.per_eval, f"{prefix}_ci95_low": result.per_eval_ci95[0],
                                f"{prefix}_ci95_high": result.per_eval_ci95[1]})

    rows: list[dict] = []
    for method, v in values.items():
        score = truth.score(v, seed=ctx.seed)
        partial = truth.score(v, seed=ctx.seed, covariates=n_corrupted)
        key = scoring.metric_key(method)
        metrics[key] = {**score.as_metrics("task_lds"), **partial.as_metrics("task_lds_partial"), **own.get(method, {})}
        row = {"problem": name, "method": method, "unit": "task", "lds": score.mean,
               "lds_ci95_low": score.mean_ci95[0], "lds_ci95_high": score.mean_ci95[1], "lds_ceiling": ceiling.mean,
               "lds_partial": partial.mean, "lds_partial_ci95_low": partial.mean_ci95[0],
               "lds_partial_ci95_high": partial.mean_ci95[1],
               "warmstart_snr": warm.signal_to_noise, "score_s": seconds.get(method, 0.0)}
        if np.ptp(v[: len(units)]) > 0 and np.ptp(effects) > 0:  # constant: no rank correlation
            warm_corr = correlations(v[: len(units)], effects)
            metrics[key].update({"task_warmstart_spearman": warm_corr["spearman"],
                                 "task_warmstart_pearson": warm_corr["pearson"]})
            row["warmstart_spearman"] = warm_corr["spearman"]
        if method in seconds:
            metrics[key]["task_score_s"] = seconds[method]
        rows.append(row)
    metrics["skipped"] = {k.replace(".", "_").replace("/", "__"): v for k, v in skipped.items()}
    series = {"masks": truth.masks.int().tolist(), "losses_a": truth.losses_a.tolist(),
              "losses_b": truth.losses_b.tolist(), "corrupted": corrupted.astype(int).tolist(),
              "warmstart_effects": effects.tolist(), "scores": {m: v.tolist() for m, v in values.items()},
              "scores_per_eval": per_eval_series}
    return metrics, series, rows

