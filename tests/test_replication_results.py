"""Result files, aggregation, config resolution and paper targets of the replication harness."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.base import ConfigError, Experiment
from replication import paper_targets, results
from replication.config import parse_overrides, resolve_config, run_key


def test_floats_are_rounded_and_arrays_become_lists() -> None:
    data = {"a": 0.123456789, "b": np.float32(2.5), "c": torch.tensor([1.0, 2.0]), "d": np.int64(3),
            "e": float("nan"), "f": -float("inf"), "g": (1, True, None)}
    assert results.to_jsonable(data) == {"a": 0.123457, "b": 2.5, "c": [1.0, 2.0], "d": 3, "e": "nan", "f": "-inf",
                                         "g": [1, True, None]}
    assert results.dumps({"b": 1, "a": 1.0000001}) == results.dumps({"a": 1.0, "b": 1})
    with pytest.raises(TypeError, match="object"):
        results.to_jsonable({"x": object()})


def test_payload_shape_is_checked() -> None:
    with pytest.raises(TypeError, match="unexpected payload keys"):
        results.normalize_payload({"metric": {}}, "E0")
    with pytest.raises(TypeError, match="list of row dicts"):
        results.normalize_payload({"tables": {"t": {"a": 1}}}, "E0")
    assert results.normalize_payload({"metrics": {"m": 1}}, "E0") == {"metrics": {"m": 1}, "tables": {}, "series": {}}


def test_aggregate_pools_numeric_leaves_and_tables() -> None:
    def payload(acc: float, label: str = "task_if") -> dict:
        return {"metrics": {"task_if": {"acc": acc, "name": "x"}, "flag": True},
                "tables": {"t": [{"method": label, "acc": acc}]}, "series": {}}

    pooled = results.aggregate({"0": payload(0.5), "1": payload(0.7)})
    assert pooled["metrics"]["task_if.acc"]["mean"] == pytest.approx(0.6)
    assert pooled["metrics"]["task_if.acc"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert set(pooled["metrics"]) == {"task_if.acc"}
    assert pooled["tables"]["t"][0]["method"] == "task_if"
    assert pooled["tables"]["t"][0]["acc"]["n"] == 2
    assert results.aggregate({"0": payload(0.5), "1": payload(0.7, "tracin")})["tables"]["t"] is None


def test_write_json_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "E0" / "omniglot-smoke.json"
    results.write_json(path, {"v": 1})

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        results.write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in path.parent.iterdir()] == ["omniglot-smoke.json"]


def _experiment() -> Experiment:
    return Experiment(
        id="E0", title="t", datasets=("omniglot", "mnist"),
        configs={"smoke": {"ways": 5, "inner": {"steps": 1, "lr": 0.4}, "by_dataset": {"mnist": {"ways": 2}}}},
        run=lambda ctx: {}, seeds={"smoke": (0,)},
    )


def test_config_resolution_merges_dataset_section_and_overrides() -> None:
    experiment = _experiment()
    overrides = parse_overrides(["inner.steps=3", "ways=[1, 2]", "inner.lr=fast"])
    assert overrides == {"inner.steps": 3, "ways": [1, 2], "inner.lr": "fast"}
    assert resolve_config(experiment, "smoke", "mnist", {}) == {"ways": 2, "inner": {"steps": 1, "lr": 0.4}}
    config = resolve_config(experiment, "smoke", "omniglot", parse_overrides(["inner.steps=3", "inner.lr=0.1"]))
    assert config == {"ways": 5, "inner": {"steps": 3, "lr": 0.1}}
    assert experiment.configs["smoke"]["inner"]["steps"] == 1  # the experiment's own config is untouched
    # values of another type than the default's, or out of range, are reported together
    with pytest.raises(ConfigError) as info:
        resolve_config(experiment, "smoke", "omniglot", overrides)
    assert "ways: expected an integer, got [1, 2]" in str(info.value)
    assert "inner.lr: expected a finite number > 0, got 'fast'" in str(info.value)
    for bad in ({"inner.nope": 1}, {"ways.x": 1}, {"nope": 1}):
        with pytest.raises(ConfigError, match="unknown key"):
            resolve_config(experiment, "smoke", "omniglot", bad)
    with pytest.raises(ConfigError, match="no 'paper' config"):
        resolve_config(experiment, "paper", "omniglot", {})


def test_run_key_depends_on_everything_that_sets_the_numbers() -> None:
    base = run_key("E0", "omniglot", "smoke", {"ways": 5}, ["task_if"])
    assert base == run_key("E0", "omniglot", "smoke", {"ways": 5}, ["task_if"])
    others = {run_key("E1", "omniglot", "smoke", {"ways": 5}, ["task_if"]),
              run_key("E0", "mnist", "smoke", {"ways": 5}, ["task_if"]),
              run_key("E0", "omniglot", "quick", {"ways": 5}, ["task_if"]),
              run_key("E0", "omniglot", "smoke", {"ways": 6}, ["task_if"]),
              run_key("E0", "omniglot", "smoke", {"ways": 5}, ["tracin"])}
    assert base not in others and len(others) == 5


def test_experiment_rejects_unknown_datasets_and_scales() -> None:
    with pytest.raises(ValueError, match="unknown datasets"):
        Experiment(id="E0", title="t", datasets=("cifar",), configs={}, run=lambda c: {})
    with pytest.raises(ValueError, match="unknown scale"):
        Experiment(id="E0", title="t", datasets=(), configs={"huge": {}}, run=lambda c: {})


def test_paper_targets_hold_the_main_table() -> None:
    task_if = paper_targets.PAPER_TARGETS["main/task/task_if"]
    assert task_if.values["omniglot"] == {"acc": 0.7804, "runtime_s": 65.69}
    assert task_if.values["miniimagenet"] == {"acc": 0.2668, "runtime_s": 74.63}
    main_rows = [k for k in paper_targets.PAPER_TARGETS if k.startswith("main/")]
    assert len(main_rows) == 10
    assert set(paper_targets.targets_for("E2", "mnist")) == {"detection/influence", "detection/random"}
    assert paper_targets.targets_for("E1", "mnist") == {}
