"""E2 figures, drawn from a result JSON alone (``experiments/e2_detection.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replication import paper_targets
from replication.plots.style import method_color, new_figure, save_figure


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
    fig, axes = new_figure(ncols=len(panels), height=4.6)
    for ax, (setting, kind, curves) in zip(np.ravel(axes), panels):
        for method, curve in curves.items():
            ax.plot(grid, curve, color=method_color(method), label=method, lw=1.2)
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
        for method, found in paper.get((setting, kind), []):
            ax.scatter([0.4], [found], marker="x", s=40, color=method_color(method), zorder=3,
                       label=f"paper ≈ ({method})")
        ax.set_xlabel("fraction inspected")
        ax.set_ylabel("fraction of corrupted found")
        ax.set_title(f"{setting}: {kind}")
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)  # below, off the curves
    fig.suptitle(f"E2 {dataset}, seed {seed}")
    return [save_figure(fig, out_dir / f"e2-{dataset}.png")]
