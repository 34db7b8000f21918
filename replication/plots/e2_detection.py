"""E2 figures, drawn from a result JSON alone (``experiments/e2_detection.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replication import paper_targets
from replication.plots.style import method_color, new_figure, save_figure


#: readable panel titles
_SETTINGS = {"task_noise": "MLP, noisy tasks", "instance_noise": "MLP, noisy points",
             "conv4_task_noise": "Conv-4, noisy tasks"}
_UNITS = {"task": "tasks", "support": "support points", "query": "query points"}
#: baselines drawn grey, told apart by line style
_BASELINES = {"random": "--", "loss": "-."}


def _paper_points(result: dict) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """``{(setting, unit): [(method, paper fraction found at 40% inspected)]}`` of the rows naming a paper target."""
    points: dict[tuple[str, str], list[tuple[str, float]]] = {}
    dataset = result.get("dataset", "")
    for rows in result["aggregate"]["tables"].values():
        for row in rows or []:
            target = paper_targets.PAPER_TARGETS.get(row.get("paper_ref", ""))
            found = target.values.get(dataset, {}).get("found_at_40") if target else None
            if found is not None:
                points.setdefault((row.get("setting", ""), row.get("unit", "")), []).append((row["method"], found))
    return points


def figures(result: dict, out_dir: Path) -> list[Path]:
    """Detection curves (fraction found vs fraction inspected), one panel per (setting, unit kind); an x marks the
    paper's approximate point (read off its figure) at 40% inspected, in the colour of the method it belongs to."""
    dataset = result.get("dataset", "")
    paper = _paper_points(result)
    seed, payload = next(iter(result["per_seed"].items()))
    grid = payload["series"]["grid"]
    panels = [(s, k, c) for s, by_kind in payload["series"]["curves"].items() for k, c in by_kind.items()]
    if not panels:  # no method scored any unit (every scoring skipped)
        return []
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=4.0, height=4.4)
    axes = np.ravel(axes)
    for ax, (setting, kind, curves) in zip(axes, panels):
        for method, curve in curves.items():
            baseline = method in _BASELINES
            ax.plot(grid, curve, color="0.55" if baseline else method_color(method), label=method,
                    lw=1.0 if baseline else 1.3, ls=_BASELINES.get(method, "-"))
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":", label="inspecting at random (expected)")
        for method, found in paper.get((setting, kind), []):
            ax.scatter([0.4], [found], marker="x", s=40, color=method_color(method), zorder=3,
                       label=f"paper ≈ ({method})")
        ax.set_xlabel("fraction inspected")
        ax.set_ylabel("fraction of corrupted found")
        ax.set_ylim(-0.02, 1.05)
        ax.set_title(f"{_SETTINGS.get(setting, setting)}: {_UNITS.get(kind, kind)}", fontsize=9)
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below, off the curves
    for ax in axes[len(panels):]:
        ax.axis("off")
    n_seeds = len(result["per_seed"])
    fig.suptitle(f"E2 {dataset}: detection of corrupted units, seed {seed}"
                 + (f" (1 of {n_seeds}; the tables hold all)" if n_seeds > 1 else ""))
    return [save_figure(fig, out_dir / f"e2-{dataset}.png")]
