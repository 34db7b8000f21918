"""One figure module per experiment, each drawing from a result JSON alone; ``FIGURES`` maps an experiment id to
its ``figures(result, out_dir) -> paths`` function."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from replication.plots import e0_maml, e1_removal, e2_detection, e3_loo, e4_ablations, e5_cost, e6_phases

FIGURES: dict[str, Callable[[dict, Path], list[Path]]] = {
    "E0": e0_maml.figures, "E1": e1_removal.figures, "E2": e2_detection.figures, "E3": e3_loo.figures,
    "E4": e4_ablations.figures, "E5": e5_cost.figures, "E6": e6_phases.figures,
}
