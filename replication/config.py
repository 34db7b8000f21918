"""Resolving an experiment's config: scale, per-dataset section, ``--set`` overrides; and the run key (its hash)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
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


def resolve_config(experiment: Experiment, scale: str, dataset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The config that runs: ``configs[scale]`` merged with its ``by_dataset[dataset]`` section, then overrides.

    An override must name an existing key (dotted for nested dicts); a typo is a :class:`ConfigError`.
    """
    if scale not in experiment.configs:
        raise ConfigError(f"{experiment.id} has no {scale!r} config; scales: {sorted(experiment.configs)}")
    config = copy.deepcopy(dict(experiment.configs[scale]))
    per_dataset = config.pop(BY_DATASET, {})
    _merge(config, per_dataset.get(dataset, {}))
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                break
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f"--set {dotted}: no such key in the {experiment.id} {scale} config")
        node[leaf] = value
    return config


def run_key(exp_id: str, dataset: str, scale: str, config: Mapping[str, Any], methods: Sequence[str]) -> str:
    """A short stable hash of everything that determines a run's numbers (seeds excepted: they key sub-folders)."""
    blob = json.dumps(
        {"exp": exp_id, "dataset": dataset, "scale": scale, "config": config, "methods": list(methods)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
