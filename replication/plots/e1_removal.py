"""E1 figures, drawn from a result JSON alone (``experiments/e1_removal.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replication.plots.style import method_color, new_figure, save_figure


def figures(result: dict, out_dir: Path) -> list[Path]:
    """Meta-test accuracy after removal, one bar per (method, mode), one panel per unit kind."""
    paths = []
    dataset = result.get("dataset", "")
    seed, payload = next(iter(result["per_seed"].items()))
    rows = payload["series"]["rows"]
    full = next(r for r in rows if r["unit"] == "-")
    kinds = [k for k in ("task", "support", "query") if any(r["unit"] == k for r in rows)]
    fig, axes = new_figure(ncols=len(kinds), width=4.5)
    for ax, kind in zip(np.ravel(axes), kinds):
        sel = [r for r in rows if r["unit"] == kind and r["inner"] == full["inner"]]
        labels = [f"{r['method']} ({r['mode']})" for r in sel]
        ax.barh(range(len(sel)), [r["acc"] for r in sel], xerr=[r["acc_ci95"] for r in sel],
                color=[method_color(r["method"]) for r in sel])
        ax.axvline(full["acc"], color="0.3", ls="--", lw=1, label="no removal")
        ax.set_yticks(range(len(sel)), labels, fontsize=7)
        ax.set_xlabel("meta-test accuracy")
        ax.set_title(f"{kind} units")
        ax.legend(fontsize=7)
    fig.suptitle(f"E1 {dataset}: remove 40% most harmful ({full['inner']}), seed {seed}")
    paths.append(save_figure(fig, out_dir / f"e1-{dataset}.png"))
    return paths
