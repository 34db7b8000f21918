"""The attribution problem: a trained meta-learning problem whose units (tasks, support or query points) methods
score and ground truths retrain without. Shared by ``metainf.methods`` and ``metainf.groundtruth``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from metainf.core.objective import MetaObjective
from metainf.train import Trajectory

UNIT_KINDS: tuple[str, ...] = ("task", "support", "query")


@dataclass
class AttributionProblem:
    """Everything a method may use.

    ``objective``
        The training meta-objective F (tasks, unit weights, delta); ``objective.tasks`` holds the training pool.
    ``lam``
        The trained meta-parameters being explained (lam* for converged training, lam_T for stochastic training).
    ``eval_objective``
        The evaluation tasks; the functional is ``eval_objective.mean_loss``.
    ``trajectory``
        The recorded stochastic meta-training (checkpoints, task schedule, learning rates) or ``None`` when the
        model was trained by full-batch convergence only. Trajectory-based methods require it.
    ``train_config``
        How the trajectory was produced (``steps``, ``batch``, ``lr``, ``optimizer``, ``seed``, ``record_every``)
        so that trajectory-specific leave-one-out can replay it.
    ``task_ids``
        Stable ids of the training tasks (``TaskPool.task_ids``).
    ``seed``
        Seed for methods with randomness (random baseline, projections, LiSSA sampling).
    """

    objective: MetaObjective
    lam: Tensor
    eval_objective: MetaObjective
    trajectory: Trajectory | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    task_ids: list[str] | None = None
    seed: int = 0

    def shape(self, kind: str) -> tuple[int, ...]:
        """Shape of the score array for units of ``kind``."""
        check_kind(kind)
        m = self.objective.n_tasks
        if kind == "task":
            return (m,)
        if kind == "support":
            return (m, self.objective.tasks.ws.shape[1])
        return (m, self.objective.tasks.wq.shape[1])

    def unit_ids(self, kind: str) -> list[str]:
        """Flat list of unit ids in row-major order of the score array: ``<task>``, ``<task>/s<j>``, ``<task>/q<j>``."""
        ids = self.task_ids or [f"t{k}" for k in range(self.objective.n_tasks)]
        shape = self.shape(kind)
        if kind == "task":
            return list(ids)
        tag = "s" if kind == "support" else "q"
        return [f"{ids[k]}/{tag}{j}" for k in range(shape[0]) for j in range(shape[1])]


def check_kind(kind: str) -> None:
    """Raise ``ValueError`` unless ``kind`` is one of ``UNIT_KINDS``."""
    if kind not in UNIT_KINDS:
        raise ValueError(f"unknown unit kind {kind!r}: choose one of {list(UNIT_KINDS)}")
