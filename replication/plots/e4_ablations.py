"""E4 figures, drawn from a result JSON alone (``experiments/e4_ablations.py`` computes the result)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib import colormaps

from replication.plots.style import new_figure, note_empty, save_figure

#: frontier panels: (unit kind, accuracy metric, cost prefix, y label)
_PANELS = (("task", "task_spearman_loo", "task", "Spearman with leave-one-task-out"),
           ("support", "support_spearman", "instance", "Spearman with exact instance-IF"),
           ("query", "query_spearman", "instance", "Spearman with exact instance-IF"))
#: frontier families in legend order with their (tab10 colour, marker): the CG variants and the Nystrom ones each a
#: hue of their own, the curvature models (fisher, gn, ekfac), the series (neumann, lissa) and the references (exact,
#: task_if_cg) a shared hue told apart by marker, task_if_fast a star
_FAMILY_STYLES = {
    "exact": ("black", "o"), "task_if_cg": ("black", "s"), "fast": ("tab:cyan", "*"),
    "cg": ("tab:blue", "o"), "cg_fisher": ("tab:orange", "s"), "cg_diag_fisher": ("tab:green", "D"),
    "cg_diag_hutchinson": ("tab:red", "^"), "cg_ekfac": ("tab:purple", "v"),
    "nystrom": ("tab:brown", "p"), "nystrom_pcg": ("tab:pink", "h"),
    "fisher": ("tab:olive", "<"), "gn": ("tab:olive", ">"), "ekfac": ("tab:olive", "X"),
    "neumann": ("tab:gray", "P"), "lissa": ("tab:gray", "d"),
}
_FAMILIES = tuple(_FAMILY_STYLES)
#: Neumann-depth curves: one line style and marker per curve, so curves that coincide stay visible
_CURVE_STYLES = tuple((ls, mk) for mk in "os^D" for ls in ("-", "--", ":"))


def _family(row: str) -> str:
    """The estimator family of a frontier row (its name without the numbers: ``cg3_fisher`` -> ``cg_fisher``)."""
    return re.sub(r"\d+", "", row)


def _family_style(family: str) -> dict:
    """The family's colour and marker (an unknown family: a tab20 colour by a stable hash, a plain circle)."""
    colour, marker = _FAMILY_STYLES.get(family, (colormaps["tab20"](sum(family.encode()) % 20), "o"))
    return {"color": colour, "marker": marker}


def frontier_figure(frontier: dict, title: str, path: Path) -> Path:
    """Accuracy against cost of every frontier row: one panel each for tasks / support / query points; x = median
    meta-epochs (log) with the 25th-75th percentile as error bar, y = Spearman; the Pareto frontier drawn as a
    step line; coloured and marked by family (legend in the last panel); the rows on the frontier are ringed and
    named where a name has room (labels alternate above and below along the frontier; a name that would overlap
    one already placed is left out)."""
    fig, axes = new_figure(ncols=4, width=4.2, height=4.6)
    axes = np.ravel(axes)
    rows = {n: m for n, m in frontier.items() if m.get("status") == "ok"}
    for ax, (kind, accuracy, cost, ylabel) in zip(axes, _PANELS):
        what = "scoring all tasks" if cost == "task" else f"scoring all {kind} points"
        if f"{cost}_epochs_median" not in next(iter(rows.values()), {}):
            cost, what = "task", "scoring all tasks (points not timed)"
        pts = []
        on_frontier = sorted((float(m[f"{cost}_epochs_median"]), n) for n, m in rows.items() if m.get(f"{kind}_pareto"))
        label_below = {n: i % 2 == 1 for i, (_, n) in enumerate(on_frontier)}
        for name, m in sorted(rows.items()):
            x, y = float(m[f"{cost}_epochs_median"]), float(m[accuracy])
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            err = [[x - float(m[f"{cost}_epochs_q25"])], [float(m[f"{cost}_epochs_q75"]) - x]]
            fam = _family(name)
            style = _family_style(fam)
            ax.errorbar([x], [y], xerr=err, fmt=style["marker"], ms=8 if style["marker"] == "*" else 5,
                        color=style["color"], ecolor=style["color"],
                        elinewidth=0.8, capsize=2, label=fam)
            if m.get(f"{kind}_pareto"):
                ax.scatter([x], [y], s=55, facecolors="none", edgecolors="black", lw=0.7, zorder=3)
                pts.append((x, y, name))
        if pts:
            pts.sort()
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="black", lw=0.9, ls="--",
                    label="Pareto frontier")
            ax.set_xscale("log")
            ax.autoscale_view()
            placed: list[tuple[float, float]] = []
            for x, y, name in pts:
                below = label_below[name]
                px, py = ax.transData.transform((x, y))
                py += -8 if below else 6
                if any(abs(px - qx) < 48 and abs(py - qy) < 11 for qx, qy in placed):
                    continue
                ax.annotate(name, (x, y), xytext=(4, -8 if below else 3), textcoords="offset points", fontsize=6.5)
                placed.append((px, py))
        if not any(np.isfinite(float(m[accuracy])) for m in rows.values()):
            note_empty(ax, "no finite Spearman on this seed\n(undefined for every row)")
        ax.set_xscale("log")
        ax.set_xlabel(f"cost of {what}\n(meta-epochs; median, IQR bars)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{kind}s" if kind == "task" else f"{kind} points", fontsize=9)
    unique = {}
    for ax in axes[:-1]:
        unique |= dict(zip(*reversed(ax.get_legend_handles_labels())))
    order = sorted(unique, key=lambda f: (_FAMILIES + (f,)).index(f))
    axes[-1].axis("off")
    axes[-1].legend([unique[f] for f in order], order, loc="center left", fontsize=7, frameon=False,
                    title="estimator family (ringed: on the frontier,\nnamed where there is room)", title_fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def figures(result: dict, out_dir: Path) -> list[Path]:
    """Per seed and inner problem: every ablation configuration's wall time against its Spearman with
    leave-one-out (the fastest within the LOO margin in red); the relative error of the Neumann series' task
    scores against its depth, one curve per inner solver / curvature (H' exact, dropped, a Gauss-Newton or
    EK-FAC model, or the gamma-scaled identity); and the accuracy-cost frontier."""
    paths = []
    dataset = result.get("dataset", "")
    for seed, payload in result["per_seed"].items():
        for kind, m in payload["metrics"].items():
            configs = m["configs"].values()
            fig, ax = new_figure()
            best = None
            for name, c in m["configs"].items():
                seconds, rho = float(c["seconds"]), float(c["spearman_loo"])
                if np.isfinite(seconds) and np.isfinite(rho):
                    if name == m["best"]["config"]:
                        best = (seconds, rho)
                    else:
                        ax.scatter(seconds, rho, s=10, color="C0")
            if best is not None:
                ax.scatter(*best, s=28, color="C3", zorder=3, label="fastest within the LOO margin")
            exact = float(m["exact_path"]["spearman_loo"])
            if np.isfinite(exact):
                ax.axhline(exact, color="k", lw=0.8, ls="--", label="exact path")
            if not ax.collections:
                note_empty(ax, "Spearman with leave-one-out is undefined\non this seed for every configuration")
            ax.set_xscale("log")
            ax.set_xlabel("wall time of the configuration (s)")
            ax.set_ylabel("Spearman with leave-one-out")
            ax.set_title(f"E4 {dataset} {kind}, seed {seed}", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="lower right", fontsize=7)
            paths.append(save_figure(fig, out_dir / f"e4-{kind}-time-vs-loo-seed{seed}.png"))
            fig, ax = new_figure(width=5.6)
            curves = sorted({(c["inner_solver"], c["curvature"]) for c in configs})
            for (inner_solver, curvature), (ls, mk) in zip(curves, _CURVE_STYLES * len(curves)):
                pts = sorted((int(c["total_solver"][len("neumann"):]), float(c["rel_err"])) for c in configs
                             if c["total_solver"].startswith("neumann") and c["inner_solver"] == inner_solver
                             and c["curvature"] == curvature and np.isfinite(float(c["rel_err"])))
                if pts:
                    ax.plot(*zip(*pts), ls=ls, marker=mk, mfc="none", label=f"{inner_solver} / {curvature}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("Neumann depth J (log)")
            ax.set_ylabel("relative error of the task scores\nvs the exact path (log)")
            ax.set_title(f"E4 {dataset} {kind}, seed {seed}", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.0, 0.5),
                          title="inner solver / curvature", title_fontsize=6.5)
            paths.append(save_figure(fig, out_dir / f"e4-{kind}-neumann-depth-seed{seed}.png"))
            if "frontier" in m:
                paths.append(frontier_figure(m["frontier"], f"E4 {result.get('dataset', '')} {kind}, seed {seed}: "
                                             "accuracy-cost frontier", out_dir / f"e4-{kind}-frontier-seed{seed}.png"))
    return paths
