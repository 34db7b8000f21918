"""The paper-scale estimate before a run: printed, a warning with exit 2 on a CPU unless ``--yes``, ``--estimate-only``
exits 0, the estimate lands in the result's provenance, and its arithmetic (step seconds x steps x seeds)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from experiments import registry
from experiments.base import Experiment, RunContext, Workload
from experiments.e1_removal import EXPERIMENT as E1
from replication import estimate, results
from replication.cli import main
from replication.config import resolve_config
from replication.detail import render_page

pytestmark = pytest.mark.usefixtures("one_thread")

#: a Conv-4 small enough to measure in well under a second (2 channels wide, 16 px)
TINY = {"model": "conv4", "width": 2, "norm": "group", "activation": "relu", "pool": "max", "zero_head": True,
        "n_way": 2, "k_shot": 1, "q_query": 1, "image_size": 16, "dtype": "float32", "delta": 0.0, "chunk": 4,
        "unrolled": {"steps": 1, "lr": 0.4}}


def _run(ctx: RunContext) -> dict:
    return {"metrics": {"value": {"x": float(ctx.config["steps"])}}}


def _dummy(hook: bool, exp_id: str = "E9") -> Experiment:
    config = {"steps": 7}
    return Experiment(id=exp_id, title="tiny", datasets=("omniglot",), configs={"smoke": config, "paper": config},
                      run=_run, default_methods=("random",), seeds={"smoke": (0,), "paper": (0, 1)},
                      train_steps=(lambda cfg, methods: (Workload("E9 conv4", TINY, cfg["steps"], 3, "unrolled", 5),))
                      if hook else None)


@pytest.fixture
def dummy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setitem(registry.EXPERIMENTS, "E9", _dummy(hook=True))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return tmp_path / "out"


def test_paper_scale_on_cpu_warns_and_exits_2_without_yes(dummy: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "E9", "--scale", "paper", "--out", str(dummy)]) == 2
    err = capsys.readouterr().err
    assert "warning: --scale paper is the GPU scale" in err and "E9 conv4: Conv-4" in err
    assert err.strip().splitlines()[-1].endswith("add --yes to run the paper scale on this CPU anyway")
    assert not (dummy / "E9").exists() or not any((dummy / "E9").glob("*.json"))


def test_estimate_only_prints_and_exits_0(dummy: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "E9", "--scale", "paper", "--estimate-only", "--out", str(dummy)]) == 0
    out = capsys.readouterr().out
    assert "estimate for E9 on omniglot, 2 seed(s), device cpu, dtype float32:" in out
    assert "7 steps per seed" in out and "one step of 3 tasks" in out
    assert not any(dummy.rglob("*.json"))


def test_yes_runs_and_records_the_estimate(dummy: Path) -> None:
    assert main(["run", "E9", "--scale", "paper", "--yes", "--out", str(dummy)]) == 0
    est = results.read_json(dummy / "E9" / "omniglot-paper.json")["provenance"]["estimate"]
    (part,) = est["parts"]
    assert part["step_s"] > 0 and part["peak_mb"] > 0 and est["measure_s"] > 0
    # 4 convs of width 2 (1 channel in, then 2) with biases, 4 GroupNorms (weight, bias), a 2 -> 2 head
    assert part["n_params"] == (9 * 2 + 2) + 3 * (9 * 4 + 2) + 4 * 2 * 2 + (2 * 2 + 2)
    assert part["hours"] == pytest.approx(part["step_s"] * 7 * 2 / 3600, rel=1e-4)  # JSON keeps 6 digits
    assert part["trajectory_mb"] == pytest.approx(5 * part["n_params"] * 4 / 2**20, rel=1e-4)
    assert est["hours"] == pytest.approx(part["hours"], rel=1e-4) and est["seeds"] == 2
    path = dummy / "E9" / "omniglot-paper.json"
    page = render_page("E9", "tiny", ["omniglot"], {"omniglot": [(path, results.read_json(path))]}, dummy,
                       dummy / "E9.md", dummy / "R.md")
    assert "Estimated before the run on cpu (`provenance.estimate`" in page


def test_smaller_scales_run_without_an_estimate(dummy: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "E9", "--scale", "smoke", "--out", str(dummy)]) == 0
    assert "estimate" not in capsys.readouterr().out
    assert "estimate" not in results.read_json(dummy / "E9" / "omniglot-smoke.json")["provenance"]


def test_experiment_without_the_hook_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(registry.EXPERIMENTS, "E9", _dummy(hook=False))
    assert main(["run", "E9", "--scale", "paper", "--estimate-only", "--out", str(tmp_path)]) == 0
    assert re.search(r"estimate for E9 on \w+: no estimate available: ", capsys.readouterr().out)


def test_e1_paper_estimate_counts_every_retraining(monkeypatch: pytest.MonkeyPatch) -> None:
    """E1's steps per seed: training, the oracle, one retraining per method (tasks) and per instance method on
    support and query, 5,000 steps each; the hours are the (stubbed) step time x steps x seeds."""
    calls = []

    def fake_step(workload: Workload, dataset: str, device: torch.device, dtype: torch.dtype) -> estimate.StepCost:
        calls.append((workload.config["width"], workload.config["image_size"], workload.batch, dtype))
        return estimate.StepCost(0.5, 100.0, "process RSS", 1000)

    monkeypatch.setattr(estimate, "measure_step", fake_step)
    monkeypatch.setattr(estimate, "_MEASURED", {})
    methods = ("task_if_truncated", "tracin_cp", "random")
    cfg = resolve_config(E1, "paper", "miniimagenet", {})
    est = estimate.estimate_run(E1, "miniimagenet", cfg, methods, 3, torch.device("cpu"), None)
    (part,) = est.parts
    runs = 1 + 1 + len(methods) + 2 * 1  # full, oracle, task retrainings, support and query for task_if_truncated
    assert part.steps_per_seed == runs * 5000 and part.batch == 32
    assert est.hours == pytest.approx(0.5 * runs * 5000 * 3 / 3600)
    assert part.trajectory_mb == pytest.approx(2 * 5001 * 1000 * 4 / 2**20)
    assert calls == [(32, 84, 32, torch.float32)]
    estimate.estimate_run(E1, "miniimagenet", cfg, methods, 3, torch.device("cpu"), None)
    assert len(calls) == 1  # measured once per model, batch and device


def test_all_estimates_every_run_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    """``all --scale paper``: every run's estimate (or why there is none) before anything runs."""
    monkeypatch.setattr(registry, "EXPERIMENTS", {"E8": _dummy(hook=False, exp_id="E8"), "E9": _dummy(hook=True)})
    common = ["all", "--scale", "paper", "--out", str(tmp_path / "out"), "--report", str(tmp_path / "R.md")]
    assert main([*common, "--estimate-only"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"estimate for E8 on \w+: no estimate available: ", out)
    assert "E9 conv4: Conv-4" in out and "all 2 runs:" in out
    assert main(common) == 2
    assert not (tmp_path / "out").exists()  # refused or only estimated: no empty output folders left behind
    assert "add --yes" in capsys.readouterr().err
    assert not (tmp_path / "R.md").exists() and not any((tmp_path / "out").rglob("*.json"))


@pytest.mark.parametrize(("exp_id", "runs", "extra"), [
    # training, then removal retrainings: task_if_truncated, tracin_cp, random on tasks; task_if_truncated on query
    ("E2", 1 + 3 + 1, 0),
    # training, 2 estimates x 2 seeds x 100 LDS subsets; warm-start: 100 paired lanes + the full one + 2 x 8
    # controls, 200 steps each
    ("E3", 1 + 2 * 2 * 100, (100 + 1 + 2 * 8) * 200),
    ("E6", 1, 0),  # one recorded training
])
def test_conv4_parts_count_their_steps(exp_id: str, runs: int, extra: int) -> None:
    experiment = registry.EXPERIMENTS[exp_id]
    cfg = resolve_config(experiment, "paper", "omniglot", {})
    (w,) = experiment.train_steps(cfg, experiment.default_methods)
    assert w.steps == runs * 5000 + extra and w.batch == 32
    assert (w.config["image_size"], w.config["width"]) == (28, 64)
    assert experiment.train_steps(resolve_config(experiment, "paper", "mnist", {}), experiment.default_methods) == ()
