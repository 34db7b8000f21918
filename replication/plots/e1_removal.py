"""E1 figures, drawn from a result JSON alone (``experiments/e1_removal.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replication import paper_targets
from replication.intervals import basis_note, over_seeds
from replication.plots.style import method_color, new_mosaic, save_figure


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
    # the first kind (tasks, with every method) fills the left column; the others, which hold only the
    # instance-level methods, are stacked on the right, each as tall as its bars: one 0.3-inch slot per bar keeps the
    # 7-point tick labels apart however many methods ran, and the 1.6 inches hold title, axis label and legend
    slots = [len(sel) + 1.6 / 0.3 for sel in panels]
    layout = [[kinds[0], kind] for kind in kinds[1:]] or [[kinds[0]]]
    fig, axes = new_mosaic(layout, width=4.5 * min(len(kinds), 2),
                           height=0.3 * max(slots[0], sum(slots[1:])), height_ratios=slots[1:] or None)
    estimates = []
    for kind, sel in zip(kinds, panels):
        ax = axes[kind]
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
    # one legend for all panels, under the tall left one (off the bars and marks); handles from every panel
    handles = {label: h for ax in axes.values() for h, label in zip(*ax.get_legend_handles_labels())}
    axes[kinds[0]].legend(handles.values(), handles.keys(), fontsize=7, loc="upper center",
                          bbox_to_anchor=(0.5, -0.16), ncol=2)
    newline = "\n" if len(kinds) == 1 else " "  # one panel is too narrow for the title on one line
    fig.suptitle(f"E1 {dataset}: remove the 40% most harmful ({full.get('inner')});{newline}95% CI: "
                 f"{basis_note(estimates)}", fontsize=9)
    return [save_figure(fig, out_dir / f"e1-{dataset}.png")]
