"""E1 figures, drawn from a result JSON alone (``experiments/e1_removal.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replication import paper_targets
from replication.intervals import basis_note, over_seeds
from replication.plots.style import method_color, new_figure, save_figure


def _rows(result: dict) -> list[dict]:
    """The removal table pooled over seeds (cells ``{"mean", "std", "n"}``), else the first seed's rows."""
    for rows in result["aggregate"]["tables"].values():
        if rows and all("acc" in r and "unit" in r for r in rows):
            return rows
    return next(iter(result["per_seed"].values()))["series"]["rows"]


def figures(result: dict, out_dir: Path) -> list[Path]:
    """Meta-test accuracy after removal with its 95% CI (t over seeds; one seed: the run's own CI), one bar per
    (method, mode), one panel per unit kind (model edits hatched); a black x, just above its bar, marks the paper's
    accuracy on the rows that have one."""
    dataset = result.get("dataset", "")
    rows = _rows(result)
    full = next(r for r in rows if r["unit"] == "-")
    kinds = [k for k in ("task", "support", "query") if any(r["unit"] == k for r in rows)]
    panels = [[r for r in rows if r["unit"] == kind and r.get("inner") == full.get("inner")] for kind in kinds]
    # one 0.3-inch slot per bar keeps the 7-point tick labels apart however many methods ran
    fig, axes = new_figure(ncols=len(kinds), width=4.5, height=1.6 + 0.3 * max(map(len, panels)))
    estimates = []
    for ax, kind, sel in zip(np.ravel(axes), kinds, panels):
        acc = [over_seeds(r["acc"], r.get("acc_ci95")) for r in sel]
        estimates += acc
        means = [e.mean for e in acc]
        err = np.array([[e.mean - e.low, e.high - e.mean] if e.has_interval else [0.0, 0.0] for e in acc]).T
        y = np.arange(len(sel))
        bars = ax.barh(y, means, xerr=err, height=0.7, color=[method_color(r["method"]) for r in sel],
                       error_kw={"lw": 1, "capsize": 2})
        for bar, row in zip(bars, sel):
            if row.get("mode") == "edit":
                bar.set_hatch("///")
                bar.set_edgecolor("white")
        ax.axvline(over_seeds(full["acc"]).mean, color="0.3", ls="--", lw=1, label="no removal", zorder=0.5)
        for i, row in enumerate(sel):
            target = paper_targets.PAPER_TARGETS.get(row.get("paper_ref", ""))
            paper = target.values.get(dataset, {}).get("acc") if target else None
            if paper is not None:
                labelled = any(t.get_label() == "paper" for t in ax.collections)
                ax.scatter([paper], [i + 0.2], marker="x", color="k", s=30, zorder=3,
                           label=None if labelled else "paper")
        ax.set_yticks(y, [f"{r['method']} ({r['mode']})" for r in sel], fontsize=7)
        ax.set_xlabel("meta-test accuracy")
        ax.set_title(f"{kind} units")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # off the bars and marks
    fig.suptitle(f"E1 {dataset}: remove the 40% most harmful ({full.get('inner')}); 95% CI: "
                 f"{basis_note(estimates)}", fontsize=9)
    return [save_figure(fig, out_dir / f"e1-{dataset}.png")]
