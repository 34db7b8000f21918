"""Mini-batch total-Hessian operators over task subsets (for LiSSA).

For tasks B of the pool the sub-objective F_B(lam) = (1/|B|) sum_{k in B} tau_k L_O^k + (delta/2) ||lam||^2 is
built exactly as in ``metainf.train.train_stochastic``, so Hess F_B u is an unbiased estimate of Hess F u when B is
drawn uniformly. The inner solutions theta_k at lam are shared with the full objective (no re-solve).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from metainf.core.bilevel import TaskData
from metainf.core.objective import MetaObjective


def sub_objective(obj: MetaObjective, lam: Tensor, idx: Sequence[int]) -> MetaObjective:
    """F_B for tasks ``idx``, with its inner-state cache at ``lam`` taken from ``obj``."""
    idx = list(idx)
    state = obj.state_at(lam)
    sub = MetaObjective(obj.model, obj.inner, TaskData(*(x[idx] for x in obj.tasks)), obj.delta, obj.tau[idx],
                        obj.chunk)
    sub._state_lam, sub._state = obj._state_lam, state[idx]
    return sub


def task_batch_hvp(obj: MetaObjective, lam: Tensor, hprime: str = "exact") -> Callable[[Tensor, Sequence[int]], Tensor]:
    """(u, idx) -> Hess F_B u for B = idx (``hprime`` as in ``MetaObjective.hvp``)."""
    return lambda u, idx: sub_objective(obj, lam, idx).hvp(lam, u, hprime)
