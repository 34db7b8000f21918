"""Seeds run on a process pool (``--jobs 2``) give the same numbers as seeds run one after the other in process.

A real experiment (E6 at smoke scale on the bundled digits), two seeds: the pool's workers are fresh processes, so
this also checks that every seed's randomness is set inside the seed (nothing leaks from the parent process).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from replication import cli, results


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _run(out: Path, *extra: str) -> dict:
    argv = ["run", "E6", "--dataset", "mnist", "--scale", "smoke", "--seed", "0", "1", "--out", str(out), *extra]
    assert cli.main(argv) == 0
    return results.read_json(out / "E6" / "mnist-smoke.json")


def test_pooled_seeds_equal_serial_seeds(tmp_path: Path) -> None:
    serial = _run(tmp_path / "serial")
    pooled = _run(tmp_path / "pooled", "--jobs", "2")
    assert pooled["per_seed"] == serial["per_seed"]
    assert pooled["aggregate"] == serial["aggregate"]
    assert pooled["command"] == serial["command"]  # --jobs changes how, not what, so it is not in the command
    assert pooled["provenance"]["pooled_seeds"] == [0, 1]
    assert serial["provenance"]["pooled_seeds"] == []
    assert not (tmp_path / "pooled" / ".cache" / "E6").exists()  # the seed files are gone once the result is written


def test_jobs_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "E6", "--dataset", "mnist", "--scale", "smoke", "--jobs", "0",
                     "--out", str(tmp_path)]) == 2
    assert "--jobs" in capsys.readouterr().err
    assert not (tmp_path / "E6").exists()
