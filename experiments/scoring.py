"""Scoring: which units an experiment scores, and every method's scores on them."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from metainf.core.objective import MetaObjective
from metainf.linalg.types import IndefiniteHessianError, SolverNotConvergedError
from metainf.methods import AttributionProblem, Scores, get_method, run_method
from metainf.runtime.interrupts import reraise_interruption

Unit = tuple[int, int | None]

#: errors a method may legitimately raise on a problem it cannot handle; reported, not fatal
METHOD_ERRORS = (IndefiniteHessianError, SolverNotConvergedError, NotImplementedError)


def choose_units(obj: MetaObjective, kind: str, n: int, seed: int) -> list[Unit]:
    """The first ``n`` tasks, or ``n`` (task, point) pairs drawn without replacement with ``default_rng(seed)``."""
    m = obj.n_tasks
    if kind == "task":
        return [(k, None) for k in range(min(n, m))]
    width = obj.tasks.ws.shape[1] if kind == "support" else obj.tasks.wq.shape[1]
    flat = np.random.default_rng(seed).choice(m * width, size=min(n, m * width), replace=False)
    return [(int(i) // width, int(i) % width) for i in sorted(flat)]


def part_methods(run_methods: tuple[str, ...], part: list[str] | tuple[str, ...],
                 defaults: tuple[str, ...]) -> tuple[str, ...]:
    """The methods one part of an experiment runs: those of the run (``--method`` or the experiment's
    ``defaults``) that the part names, plus any the user added beyond the defaults (a plug-in runs in every part)."""
    return tuple(m for m in run_methods if m in part or m not in defaults)


def metric_key(method: str) -> str:
    """A method name usable as a metric key (no dots: ``pkg.mod:Cls`` -> ``pkg_mod:Cls``)."""
    return method.replace(".", "_")


def unit_values(scores: Tensor, units: list[Unit]) -> np.ndarray:
    """Pick the units' entries out of a score array shaped like ``problem.shape(kind)``."""
    s = scores.detach().cpu().numpy()
    return np.array([s[k] if j is None else s[k, j] for k, j in units])


def score_all(methods: tuple[str, ...], problem: AttributionProblem, kinds: tuple[str, ...],
              options: dict[str, dict] | None = None) -> tuple[dict[str, dict[str, Scores]], dict[str, str]]:
    """Run every method on every unit kind it supports. A method that cannot handle the problem
    (:data:`METHOD_ERRORS`), or that raises anything else (``"failed: ..."``), is reported in the second dict,
    ``"<method>/<kind>" -> error``; the other methods' scores are kept."""
    scores: dict[str, dict[str, Scores]] = {}
    skipped: dict[str, str] = {}
    for name in methods:
        method = get_method(name, **(options or {}).get(name, {}))
        for kind in kinds:
            if kind not in method.kinds:
                continue
            try:
                scores.setdefault(name, {})[kind] = run_method(method, problem, kind)
            except Exception as error:  # noqa: BLE001 - a failing method is recorded; the others' results are kept
                reraise_interruption(error)
                known = isinstance(error, METHOD_ERRORS)
                skipped[f"{name}/{kind}"] = f"{'' if known else 'failed: '}{type(error).__name__}: {error}"
    return scores, skipped
