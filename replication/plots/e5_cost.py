"""E5 figures, drawn from a result JSON alone (``experiments/e5_cost.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.e5_cost import METHODS
from replication.plots.style import method_color, new_figure, save_figure


_REFERENCES = {"epoch": ":", "train": "-.", "loo_all": "--"}  # drawn in black, one line style each
_REFERENCE_LABELS = {"epoch": "one meta-epoch", "train": "meta-training", "loo_all": "LOO retraining of all tasks"}
_MARKERS = "osD^v<>phX*P"


def figures(result: dict, out_dir: Path) -> list[Path]:
    """Log-log time vs number of tasks per method (one panel per width), with one meta-epoch, the meta-training and
    leave-one-out retraining of all tasks as black reference lines; the legend to the right of the last panel."""
    dataset = result.get("dataset", "")
    seed, payload = next(iter(result["per_seed"].items()))
    points = payload["series"]["points"]
    widths = sorted({p["hidden"] for p in points})
    methods = [m for m in result.get("methods") or METHODS if any(f"{m}_s" in p for p in points)]
    fig, axes = new_figure(ncols=len(widths), width=4.0 + 2.2 / len(widths))  # room for the legend on the right
    axes = np.ravel(axes)
    for ax, h in zip(axes, widths):
        sel = sorted((p for p in points if p["hidden"] == h), key=lambda p: p["n_tasks"])
        ms = [p["n_tasks"] for p in sel]
        for i, name in enumerate([*methods, *_REFERENCES]):
            ys = [p.get(f"{name}_s") for p in sel]
            if not all(y is not None for y in ys):
                continue
            style = ({"ls": _REFERENCES[name], "color": "black"} if name in _REFERENCES else
                     {"color": method_color(name), "marker": _MARKERS[i % len(_MARKERS)], "ms": 4})
            ax.loglog(ms, ys, label=_REFERENCE_LABELS.get(name, name), **style)
        ax.set_xlabel("training tasks M (log)")
        ax.set_ylabel("seconds (log)")
        ax.set_title(f"MLP hidden {h} ({sel[0]['n_params']} params)")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)
    fig.suptitle(f"E5 {dataset}: cost vs number of tasks, seed {seed}")
    return [save_figure(fig, out_dir / f"e5-{dataset}.png")]
