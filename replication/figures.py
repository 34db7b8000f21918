"""Figures, regenerated from result JSON only: :func:`render_result` draws one result with its experiment's
figure function (``replication.plots.FIGURES``, in the style of ``replication.plots.style``) into
``<results>/figures/<EXP>-<dataset>-<scale>/``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from experiments import registry
from experiments.base import Experiment
from replication import results
from replication.plots import FIGURES
from replication.plots.style import STYLE


def figure_dir(results_dir: Path, exp_id: str, dataset: str, scale: str) -> Path:
    """The folder holding one result's figures."""
    return Path(results_dir) / "figures" / f"{exp_id}-{dataset}-{scale}"


def render_result(experiment: Experiment, result: Mapping[str, Any], results_dir: Path) -> list[str]:
    """Regenerate one result's figures from its JSON; returns their paths relative to ``results_dir``. The folder's
    other PNGs (figures the result no longer draws) are deleted once the new ones are written, so a drawing that
    fails leaves the old figures in place."""
    out = figure_dir(results_dir, result["experiment"], result["dataset"], result["scale"])
    out.mkdir(parents=True, exist_ok=True)
    draw = FIGURES.get(experiment.id)
    paths: list[Path] = []
    if draw is not None:  # else an experiment without figures
        with plt.rc_context(STYLE):
            paths = [Path(p).resolve() for p in draw(dict(result), out)]
    for stale in out.glob("*.png"):
        if stale.resolve() not in paths:
            stale.unlink()
    return sorted(p.relative_to(Path(results_dir).resolve()).as_posix() for p in paths)


def regenerate_all(results_dir: Path) -> list[str]:
    """Redraw the figures of every result under ``results_dir`` and record their paths in each JSON."""
    written: list[str] = []
    for path, result in results.iter_results(results_dir):
        experiment = registry.EXPERIMENTS.get(result["experiment"])
        if experiment is None:
            print(f"metainf-repro: warning: {path}: experiment {result['experiment']} is not registered; "
                  "figures left as they are", file=sys.stderr)
            continue
        result["figures"] = render_result(experiment, result, results_dir)
        results.write_json(path, result)
        written += result["figures"]
    return written
