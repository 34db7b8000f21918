"""E0 figures, drawn from a result JSON alone (``experiments/e0_maml.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path


from replication.plots.style import new_figure, save_figure


def figures(result: dict, out_dir: Path) -> list[Path]:
    """One bar chart: meta-test accuracy (mean and 95% interval per seed) against chance."""
    seeds = sorted(result["per_seed"])
    if not seeds:
        return []
    fig, ax = new_figure()
    accs = [result["per_seed"][s]["metrics"]["maml"]["acc"] for s in seeds]
    cis = [result["per_seed"][s]["metrics"]["maml"]["acc_ci95"] for s in seeds]
    chance = result["per_seed"][seeds[0]]["metrics"]["maml"]["chance"]
    ax.bar([f"seed {s}" for s in seeds], accs, yerr=cis, capsize=4)
    ax.axhline(chance, color="k", linestyle="--", label="chance")
    ax.set_ylim(0, 1)
    ax.set_ylabel("meta-test query accuracy")
    ax.set_title("E0 MAML sanity run")
    ax.legend()
    return [save_figure(fig, out_dir / "e0-maml-accuracy.png")]
