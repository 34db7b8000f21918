"""Attribution methods behind one interface (:mod:`metainf.methods.base`) and a registry for new ones."""

from metainf.core.problem import UNIT_KINDS, AttributionProblem
from metainf.methods.base import AttributionMethod, Scores
from metainf.methods.registry import UnknownMethodError, available_methods, get_method, run_method

__all__ = ["UNIT_KINDS", "AttributionMethod", "AttributionProblem", "Scores", "UnknownMethodError",
           "available_methods", "get_method", "run_method"]
