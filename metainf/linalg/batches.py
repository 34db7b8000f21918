"""Mini-batch total-Hessian operators over task subsets (for LiSSA).

For tasks B of the pool the sub-objective F_B(lam) = (1/|B|) sum_{k in B} tau_k L_O^k + (delta/2) ||lam||^2 is
built exactly as in ``metainf.train.train_stochastic``, so Hess F_B u is an unbiased estimate of Hess F u when B is
drawn uniformly. The inner solutions theta_k at lam are shared with the full objective (no re-solve).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from metainf.core.objective import MetaObjective


def task_batch_hvp(obj: MetaObjective, lam: Tensor, hprime: str = "exact") -> Callable[[Tensor, Sequence[int]], Tensor]:
    """(u, idx) -> Hess F_B u for B = idx (``hprime`` as in ``MetaObjective.hvp``)."""
    return lambda u, idx: obj.subset(lam, idx).hvp(lam, u, hprime)
