"""Toy attribution methods defined outside the package, loaded by ``module:Class`` in test_methods_registry.py.

``NormScore`` is a well-behaved method with an option; ``WrongShape`` and ``NonFinite`` break the contract.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
from torch import Tensor

from metainf.methods.base import AttributionProblem


@dataclass
class NormScore:
    """score[k] = scale * ||g_k|| for tasks (any deterministic function of the problem would do)."""

    scale: float = 1.0
    name: str = "plugin_norm"
    kinds: tuple[str, ...] = ("task",)
    needs_trajectory: bool = False

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        return self.scale * problem.objective.task_grads(problem.lam).norm(dim=1)


@dataclass
class WrongShape:
    name: str = "plugin_wrong_shape"
    kinds: tuple[str, ...] = ("task",)
    needs_trajectory: bool = False

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        return torch.zeros(problem.objective.n_tasks + 1)


@dataclass
class NonFinite:
    name: str = "plugin_non_finite"
    kinds: tuple[str, ...] = ("task",)
    needs_trajectory: bool = False

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        values = torch.zeros(problem.shape(kind))
        values[0] = float("nan")
        return values


@dataclass
class Raises:
    """A plug-in method that crashes: the run must record it as failed and keep the other methods' results."""

    name: str = "plugin_raises"
    kinds: tuple[str, ...] = ("task",)
    needs_trajectory: bool = False

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        raise RuntimeError("plugin exploded on purpose")


@dataclass
class Terminated:
    """A plug-in method during whose scoring the run receives SIGTERM (as from ``kill`` or a batch scheduler)."""

    name: str = "plugin_terminated"
    kinds: tuple[str, ...] = ("task",)
    needs_trajectory: bool = False

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        os.kill(os.getpid(), signal.SIGTERM)
        return torch.zeros(problem.shape(kind))


@dataclass
class TerminatedInsideTorch:
    """SIGTERM during scoring, inside code whose cleanup then fails and raises its own error with the stop as its
    context, as torch's ``vmap`` does when the signal lands between its C++ push and pop."""

    name: str = "plugin_terminated_inside_torch"
    kinds: tuple[str, ...] = ("task",)
    needs_trajectory: bool = False

    def score(self, problem: AttributionProblem, kind: str) -> Tensor:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the CLI's handler raises its stop before the next line
            return torch.zeros(problem.shape(kind))
        except BaseException:
            raise RuntimeError("!dynamicLayerStack.empty() INTERNAL ASSERT FAILED (a stand-in)")
