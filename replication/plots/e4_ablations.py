"""E4 figures, drawn from a result JSON alone (``experiments/e4_ablations.py`` computes the result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replication.plots.style import new_figure, save_figure


def figures(result: dict, out_dir: Path) -> list[Path]:
    paths = []
    for seed, payload in result["per_seed"].items():
        for kind, m in payload["metrics"].items():
            configs = m["configs"].values()
            fig, ax = new_figure()
            for name, c in m["configs"].items():
                seconds, rho = float(c["seconds"]), float(c["spearman_loo"])
                if np.isfinite(seconds) and np.isfinite(rho):
                    ax.scatter(seconds, rho, s=10, color="C3" if name == m["best"]["config"] else "C0")
            ax.axhline(float(m["exact_path"]["spearman_loo"]), color="k", lw=0.8, ls="--", label="exact path")
            ax.set_xscale("log")
            ax.set_xlabel("wall time of the configuration (s)")
            ax.set_ylabel("Spearman with leave-one-out")
            ax.set_title(f"E4 {kind}, seed {seed}; red: fastest within margin", fontsize=9)
            ax.legend()
            paths.append(save_figure(fig, out_dir / f"e4-{kind}-time-vs-loo-seed{seed}.png"))
            fig, ax = new_figure()
            for inner_solver, curvature in sorted({(c["inner_solver"], c["curvature"]) for c in configs}):
                pts = sorted((int(c["total_solver"][len("neumann"):]), float(c["rel_err"])) for c in configs
                             if c["total_solver"].startswith("neumann") and c["inner_solver"] == inner_solver
                             and c["curvature"] == curvature and np.isfinite(float(c["rel_err"])))
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"{inner_solver} / {curvature}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("Neumann depth J")
            ax.set_ylabel("relative error of task scores vs the exact path")
            ax.set_title(f"E4 {kind}, seed {seed}")
            ax.legend(fontsize=6)
            paths.append(save_figure(fig, out_dir / f"e4-{kind}-neumann-depth-seed{seed}.png"))
    return paths
