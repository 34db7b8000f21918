"""One interface for every curvature: ``matvec(v) = A v`` and ``solve(b) = (x ~ A^-1 b, SolveInfo)``.

A is the damped curvature the influence functions invert, A = H + damping I, with H the exact total Hessian
H_F = (1/M) sum_k tau_k D^2 L_O^k + delta I or a model of it (for ``EKFACCurvature``: the proximal inner Hessian
Hess L_S + beta I of one task). Where each curvature lives and how it solves:

- exact (implicit HVPs): ``OperatorCurvature(lambda u: obj.hvp(lam, u, hprime))``, solved by
  ``metainf.linalg.solvers.solve`` (``cg`` to a tolerance or ``dense``);
- block (dense per-task blocks): the same on ``obj.with_dense_hessian(lam)``, whose HVPs are matrix products;
- Gauss-Newton: ``OperatorCurvature(metainf.linalg.gauss_newton.gn_hvp(obj, lam))``;
- Neumann / LiSSA: ``OperatorCurvature(..., method="neumann" | "lissa", options=...)`` (``metainf.linalg.neumann``);
- Fisher: ``metainf.linalg.fisher.FisherCurvature`` (Woodbury);
- Nystrom / Rayleigh-Ritz: ``metainf.linalg.nystrom.LowRankCurvature`` (Woodbury);
- EK-FAC: ``metainf.linalg.ekfac.EKFACCurvature`` (division in the Kronecker eigenbases).

Truncated and preconditioned solves compose them: ``metainf.linalg.cg.cg(c.matvec, b, tol=0, max_iter=k)`` runs k CG
iterations on any curvature ``c`` (task-IF truncated), and ``precond=lambda r: m.solve(r)[0]`` preconditions with
another (Nystrom-PCG with a ``LowRankCurvature``, Fisher-PCG with a ``FisherCurvature``).

A new curvature goes in ``metainf/linalg/<name>.py`` as a class with these two methods (no registration: the
protocol is structural).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from metainf.linalg.solvers import solve
from metainf.linalg.types import SolveInfo


@runtime_checkable
class Curvature(Protocol):
    """A damped curvature A: ``matvec(v)`` = A v, ``solve(b)`` = (x ~ A^-1 b, diagnostics)."""

    def matvec(self, v: Tensor) -> Tensor: ...

    def solve(self, b: Tensor) -> tuple[Tensor, SolveInfo]: ...


@dataclass(frozen=True)
class OperatorCurvature:
    """A = H + damping I with H given only by products ``hvp(u)`` = H u, solved by ``metainf.linalg.solvers.solve``
    with ``method`` (``cg``, ``dense``, ``neumann``, ``lissa``), ``tol``, ``max_iter`` and the series ``options``."""

    hvp: Callable[[Tensor], Tensor]
    damping: float = 0.0
    method: str = "cg"
    tol: float = 1e-10
    max_iter: int = 500
    options: Mapping[str, Any] = field(default_factory=dict)

    def matvec(self, v: Tensor) -> Tensor:
        return self.hvp(v) + self.damping * v if self.damping else self.hvp(v)

    def solve(self, b: Tensor) -> tuple[Tensor, SolveInfo]:
        return solve(self.hvp, b, self.method, self.damping, self.tol, self.max_iter, **dict(self.options))
