"""The paper's Gamma surrogate for the third-order term H' of the total Hessian (Theorem 5.1), and its check.

The surrogate replaces sum_k H'_k by Gamma = sum_k ||grad_theta L_O^k(theta_k)||_1 I, ADDED to the second-order
terms (``metainf.core.bilevel.parse_hprime``: ``hprime="gamma"`` or ``"gamma_scaled:c"``). In the mean normalisation of
``MetaObjective`` the total Hessian gets::

    Hess F  ~  Hess_drop F + Gamma_F I ,      Gamma_F = (c / M) sum_k tau_k ||grad_theta L_O^k(theta_k)||_1

||.||_1 grows with dim theta, so Gamma_F can exceed lambda_max(Hess_drop F); then (Hess F)^-1 ~ Gamma_F^-1 I for every
direction and task-IF degenerates to a gradient-similarity score. ``check_gamma`` measures that and warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from metainf.core.bilevel import gamma_coefficient, parse_hprime
from metainf.core.objective import MetaObjective
from metainf.linalg.chunked import map_chunked
from metainf.linalg.neumann import power_iteration


def gamma_coefficients(obj: MetaObjective, lam: Tensor) -> Tensor:
    """||grad_theta L_O^k(theta_k(lam))||_1 for every task, [M]."""
    thetas = obj.adapted_params(lam)
    return map_chunked(lambda t, th: gamma_coefficient(obj.model, th, t), (obj.tasks, thetas), size=obj.chunk)


def gamma_value(obj: MetaObjective, lam: Tensor, hprime: str = "gamma") -> float:
    """Gamma_F: the multiple of I that ``hprime`` adds to Hess F (0 for ``exact`` / ``drop``)."""
    mode, scale = parse_hprime(hprime)
    if mode != "gamma":
        return 0.0
    return scale * float(obj.tau @ gamma_coefficients(obj, lam)) / obj.n_tasks


@dataclass
class GammaCheck:
    gamma: float  # Gamma_F
    lambda_max_rest: float  # power-iteration estimate of lambda_max(Hess_drop F), delta included
    dominates: bool


def check_gamma(obj: MetaObjective, lam: Tensor, hprime: str, ratio: float = 1.0, power_iters: int = 20,
                seed: int = 0) -> GammaCheck:
    """Compare Gamma_F with lambda_max of the rest of the total Hessian; warn if Gamma_F > ratio * lambda_max."""
    gamma = gamma_value(obj, lam, hprime)
    if gamma == 0.0:
        return GammaCheck(0.0, float("nan"), False)
    top = power_iteration(lambda u: obj.hvp(lam, u, "drop"), lam, power_iters, seed)
    dominates = gamma > ratio * top
    if dominates:
        warnings.warn(
            f"the Gamma surrogate ({hprime!r}: Gamma = {gamma:.3e}) dominates the spectrum of the rest of the total "
            f"Hessian (lambda_max ~ {top:.3e}): (delta I + H)^-1 ~ I / Gamma, so task-IF reduces to gradient "
            f"similarity. Use hprime='gamma_scaled:c' with c well below {top / gamma * parse_hprime(hprime)[1]:.2e}, "
            "or 'drop'", RuntimeWarning, stacklevel=2)
    return GammaCheck(gamma, top, dominates)


def checked_hvp(obj: MetaObjective, lam: Tensor, hprime: str) -> Callable[[Tensor], Tensor]:
    """u -> Hess F u with ``hprime``, after ``check_gamma`` for the Gamma modes (a drop-in for ``obj.hvp``)."""
    check_gamma(obj, lam, hprime)
    return lambda u: obj.hvp(lam, u, hprime)
