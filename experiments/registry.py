"""The experiments the harness knows: ``EXPERIMENTS`` maps ``"E1"`` ... to :class:`experiments.base.Experiment`.

Each module in :data:`EXPERIMENT_MODULES` defines ``EXPERIMENT``. A module that does not exist yet is skipped; a
module that exists but fails to import raises, so a broken experiment is never silently left out. Tests add their own
experiment with :func:`register` (and remove it again, e.g. through ``monkeypatch.delitem``).
"""

from __future__ import annotations

import importlib
import importlib.util

from experiments.base import Experiment

EXPERIMENT_MODULES: tuple[str, ...] = (
    "experiments.e0_maml",
    "experiments.e1_removal",
    "experiments.e2_detection",
    "experiments.e3_loo",
    "experiments.e4_ablations",
    "experiments.e5_cost",
    "experiments.e6_phases",
)

EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` under its id; an id that is already taken raises ``ValueError``."""
    if experiment.id in EXPERIMENTS:
        raise ValueError(f"experiment id {experiment.id} is registered twice")
    EXPERIMENTS[experiment.id] = experiment
    return experiment


def _load(module_name: str) -> None:
    if importlib.util.find_spec(module_name) is None:
        return
    module = importlib.import_module(module_name)
    experiment = getattr(module, "EXPERIMENT", None)
    if not isinstance(experiment, Experiment):
        raise TypeError(f"{module_name} must define EXPERIMENT = experiments.base.Experiment(...)")
    register(experiment)


for _name in EXPERIMENT_MODULES:
    _load(_name)
