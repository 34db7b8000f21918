"""E3 figures, drawn from a result JSON alone (``experiments/e3_loo.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metainf.metrics import correlations
from replication.plots.style import method_color, new_figure, save_figure


def figures(result: dict, out_dir: Path) -> list[Path]:
    """Predicted vs actual change for task-IF (and DVEmb on trajectory LOO), one panel per unit kind, one figure per
    problem (``unrolled``, ``proximal``, a variant such as ``unrolled_5shot``) and ground truth."""
    paths = []
    dataset = result.get("dataset", "")
    for seed, payload in result["per_seed"].items():
        for problem, by_kind in payload["series"].items():
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
                fig.suptitle(f"E3 {dataset} {problem}, seed {seed}")
                paths.append(save_figure(fig, out_dir / f"e3-{dataset}-{problem}-{gt_name}-seed{seed}.png"))
    return paths
