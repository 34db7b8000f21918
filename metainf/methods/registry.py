"""The method registry: built-in names, ``metainf.methods`` entry points, and ``module:Class`` references.

A new attribution method plugs into every experiment without touching this package, in either of two ways:

1. ``--method mypkg.mymodule:MyMethod`` (any importable class or factory implementing
   :class:`metainf.methods.base.AttributionMethod`);
2. an entry point in the group ``metainf.methods`` of the method's own distribution::

       [project.entry-points."metainf.methods"]
       my_method = "mypkg.mymodule:MyMethod"

The class is called with keyword options (``get_method(name, **options)``), so a method may take settings.
"""

from __future__ import annotations

import importlib
import time
from importlib.metadata import entry_points
from typing import Any

import torch

from metainf.core.problem import AttributionProblem, check_kind
from metainf.methods.base import AttributionMethod, Scores
from metainf.runtime.memory import PeakSampler

ENTRY_POINT_GROUP = "metainf.methods"

#: name -> "module:attribute" of the built-in methods. Modules that are not (yet) present are skipped.
BUILTIN: dict[str, str] = {
    "task_if": "metainf.methods.influence_methods:TaskIF",
    "task_if_fisher": "metainf.methods.influence_methods:TaskIFFisher",
    "task_if_nystrom": "metainf.methods.influence_methods:TaskIFNystrom",
    "task_if_truncated": "metainf.methods.influence_methods:TaskIFTruncated",
    "task_if_fast": "metainf.methods.influence_methods:TaskIFFast",
    "direct_if": "metainf.methods.influence_methods:DirectIF",
    "tracin": "metainf.methods.trajectory:TracIn",
    "tracin_cp": "metainf.methods.trajectory:TracInCP",
    "dvemb_exact": "metainf.methods.trajectory:DVEmbExact",
    "dvemb_fisher": "metainf.methods.trajectory:DVEmbFisher",
    "grad_dot": "metainf.methods.static:GradDot",
    "grad_cos": "metainf.methods.static:GradCos",
    "loss": "metainf.methods.static:LossValue",
    "random": "metainf.methods.static:Random",
    "ga_unlearn": "metainf.methods.static:GradientAscentUnlearning",
    "single_level_if": "metainf.methods.single_level:SingleLevelIF",
    "trak": "metainf.methods.trak:TRAK",
}


class UnknownMethodError(ValueError):
    """A method name that is neither built in, an entry point, nor an importable ``module:Class``."""


def _resolve(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as error:
        raise UnknownMethodError(f"{module_name} has no attribute {attr!r} (method reference {ref!r})") from error


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _builtin_importable(ref: str) -> bool:
    try:
        importlib.import_module(ref.partition(":")[0])
    except ModuleNotFoundError:
        return False
    return True


def available_methods() -> list[str]:
    """Names usable with ``--method``: built-ins whose module is present, plus installed entry points."""
    names = [n for n, ref in BUILTIN.items() if _builtin_importable(ref)]
    return sorted(set(names) | set(_entry_points()))


def get_method(name: str, **options: Any) -> AttributionMethod:
    """Instantiate the method called ``name`` (built-in, entry point, or ``module:Class``) with ``options``."""
    if name in BUILTIN:
        factory = _resolve(BUILTIN[name])
    elif name in (eps := _entry_points()):
        factory = eps[name].load()
    elif ":" in name:
        try:
            factory = _resolve(name)
        except ModuleNotFoundError as error:
            raise UnknownMethodError(f"cannot import the module of method {name!r}: {error}") from error
    else:
        raise UnknownMethodError(
            f"unknown method {name!r}; available: {', '.join(available_methods())}; "
            "or pass 'module:Class' / register an entry point in group 'metainf.methods'")
    method = factory(**options)
    missing = [a for a in ("name", "kinds", "needs_trajectory", "score") if not hasattr(method, a)]
    if missing:
        raise UnknownMethodError(f"method {name!r} does not implement the AttributionMethod interface: "
                                 f"missing {missing}")
    return method


def run_method(method: AttributionMethod, problem: AttributionProblem, kind: str) -> Scores:
    """Score units of ``kind`` with ``method``, recording wall time and peak resident memory."""
    check_kind(kind)
    if kind not in method.kinds:
        raise ValueError(f"method {method.name!r} does not score {kind} units (it scores {list(method.kinds)})")
    if method.needs_trajectory and problem.trajectory is None:
        raise ValueError(f"method {method.name!r} needs a recorded training trajectory; the problem has none")
    with PeakSampler() as sampler:
        t0 = time.perf_counter()
        values = method.score(problem, kind)
        seconds = time.perf_counter() - t0
    values = torch.as_tensor(values)
    if tuple(values.shape) != problem.shape(kind):
        raise ValueError(f"method {method.name!r} returned scores of shape {tuple(values.shape)} for {kind} "
                         f"units; expected {problem.shape(kind)}")
    if not torch.isfinite(values).all():
        raise ValueError(f"method {method.name!r} returned non-finite scores for {kind} units")
    return Scores(method.name, kind, values.detach(), seconds, sampler.peak)
