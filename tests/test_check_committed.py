"""``metainf-repro check --results DIR`` guards the committed results: a degraded number fails, naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from replication import cli
from replication.check import COMMITTED_FLOORS, load_floors

RESULTS = Path(__file__).resolve().parent.parent / "results"


@pytest.fixture
def results_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy, ignore=shutil.ignore_patterns("*.png"))
    return copy


def _entry_file(copy: Path, experiment: str) -> tuple[Path, dict]:
    floors = load_floors(COMMITTED_FLOORS)
    entry = next(e for e in floors["entries"] if e["experiment"] == experiment)
    return copy / experiment / f"{entry['dataset']}-{floors['scale']}.json", entry


def test_committed_results_pass(results_copy: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["check", "--results", str(results_copy)]) == 0
    assert " 0 failed" in capsys.readouterr().out


def test_a_lowered_task_if_spearman_fails_naming_file_and_metric(results_copy: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    path, entry = _entry_file(results_copy, "E3")
    metric = next(f["metric"] for f in entry["floors"] if "task_if.task_converged_spearman" in f["metric"])
    data = json.loads(path.read_text())
    data["aggregate"]["metrics"][metric]["mean"] = 0.05
    path.write_text(json.dumps(data))
    assert cli.main(["check", "--results", str(results_copy)]) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert len(failed) >= 1
    assert any(path.relative_to(results_copy).as_posix() in line and metric in line for line in failed)


def test_a_non_finite_number_fails(results_copy: Path, capsys: pytest.CaptureFixture) -> None:
    path, _ = _entry_file(results_copy, "E5")
    data = json.loads(path.read_text())
    first = next(iter(data["aggregate"]["metrics"]))
    data["aggregate"]["metrics"][first]["mean"] = float("nan")
    path.write_text(json.dumps(data))
    assert cli.main(["check", "--results", str(results_copy)]) == 1
    assert any("non-finite" in line and line.startswith("FAIL") for line in capsys.readouterr().out.splitlines())


def test_a_missing_committed_file_fails(results_copy: Path) -> None:
    path, _ = _entry_file(results_copy, "E5")
    path.unlink()
    assert cli.main(["check", "--results", str(results_copy)]) == 1


def test_missing_results_folder_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["check", "--results", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
