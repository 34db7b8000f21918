"""Resolving an experiment's config (scale, per-dataset section, ``--set`` overrides), validating it against the
config schema, and the run key (its hash).

The schema of a config is its experiment's own default config plus :data:`RULES`:

- a key must exist in the default config (dotted for nested dicts); anything else is an unknown key;
- a value has the type of its default (an integer where the default is an integer, a number where it is a float,
  a list where it is a list, ...; ``None`` defaults take anything);
- a key named in :data:`RULES` (looked up by its last dotted part, at any depth) must also lie in that rule's
  range or choices.

:func:`resolve_config` checks every key and raises one :class:`~experiments.base.ConfigError` that lists every
bad key with what was expected, before anything runs.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from experiments.base import ConfigError, Experiment

BY_DATASET = "by_dataset"


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are JSON when they parse as JSON (``3``, ``0.1``, ``true``, ``[1,2]``)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides[key.strip()] = value
    return overrides


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


@dataclass(frozen=True)
class Rule:
    """The range or choices of one config key, checked on the value or on every element of a list value."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        """``">= 1"``, ``"> 0"``, ``"in [0, 1]"`` or ``"one of 'sgd', 'adam'"``."""
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"<= {self.high:g}"

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (a scalar, or a list of scalars) lies in the range or among the choices."""
        for item in value if isinstance(value, list) else [value]:
            if self.choices:
                if item not in self.choices:
                    return False
                continue
            if not _is_number(item):
                return False
            if self.low is not None and (item <= self.low if self.open_low else item < self.low):
                return False
            if self.high is not None and item > self.high:
                return False
        return True


_COUNT, _POSITIVE, _NON_NEGATIVE, _FRACTION = Rule(low=1), Rule(low=0, open_low=True), Rule(low=0), Rule(0, 1)
#: ranges and choices by key name (the last part of a dotted key), at any depth of any experiment's config
RULES: dict[str, Rule] = {
    "n_way": Rule(low=2), "image_size": Rule(low=4), "newton_steps": Rule(low=0),
    **dict.fromkeys(("k_shot", "q_query", "n_train_tasks", "n_eval_tasks", "n_test_tasks", "hidden", "hidden_grid",
                     "width", "steps", "outer_steps", "outer_batch", "meta_batch", "inner_steps", "test_inner_steps",
                     "max_iter", "cg_iters", "cg_max_iter", "newton_cg_iters", "power_iters", "loo_batch",
                     "loo_sample", "chunk", "neumann_depths", "depth", "batch_size", "repeats", "tasks_grid"), _COUNT),
    **dict.fromkeys(("lr", "outer_lr", "inner_lr", "meta_lr", "beta", "tol", "solve_tol"), _POSITIVE),
    **dict.fromkeys(("delta", "damping"), _NON_NEGATIVE),
    **dict.fromkeys(("fraction", "flip_rate", "remove_fraction", "removal_fraction", "loo_margin"), _FRACTION),
    "outer_optimizer": Rule(choices=("sgd", "adam")),
    "model": Rule(choices=("mlp", "conv4")),
    "kind": Rule(choices=("tasks", "instances")),
    "where": Rule(choices=("support", "query", "both")),
    "kinds": Rule(choices=("task", "support", "query")),
    "inners": Rule(choices=("unrolled", "proximal")),
    "inner": Rule(choices=("unrolled", "proximal")),
    "rotations": Rule(choices=(0, 90, 180, 270)),
}


#: list keys that must hold at least one entry: an empty one leaves a run with nothing to compute or crashes it
NON_EMPTY: frozenset[str] = frozenset({"inners", "kinds", "tasks_grid", "hidden_grid", "curvatures", "inner_solvers",
                                       "neumann_depths"})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a finite number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, list):
        return "a list" + (f" of {_type_name(default[0]).removeprefix('a ').removeprefix('an ')}s"
                           if default and not isinstance(default[0], (list, dict)) else "")
    return "a JSON object" if isinstance(default, dict) else "a value"


def _has_type(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return _is_number(value)
    if isinstance(default, list):
        return isinstance(value, list) and (not default or isinstance(default[0], (list, dict))
                                            or all(_has_type(v, default[0]) for v in value))
    return isinstance(value, type(default))


def config_problems(default: Any, value: Any, path: str = "") -> Iterator[str]:
    """Every way ``value`` breaks the schema of ``default`` (same type, known keys, :data:`RULES` ranges), one
    ``"key: expected ..., got ..."`` string each."""
    name = path.rsplit(".", 1)[-1]
    rule = RULES.get(name)
    if not _has_type(value, default):
        expected = _type_name(default) + (f" {rule.describe()}" if rule else "")
        yield f"{path}: expected {expected}, got {value!r}"
        return
    if name in NON_EMPTY and isinstance(value, list) and not value:
        yield f"{path}: expected a non-empty list, got []"
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(default, dict) and default and key not in default:
                yield f"{path}.{key}: unknown key" if path else f"{key}: unknown key"
                continue
            inner = default.get(key) if isinstance(default, dict) else None
            yield from config_problems(inner, item, f"{path}.{key}" if path else str(key))
        return
    if rule is not None and not (isinstance(value, list) and value and isinstance(value[0], (list, dict))) \
            and value is not None and not rule.accepts(value):
        sep = ", each" if isinstance(value, list) else ""
        yield f"{path}: expected {_type_name(default) if default is not None else 'a value'}{sep} {rule.describe()}, " \
              f"got {value!r}"


def resolve_config(experiment: Experiment, scale: str, dataset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The config that runs: ``configs[scale]`` merged with its ``by_dataset[dataset]`` section, then overrides.

    The result is checked against the schema (module docstring): an override must name an existing key (dotted
    for nested dicts) and every value must have its default's type and lie in its :data:`RULES` range. All
    problems are reported together in one :class:`ConfigError`.
    """
    if scale not in experiment.configs:
        raise ConfigError(f"{experiment.id} has no {scale!r} config; scales: {sorted(experiment.configs)}")
    config = copy.deepcopy(dict(experiment.configs[scale]))
    per_dataset = config.pop(BY_DATASET, {})
    _merge(config, per_dataset.get(dataset, {}))
    default = copy.deepcopy(config)
    problems: list[str] = []
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                break
        if not isinstance(node, dict) or leaf not in node:
            close = difflib.get_close_matches(dotted, list(_dotted_keys(default)), n=1)
            problems.append(f"{dotted}: unknown key" + (f" (did you mean {close[0]}?)" if close else ""))
            continue
        node[leaf] = value
    problems += config_problems(default, config)
    if problems:
        raise ConfigError(f"bad {experiment.id} {scale} config on {dataset}: " + "; ".join(problems))
    return config


def _dotted_keys(tree: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        yield f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _dotted_keys(value, f"{prefix}{key}.")


def run_key(exp_id: str, dataset: str, scale: str, config: Mapping[str, Any], methods: Sequence[str]) -> str:
    """A short stable hash of everything that determines a run's numbers (seeds excepted: they key sub-folders)."""
    blob = json.dumps(
        {"exp": exp_id, "dataset": dataset, "scale": scale, "config": config, "methods": list(methods)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
