"""What every solver of (damping I + H)^-1 b reports: its diagnostics and its two failure modes."""

from __future__ import annotations

from dataclasses import dataclass


class IndefiniteHessianError(ValueError):
    """The damped total Hessian has a non-positive eigenvalue / curvature."""


class SolverNotConvergedError(RuntimeError):
    """An iterative solver stopped before reaching its tolerance."""


@dataclass
class SolveInfo:
    method: str
    iterations: int
    rel_residual: float
    min_eigenvalue: float | None = None
    converged: bool = True
    max_eigenvalue: float | None = None  # Neumann / LiSSA: the power-iteration estimate, 1 / eta
