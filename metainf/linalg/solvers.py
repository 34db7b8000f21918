"""Inverse total-Hessian-vector products (delta I + H)^-1 b behind one interface.

``solve(hvp, b, method, damping)`` with ``hvp(u) = H u``. Methods: ``dense`` (H formed column by column,
eigen-checked, solved exactly), ``cg`` (conjugate gradient to a relative residual ``tol``), and the paper's
truncated series ``neumann`` / ``lissa`` (``metainf.linalg.neumann``; depth J = ``max_iter`` terms). An indefinite
(damped) Hessian raises ``IndefiniteHessianError``; a run that does not reach ``tol`` raises
``SolverNotConvergedError`` (Neumann/LiSSA with ``strict=False`` warn instead and return ``converged=False``).
Every message says what to change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from metainf.linalg.cg import cg
from metainf.linalg.neumann import lissa_solve, neumann_solve
from metainf.linalg.types import IndefiniteHessianError, SolveInfo


def solve(hvp: Callable[[Tensor], Tensor], b: Tensor, method: str = "cg", damping: float = 0.0, tol: float = 1e-10,
          max_iter: int = 500, **options: Any) -> tuple[Tensor, SolveInfo]:
    """x = (damping I + H)^-1 b.

    ``options`` (keyword only) go to the series solvers of ``metainf.linalg.neumann``: for ``neumann``
    ``eta`` (default 1 / power-iteration lambda_max), ``power_iters``, ``seed``, ``strict``; for ``lissa`` also the
    required ``batch_hvp(u, idx)`` (the mini-batch estimate of H u over units ``idx``, e.g.
    ``metainf.linalg.batches.task_batch_hvp``), ``n_units``, ``batch_size`` and ``repeats``.
    """
    op = (lambda u: hvp(u) + damping * u) if damping else hvp
    if method in ("neumann", "lissa"):
        if method == "neumann":
            return neumann_solve(op, b, max_iter, tol, **options)
        if "batch_hvp" not in options:
            raise TypeError("solver 'lissa' needs batch_hvp=(u, idx) -> mini-batch H u and n_units, batch_size, "
                            "e.g. metainf.linalg.batches.task_batch_hvp(obj, lam, hprime)")
        batch_hvp = options.pop("batch_hvp")
        return lissa_solve(lambda u, idx: batch_hvp(u, idx) + damping * u, op, b, depth=max_iter, tol=tol, **options)
    if options:
        raise TypeError(f"solver {method!r} takes no options, got {sorted(options)}")
    if method == "dense":
        eye = torch.eye(b.numel(), dtype=b.dtype, device=b.device)
        h = torch.stack([op(eye[i]) for i in range(b.numel())], dim=1)
        h = 0.5 * (h + h.T)
        evals, evecs = torch.linalg.eigh(h)
        lo = float(evals[0])
        if lo <= 0:
            raise IndefiniteHessianError(
                f"the damped total Hessian is indefinite (smallest eigenvalue {lo:.3e}): raise the damping above "
                f"{-lo:.3e} (e.g. --damping) or the outer L2 delta, or train closer to a minimum")
        x = evecs @ ((evecs.T @ b) / evals)
        res = float((op(x) - b).norm() / b.norm().clamp_min(1e-300))
        return x, SolveInfo("dense", b.numel(), res, lo)
    if method == "cg":
        return cg(op, b, tol=tol, max_iter=max_iter, strict=True)
    raise ValueError(f"unknown solver {method!r}: choose 'dense', 'cg', 'neumann' or 'lissa'")
