"""Removal, editing and accuracy (E1, E2): the objective without a group of units, its retraining or its
influence edit, and the meta-test accuracy."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from metainf.core.objective import MetaObjective
from metainf.influence import InfluenceConfig, edit_instances, edit_tasks
from metainf.metrics import mean_ci95
from metainf.train import train_converged


def weights_without(obj: MetaObjective, kind: str, mask: np.ndarray) -> MetaObjective:
    """The objective with every unit of ``kind`` where ``mask`` is True removed (weight 0, no re-normalisation)."""
    m = torch.as_tensor(mask, device=obj.tau.device)
    if kind == "task":
        return obj.with_weights(tau=obj.tau * (~m).to(obj.tau.dtype))
    if kind == "support":
        return obj.with_weights(ws=obj.tasks.ws * (~m).to(obj.tasks.ws.dtype))
    return obj.with_weights(wq=obj.tasks.wq * (~m).to(obj.tasks.wq.dtype))


def most_harmful(scores: Tensor, fraction: float) -> np.ndarray:
    """Boolean mask of the ``round(fraction * n)`` lowest scores (most harmful first; ties by position)."""
    flat = scores.detach().cpu().numpy().ravel()
    n = int(round(fraction * flat.size))
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(flat, kind="stable")[:n]] = True
    return mask.reshape(tuple(scores.shape))


def accuracy(test_obj: MetaObjective, lam: Tensor) -> tuple[float, float]:
    """Meta-test accuracy: mean over test tasks and the half-width of its 95% interval."""
    return mean_ci95(test_obj.accuracy(lam))


def retrain_without(obj: MetaObjective, lam_star: Tensor, kind: str, mask: np.ndarray,
                    cfg: dict) -> tuple[Tensor, float]:
    """Group removal: re-minimise F without the masked units from lam* (warm start); returns (lam, seconds)."""
    t0 = time.perf_counter()
    res = train_converged(weights_without(obj, kind, mask), lam_star, tol=cfg["tol"], max_iter=cfg["max_iter"])
    return res.lam, time.perf_counter() - t0


def edit_without(obj: MetaObjective, lam_star: Tensor, kind: str, mask: np.ndarray) -> tuple[Tensor, float]:
    """Model editing by influence: lam* + H_F^-1 (sum of the removed units' d grad F / d weight); (lam, seconds)."""
    t0 = time.perf_counter()
    icfg = InfluenceConfig(tol=1e-8, max_iter=2000)
    m = torch.as_tensor(mask, device=lam_star.device)
    if kind == "task":
        lam = edit_tasks(obj, lam_star, torch.nonzero(m).flatten().tolist(), icfg)
    else:
        es = m if kind == "support" else torch.zeros_like(obj.tasks.ws, dtype=torch.bool)
        eq = m if kind == "query" else torch.zeros_like(obj.tasks.wq, dtype=torch.bool)
        lam = edit_instances(obj, lam_star, es, eq, icfg)
    return lam, time.perf_counter() - t0
