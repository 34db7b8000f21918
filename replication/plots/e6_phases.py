"""E6 figures, drawn from a result JSON alone (``experiments/e6_phases.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replication.plots.style import new_figure, save_figure


def figures(result: dict, out_dir: Path) -> list[Path]:
    """Early vs late contributions per unit, one panel per unit kind: exact Meta-DVEmb on the MLP, and DVEmb-Fisher
    on Conv-4 where the result has that part (corrupted tasks in red)."""
    dataset = result.get("dataset", "")
    seed, payload = next(iter(result["per_seed"].items()))
    panels = [(f"MLP, exact Meta-DVEmb: {kind}", parts, None)
              for kind, parts in payload["series"].get("dvemb_exact", {}).items()]
    conv4 = payload["series"].get("conv4", {}).get("dvemb_fisher", {})
    flags = payload.get("series", {}).get("conv4_corrupted")
    panels += [(f"Conv-4, DVEmb-Fisher: {kind}", parts, flags) for kind, parts in conv4.items()]
    fig, axes = new_figure(ncols=max(1, len(panels)))
    for ax, (title, parts, bad) in zip(np.ravel(axes), panels):
        parts = np.array(parts)
        if bad is None:
            ax.scatter(parts[0], parts[-1], s=10)
        else:
            corrupted = np.array(bad, dtype=bool)
            for mask, colour, label in ((~corrupted, "tab:blue", "clean task"),
                                        (corrupted, "tab:red", "corrupted task")):
                ax.scatter(parts[0][mask], parts[-1][mask], s=10, c=colour, label=label)
            ax.legend(loc="best", fontsize=8)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.axvline(0, color="0.7", lw=0.8)
        ax.ticklabel_format(style="sci", scilimits=(-2, 3), useMathText=True)
        ax.set_xlabel("from the first third of the steps")
        ax.set_ylabel("from the last third")
        ax.set_title(title, fontsize=9)
    n_seeds = len(result["per_seed"])
    fig.suptitle(f"E6 {dataset}: each unit's score split by training phase (positive helps), seed {seed}"
                 + (f" (1 of {n_seeds}; the tables hold all)" if n_seeds > 1 else ""))
    return [save_figure(fig, out_dir / f"e6-{dataset}.png")]
