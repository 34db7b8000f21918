"""Meta-training: converged full-batch training (for influence and leave-one-out ground truth) and
stochastic SGD/Adam meta-training that records its trajectory (for trajectory-based baselines)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from metainf.objective import MetaObjective, check_finite


@dataclass
class ConvergedResult:
    lam: Tensor
    grad_norm: float
    iterations: int
    converged: bool


def train_converged(obj: MetaObjective, lam0: Tensor, tol: float = 1e-8, max_iter: int = 500,
                    history: int = 20) -> ConvergedResult:
    """Minimise F by full-batch L-BFGS (strong Wolfe) until ||grad F||_2 <= tol, starting from ``lam0``."""
    lam = lam0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([lam], lr=1.0, max_iter=max_iter, history_size=history, tolerance_grad=0.0,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")
    count = {"n": 0}

    def closure() -> Tensor:
        count["n"] += 1
        with torch.no_grad():
            value, g = obj.value_and_grad(lam.detach())
        check_finite(value, "the meta-objective")
        lam.grad = g
        if float(g.norm()) <= tol:  # stop the inner L-BFGS loop early: zero gradient ends it
            lam.grad = torch.zeros_like(g)
        return value

    for _ in range(max(1, max_iter // 50)):
        opt.step(closure)
        gn = float(obj.grad(lam.detach()).norm())
        if gn <= tol:
            break
    lam_out = lam.detach()
    gn = float(obj.grad(lam_out).norm())
    return ConvergedResult(lam_out, gn, count["n"], gn <= tol)


@dataclass
class Trajectory:
    """lam at recorded steps, the task schedule (task indices per step) and the learning rate of every step."""

    steps: list[int] = field(default_factory=list)
    lams: list[Tensor] = field(default_factory=list)
    schedule: list[list[int]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)


def train_stochastic(obj: MetaObjective, lam0: Tensor, steps: int, batch: int, lr: float, optimizer: str = "sgd",
                     seed: int = 0, record_every: int = 1) -> tuple[Tensor, Trajectory]:
    """Meta-training with task mini-batches (epoch-wise permutations from ``numpy.random.default_rng(seed)``).

    Step t: lam <- lam - lr * (1/|B_t|) sum_{k in B_t} tau_k g_k(lam) - lr * delta * lam (SGD), or Adam on the
    same gradient. ``record_every`` controls which lam_t are stored (lam_0 and the final lam always are).
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    rng = np.random.default_rng(seed)
    m = obj.n_tasks
    order: list[int] = []
    lam = lam0.detach().clone()
    traj = Trajectory(steps=[0], lams=[lam.clone()])
    m1 = torch.zeros_like(lam)
    m2 = torch.zeros_like(lam)
    for t in range(steps):
        if len(order) < batch:
            order += rng.permutation(m).tolist()
        idx, order = order[:batch], order[batch:]
        sub = MetaObjective(obj.model, obj.inner, type(obj.tasks)(*(x[idx] for x in obj.tasks)), obj.delta,
                            obj.tau[idx], obj.chunk)
        g = check_finite(sub.grad(lam), "a meta-gradient")
        if optimizer == "sgd":
            lam = lam - lr * g
        else:
            m1 = 0.9 * m1 + 0.1 * g
            m2 = 0.999 * m2 + 0.001 * g * g
            lam = lam - lr * (m1 / (1 - 0.9 ** (t + 1))) / ((m2 / (1 - 0.999 ** (t + 1))).sqrt() + 1e-8)
        traj.schedule.append(idx)
        traj.lrs.append(lr)
        if (t + 1) % record_every == 0 or t + 1 == steps:
            traj.steps.append(t + 1)
            traj.lams.append(lam.clone())
    return lam, traj
