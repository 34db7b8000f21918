"""One attribution interface for every method, the ground truth and the experiments.

A method scores *units* of one kind (``"task"``, ``"support"`` or ``"query"``) of a trained meta-learning problem
against an evaluation functional, here the mean query loss of the evaluation tasks::

    L_eval(lam) = eval_objective.mean_loss(lam)

Sign convention, shared by every method and by leave-one-out retraining::

    score[u] ~ L_eval(trained without u) - L_eval(trained with u)          (positive: u helps)

Scores have shape ``[M]`` for tasks and ``[M, S]`` / ``[M, Q]`` for support / query points (``M`` training tasks);
``problem.unit_ids(kind)`` names every entry. :func:`metainf.methods.registry.run_method` records the cost (wall
time and peak resident memory) with the scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from metainf.core.problem import AttributionProblem

@dataclass
class Scores:
    """A method's scores for one unit kind, with the measured cost of computing them."""

    method: str
    kind: str
    values: Tensor
    seconds: float
    peak_rss_mb: float
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class AttributionMethod(Protocol):
    """What a method implements. ``name`` is its registry name; ``kinds`` the unit kinds it supports.

    ``score(problem, kind)`` returns a tensor of shape ``problem.shape(kind)`` in the sign convention above.
    ``needs_trajectory`` tells the harness to record a stochastic trajectory before calling it.
    """

    name: str
    kinds: tuple[str, ...]
    needs_trajectory: bool

    def score(self, problem: AttributionProblem, kind: str) -> Tensor: ...
