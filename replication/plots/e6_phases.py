"""E6 figures, drawn from a result JSON alone (``experiments/e6_phases.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replication.plots.style import new_figure, save_figure


def figures(result: dict, out_dir: Path) -> list[Path]:
    """Early vs late contributions per unit (exact DVEmb), one panel per unit kind."""
    dataset = result.get("dataset", "")
    seed, payload = next(iter(result["per_seed"].items()))
    by_kind = payload["series"].get("dvemb_exact", {})
    fig, axes = new_figure(ncols=max(1, len(by_kind)))
    for ax, (kind, parts) in zip(np.ravel(axes), by_kind.items()):
        parts = np.array(parts)
        ax.scatter(parts[0], parts[-1], s=10)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.axvline(0, color="0.7", lw=0.8)
        ax.set_xlabel("early-phase contribution")
        ax.set_ylabel("late-phase contribution")
        ax.set_title(f"{kind} units")
    fig.suptitle(f"E6 {dataset}: exact Meta-DVEmb by phase, seed {seed}")
    return [save_figure(fig, out_dir / f"e6-{dataset}.png")]
