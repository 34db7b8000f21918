"""The W&B mirror: a real offline run, and failures that must never cost a result."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from replication.plots.style import new_figure, save_figure
from replication import wandb_mirror
from replication.wandb_mirror import WandbMirror, close_service


@pytest.fixture(autouse=True)
def _wandb_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / variable.lower()))


def test_offline_run_writes_a_local_wandb_log(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    fig, ax = new_figure()
    ax.plot([0, 1], [1, 0])
    png = save_figure(fig, tmp_path / "curve.png")
    mirror = WandbMirror("offline", tmp_path)
    mirror.start(name="E0-omniglot-smoke", group="E0", config={"ways": 5})
    assert mirror.active
    mirror.log({"seed0/value": 0.5, "seed0/step": 0})
    # a numeric column with an undefined cell (the results spell NaN "nan"), as E4's failed rows have
    mirror.log_tables({"main": [{"method": "task_if", "acc": 0.8}, {"method": "dense", "acc": "nan"}]},
                      prefix="seed0/")
    assert mirror.active  # the table was logged, not refused for mixing text and numbers
    mirror.log_images([png])
    mirror.summarize({"task_if.acc": 0.8})
    mirror.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))
    assert list(runs[0].glob("files/media/images/**/*.png"))
    assert list(runs[0].glob("files/media/table/**/*.table.json"))


def test_missing_wandb_warns_once_and_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    mirror = WandbMirror("offline", tmp_path)
    mirror.start(name="n", group="g", config={})
    mirror.log({"x": 1.0})
    mirror.finish()
    err = capsys.readouterr().err
    assert err.count("W&B mirror off") == 1 and "not installed" in err


def test_failing_wandb_call_warns_once_and_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys) -> None:
    class BrokenRun:
        def log(self, row: dict) -> None:
            raise ConnectionError("no network")

        def finish(self) -> None:
            raise AssertionError("a switched-off mirror must not touch the run again")

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: BrokenRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    mirror = WandbMirror("offline", tmp_path)  # online would first probe the W&B server
    mirror.start(name="n", group="g", config={})
    mirror.log({"x": 1.0})
    mirror.log({"x": 2.0})
    mirror.finish()
    assert not mirror.active
    assert capsys.readouterr().err.count("W&B mirror off (log failed: no network)") == 1


def test_disabled_mode_does_not_import_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    mirror = WandbMirror("disabled", tmp_path)
    mirror.start(name="n", group="g", config={})
    mirror.log({"x": 1.0})
    assert not mirror.active and not (tmp_path / "wandb").exists()


def _fake_wandb(monkeypatch: pytest.MonkeyPatch, teardown) -> types.ModuleType:
    class Run:
        def finish(self) -> None:
            pass

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: Run()
    fake.teardown = teardown
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(wandb_mirror, "_service_up", [])
    return fake


def test_close_service_tears_wandb_down_once_if_a_run_was_opened(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    _fake_wandb(monkeypatch, lambda: calls.append(1))
    close_service()
    assert calls == []  # no run opened: nothing to end
    mirror = WandbMirror("offline", tmp_path)
    mirror.start(name="n", group="g", config={})
    mirror.finish()
    close_service()
    close_service()
    assert calls == [1]


def test_a_failing_teardown_is_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def broken() -> None:
        raise RuntimeError("service gone")

    _fake_wandb(monkeypatch, broken)
    mirror = WandbMirror("offline", tmp_path)
    mirror.start(name="n", group="g", config={})
    mirror.finish()
    close_service()
    err = capsys.readouterr().err
    assert err.count("warning: W&B did not shut down cleanly (service gone)") == 1


def test_a_run_after_close_service_starts_wandb_again(tmp_path: Path) -> None:
    """With the real wandb: after its service was ended, a later mirror of the process opens a run again."""
    pytest.importorskip("wandb")
    for name in ("first", "second"):
        mirror = WandbMirror("offline", tmp_path / name)
        mirror.start(name=name, group="g", config={})
        assert mirror.active
        mirror.log({"x": 1.0})
        mirror.finish()
        close_service()
        assert list((tmp_path / name / "wandb").glob("offline-run-*/run-*.wandb"))
