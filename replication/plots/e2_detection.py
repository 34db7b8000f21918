"""E2 figures, drawn from a result JSON alone (``experiments/e2_detection.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replication.plots.style import method_color, new_figure, save_figure


def figures(result: dict, out_dir: Path) -> list[Path]:
    """Detection curves (fraction found vs fraction inspected), one panel per (setting, unit kind)."""
    dataset = result.get("dataset", "")
    seed, payload = next(iter(result["per_seed"].items()))
    grid = payload["series"]["grid"]
    panels = [(s, k, c) for s, by_kind in payload["series"]["curves"].items() for k, c in by_kind.items()]
    fig, axes = new_figure(ncols=len(panels))
    for ax, (setting, kind, curves) in zip(np.ravel(axes), panels):
        for method, curve in curves.items():
            ax.plot(grid, curve, color=method_color(method), label=method, lw=1.2)
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
        ax.set_xlabel("fraction inspected")
        ax.set_ylabel("fraction of corrupted found")
        ax.set_title(f"{setting}: {kind}")
        ax.legend(fontsize=6)
    fig.suptitle(f"E2 {dataset}, seed {seed}")
    return [save_figure(fig, out_dir / f"e2-{dataset}.png")]
