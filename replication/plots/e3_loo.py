"""E3 figures, drawn from a result JSON alone (``experiments/e3_loo.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metainf.metrics import correlations
from replication.plots.style import method_color, new_figure, readable_ticks, save_figure


def figures(result: dict, out_dir: Path) -> list[Path]:
    """Predicted vs actual change for task-IF (and DVEmb on trajectory LOO) and any plug-in (``module:Class``) method,
    one panel per unit kind, one figure per problem (``unrolled``, ``proximal``, a variant such as
    ``unrolled_5shot``) and ground truth."""
    paths = []
    dataset = result.get("dataset", "")
    for seed, payload in result["per_seed"].items():
        for problem, by_kind in payload["series"].items():
            for gt_name, methods in (("converged", ("task_if", "direct_if")),
                                     ("trajectory", ("dvemb_exact", "tracin"))):
                kinds = [k for k in by_kind if gt_name in by_kind[k]]
                if not kinds:
                    continue
                fig, axes = new_figure(ncols=len(kinds))
                axes = np.ravel(axes)
                for ax, kind in zip(axes, kinds):
                    actual = np.array(by_kind[kind][gt_name])
                    predicted = by_kind[kind]["predicted"].get(gt_name, {})
                    plugins = [m for m in predicted if ":" in m]  # module:Class methods, drawn beside the reference
                    for method in (*methods, *plugins):
                        pred = predicted.get(method)
                        if pred is None:
                            continue
                        pred = np.array(pred)
                        # scale each method's scores to the spread of the actual effects for a common axis
                        scale = actual.std() / pred.std() if pred.std() > 0 else 1.0
                        r = correlations(pred, actual)["spearman"]
                        ax.scatter(actual, pred * scale, s=14, facecolors="none", edgecolors=method_color(method),
                                   label=f"{method} (rho={r:.2f})")
                    lim = np.abs(actual).max() * 1.1 if actual.size else 1.0
                    ax.plot([-lim, lim], [-lim, lim], color="0.7", lw=0.8, zorder=0)
                    ax.set_xlabel(f"actual change, {gt_name} LOO")
                    ax.set_ylabel("predicted (scaled to the std of actual)")
                    readable_ticks(ax)
                    ax.set_title(f"{kind} units")
                    if ax.get_legend_handles_labels()[0]:
                        ax.legend(fontsize=7, loc="upper left")
                fig.suptitle(f"E3 {dataset} {problem}, seed {seed}")
                paths.append(save_figure(fig, out_dir / f"e3-{dataset}-{problem}-{gt_name}-seed{seed}.png"))
            if "losses_a" in by_kind:
                metrics = payload["metrics"][problem]
                paths.append(lds_figure(metrics, by_kind, out_dir / f"e3-{dataset}-{problem}-lds-seed{seed}.png",
                                        f"E3 {dataset} {problem} (Conv-4), seed {seed}"))
    seeds = list(result["per_seed"])
    if len(seeds) > 1:
        for problem in result["per_seed"][seeds[0]]["series"]:
            by_seed = {s: result["per_seed"][s]["metrics"].get(problem, {}) for s in seeds}
            if all("lds" in m for m in by_seed.values()):
                paths.append(lds_seeds_figure(by_seed, out_dir / f"e3-{dataset}-{problem}-lds-seeds.png",
                                              f"E3 {dataset} {problem} (Conv-4), seeds {', '.join(seeds)}"))
    return paths


def lds_seeds_figure(by_seed: dict[str, dict], path: Path, title: str) -> Path:
    """Every method's LDS (left) and partial LDS, the subsets' corrupted count regressed out (right), one marker
    with its 95% interval per seed, each seed's ceiling as a vertical line in that seed's colour. Methods are
    ordered by their mean LDS over the seeds."""
    fig, axes = new_figure(ncols=2, width=5.0, height=4.0)
    axes = np.ravel(axes)
    seeds = list(by_seed)
    methods = sorted((k for k, v in by_seed[seeds[0]].items() if isinstance(v, dict) and "task_lds" in v
                      and all(k in by_seed[s] for s in seeds)),
                     key=lambda k: np.mean([by_seed[s][k]["task_lds"] for s in seeds]))
    offsets = np.linspace(-0.25, 0.25, len(seeds))
    for ax, key, label in ((axes[0], "task_lds", "LDS"), (axes[1], "task_lds_partial", "partial LDS")):
        ceiling_key = key.replace("task_lds", "lds_ceiling")
        for j, (seed, offset) in enumerate(zip(seeds, offsets)):
            colour = f"C{j}"
            rows = [(i + offset, by_seed[seed][m]) for i, m in enumerate(methods)
                    if np.isfinite(float(by_seed[seed][m][key]))]
            x = np.array([float(r[key]) for _, r in rows])
            err = np.array([[x[i] - float(r[f"{key}_ci95_low"]), float(r[f"{key}_ci95_high"]) - x[i]]
                            for i, (_, r) in enumerate(rows)]).T.reshape(2, -1)
            ax.errorbar(x, [y for y, _ in rows], xerr=err, fmt="o", ms=3, color=colour, ecolor=colour,
                        elinewidth=0.7, capsize=1.5, label=f"seed {seed}")
            ax.axvline(float(by_seed[seed]["lds"][ceiling_key]), color=colour, lw=0.8, ls="--")
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_yticks(np.arange(len(methods)), methods, fontsize=7)
        ax.set_xlabel(f"{label} over subsets, 95% CI (dashed: each seed's ceiling)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    return save_figure(fig, path)


def lds_figure(metrics: dict, series: dict, path: Path, title: str) -> Path:
    """Left: every method's LDS with its 95% interval, against the ceiling (Spearman of the two retraining
    estimates, shaded with its interval). Right: each subset's measured evaluation loss against its number of
    corrupted tasks, the two estimates joined by a line (their gap is the retraining noise)."""
    fig, axes = new_figure(ncols=2, width=5.0, height=3.6)
    left, right = np.ravel(axes)
    methods = sorted((k for k, v in metrics.items() if isinstance(v, dict) and "task_lds" in v),
                     key=lambda k: metrics[k]["task_lds"])
    y = np.arange(len(methods))
    lds = np.array([metrics[m]["task_lds"] for m in methods])
    err = np.array([[lds[i] - metrics[m]["task_lds_ci95_low"], metrics[m]["task_lds_ci95_high"] - lds[i]]
                    for i, m in enumerate(methods)]).T
    left.errorbar(lds, y, xerr=err, fmt="none", ecolor="0.5", capsize=2)
    for i, m in enumerate(methods):
        left.plot(lds[i], i, "o", color=method_color(m))
    ceiling = metrics["lds"]
    left.axvspan(ceiling["lds_ceiling_ci95_low"], ceiling["lds_ceiling_ci95_high"], color="0.85", zorder=0)
    left.axvline(ceiling["lds_ceiling"], color="0.4", lw=1, label=f"ceiling {ceiling['lds_ceiling']:.2f}")
    left.axvline(0, color="0.7", lw=0.8)
    left.set_yticks(y, methods, fontsize=7)
    left.set_xlabel("LDS (Spearman over subsets)")
    left.set_title("each method's LDS, 95% CI (shaded: ceiling)", fontsize=9)
    left.legend(fontsize=7, loc="lower right")
    masks = np.array(series["masks"], dtype=float)
    n_bad = masks @ np.array(series["corrupted"], dtype=float)
    a, b = np.array(series["losses_a"]).mean(1), np.array(series["losses_b"]).mean(1)
    for x, ya, yb in zip(n_bad, a, b):
        right.plot([x, x], [ya, yb], color="0.75", lw=1, zorder=0)
    right.scatter(n_bad, a, s=12, label="estimate A")
    right.scatter(n_bad, b, s=12, label="estimate B")
    right.set_xlabel("corrupted tasks in the subset")
    right.set_ylabel("evaluation loss after retraining")
    right.set_title("two retrainings (A, B) per subset: the noise", fontsize=9)
    right.legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)
