"""``metainf-repro leaderboard``: a plug-in method's row beside the baselines' (computed, then committed)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from replication import benchmark, leaderboard, results
from replication.cli import main

PLUGIN = "plugin_method:NormScore"  # tests/ is on sys.path under pytest (rootdir conftest-less import mode)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def test_plugin_gets_its_row_beside_the_baselines(tmp_path: Path, capsys) -> None:
    out = tmp_path / "board"
    argv = ["leaderboard", "--method", PLUGIN, "--scale", "smoke", "--experiment", "E2", "--baseline", "random",
            "--results", str(tmp_path / "nothing-committed"), "--out", str(out)]
    assert main(argv) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["benchmark_version"] == benchmark.BENCHMARK_VERSION
    (section,) = board["sections"]
    assert section["baselines"].startswith("computed in this run")
    rows = {r["method"]: r for r in section["rows"]}
    assert [r["method"] for r in section["rows"]][0] == PLUGIN and rows[PLUGIN]["source"] == "new"
    auc = rows[PLUGIN]["cells"]["E2 task_noise task_auc"]["mean"]
    assert 0.0 <= auc <= 1.0
    assert rows["random"]["source"] == "this run" and "E2 task_noise task_auc" in rows["random"]["cells"]
    run = results.read_json(out / "runs" / "E2" / "mnist-smoke.json")
    assert run["benchmark_version"] == benchmark.BENCHMARK_VERSION
    assert math.isclose(run["aggregate"]["metrics"][f"task_noise.{PLUGIN}.task_auc"]["mean"], auc)
    markdown = (out / "leaderboard.md").read_text()
    assert f"| **{PLUGIN}** (new) |" in markdown and "| random (this run) |" in markdown
    table = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert {r["method"] for r in table} == {PLUGIN, "random"}
    assert all(r["benchmark_version"] == benchmark.BENCHMARK_VERSION for r in table)

    # the run just made now serves as the committed baselines: only the new method runs, the rest is read
    committed = tmp_path / "committed"
    shutil.copytree(out / "runs", committed, ignore=shutil.ignore_patterns("figures", ".cache"))
    again = tmp_path / "board2"
    assert main([*argv[:-4], "--results", str(committed), "--out", str(again)]) == 0
    (section,) = json.loads((again / "leaderboard.json").read_text())["sections"]
    assert section["baselines"].startswith(f"committed {committed.as_posix()}/E2/mnist-smoke.json")
    assert section["note"] == ""  # the same config as the committed run
    rows = {r["method"]: r for r in section["rows"]}
    assert rows["random"]["source"] == "committed" and rows[PLUGIN]["source"] == "new"
    assert results.read_json(again / "runs" / "E2" / "mnist-smoke.json")["methods"] == [PLUGIN]
    assert math.isclose(rows[PLUGIN]["cells"]["E2 task_noise task_auc"]["mean"], auc)  # deterministic


def test_committed_rows_carry_t_intervals_over_seeds() -> None:
    """Baseline rows read from the committed quick E2 result: every method, CIs over its three seeds."""
    committed = results.read_json(Path(__file__).parent.parent / "results" / "E2" / "mnist-quick.json")
    cells = leaderboard.method_cells(committed)
    assert {"task_if", "tracin", "random"} <= set(cells) and not set(cells) & benchmark.NOT_METHODS
    stats = committed["aggregate"]["metrics"]["task_noise.task_if.task_auc"]
    estimate = cells["task_if"]["E2 task_noise task_auc"]
    half = 4.302652729911275 * stats["std"] / math.sqrt(3)  # t(0.975, 2)
    assert estimate.basis == "seeds" and math.isclose(estimate.high - estimate.mean, half, rel_tol=1e-9)


def test_unknown_method_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["leaderboard", "--method", "plugin_method:Missing", "--scale", "smoke", "--experiment", "E2",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Missing" in err
    assert not (tmp_path / "b" / "leaderboard.md").exists()
