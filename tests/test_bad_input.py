"""Bad input and ill-posed problems fail early with errors that say what to change.

Library level:

- malformed task tensors -> ``ValueError`` from ``MetaObjective`` naming the field and the expected shape;
- a non-finite loss in ``train_converged``, ``train_stochastic`` and in scoring -> ``NonFiniteError`` naming the
  quantity that went non-finite and the knobs (learning rates, delta, beta, float64);
- CG stopping short -> ``SolverNotConvergedError`` naming max_iter / damping / tol;
- an indefinite total Hessian -> ``IndefiniteHessianError`` suggesting damping; with that damping the solve succeeds.

Harness level (``metainf-repro``), every case ends in exit 2 (130 / 143 for Ctrl-C / SIGTERM) with at most five
lines on stderr, a message naming the problem, no traceback, and earlier results untouched:

- configs that break the schema (bad types, out-of-range values, unknown keys, all listed in one line), unknown
  experiment / dataset / scale; lists a run cannot do without left empty, E4 grid names it does not know;
- data: a corrupt zip, a bad CRC, a truncated PNG, a wrong layout, a missing or empty ``--data-root`` or
  ``$METAINF_DATA``; the data actually used is recorded in the result without machine paths;
- a disk that fills or turns read-only mid-run: one line naming the file, finished seeds kept;
- numbers: divergence of the outer or the inner step (naming the config key), non-finite or exploded numbers in a
  result; default runs print nothing on stderr;
- corrupt result / seed-cache files: named, moved to ``.corrupt``, recomputed; ``report`` and ``figures`` skip them;
- a raising method is recorded as failed and the other methods' results are kept;
- W&B online that does not answer falls back to offline within the time limit, said once;
- SIGINT / SIGTERM: one line, 130 / 143, no ``.tmp`` left, the rerun resumes; result files follow the umask;
  SIGTERM during a method's scoring stops the run rather than being recorded as that method failing.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from experiments import scoring
from metainf.core.bilevel import TaskData, UnrolledInner
from metainf.core.models import build_model
from metainf.core.objective import MetaObjective, NonFiniteError
from metainf.data.tasks import TaskPool
from metainf.influence import InfluenceConfig, eval_vector, task_scores
from metainf.linalg.solvers import solve
from metainf.linalg.types import IndefiniteHessianError, SolverNotConvergedError
from metainf.methods import AttributionProblem
from metainf.runtime.executor import run_units, unit_file_name
from metainf.train import train_converged, train_stochastic
from replication import cli, figures, results, runner, wandb_mirror
from tests.fixtures_data import omniglot_tree, write_omniglot_zip

DT = torch.float64
M, S, Q, WAY = 4, 3, 3, 3
INPUT = (1, 3, 3)
HINTS = ("learning rate", "beta", "delta", "float64")


def make_tasks(seed: int = 0) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    return TaskData(
        xs=torch.rand(M, S, *INPUT, generator=g, dtype=DT), ys=torch.randint(0, WAY, (M, S), generator=g),
        ws=torch.ones(M, S, dtype=DT),
        xq=torch.rand(M, Q, *INPUT, generator=g, dtype=DT), yq=torch.randint(0, WAY, (M, Q), generator=g),
        wq=torch.ones(M, Q, dtype=DT),
    )


def mlp():
    return build_model("mlp", INPUT, WAY, hidden=(3,))


def objective(tasks: TaskData | None = None, lr: float = 0.4, delta: float = 0.0, **kw) -> MetaObjective:
    return MetaObjective(mlp(), UnrolledInner(steps=1, lr=lr), make_tasks() if tasks is None else tasks,
                         delta=delta, chunk=None, **kw)


# -- malformed task pools -------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, bad, expected", [
    ("ws", torch.ones(M, S + 1, dtype=DT), f"({M}, {S})"),
    ("wq", torch.ones(M - 1, Q, dtype=DT), f"({M}, {Q})"),
    ("yq", torch.zeros(M, Q + 2, dtype=torch.long), f"({M}, {Q})"),
    ("xq", torch.rand(M, Q, 1, 4, 4, dtype=DT), "(1, 3, 3)"),
])
def test_mismatched_shapes_name_field_and_expected_shape(field: str, bad: torch.Tensor, expected: str) -> None:
    tasks = make_tasks()._replace(**{field: bad})
    with pytest.raises(ValueError) as info:
        objective(tasks)
    msg = str(info.value)
    assert field in msg and expected in msg, msg


def test_wrong_tau_and_float_labels() -> None:
    with pytest.raises(ValueError, match=r"tau has shape \(3,\), expected \(4,\)"):
        objective(tau=torch.ones(3, dtype=DT))
    tasks = make_tasks()
    with pytest.raises(ValueError, match="ys must hold integer class labels"):
        objective(tasks._replace(ys=tasks.ys.to(DT)))


def test_model_built_for_other_inputs_or_ways() -> None:
    """Images at another size than the model was built for, and labels beyond the model's outputs."""
    tasks = make_tasks()
    big = tasks._replace(xs=torch.rand(M, S, 1, 5, 5, dtype=DT), xq=torch.rand(M, Q, 1, 5, 5, dtype=DT))
    with pytest.raises(ValueError, match=r"does not accept the task inputs of per-point shape \(1, 5, 5\)") as info:
        objective(big)
    assert "image_size" in str(info.value) and "input_shape" in str(info.value)
    with pytest.raises(ValueError, match=r"yq has labels in 7\.\.7 but the model has 3 outputs") as info:
        objective(tasks._replace(yq=tasks.yq.clone().fill_(7)))
    assert "expected labels 0..2" in str(info.value)


def test_task_pool_with_wrong_query_image_size() -> None:
    x = torch.rand(2, 3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"query images \(1, 6, 6\) differ"):
        TaskPool("p", x, torch.zeros(2, 3, dtype=torch.long), torch.rand(2, 3, 1, 6, 6),
                 torch.zeros(2, 3, dtype=torch.long), ["a", "b"], n_way=1)


# -- non-finite losses --------------------------------------------------------------------------------------
def assert_hint(info: pytest.ExceptionInfo, *names: str) -> None:
    msg = str(info.value)
    assert "not finite" in msg and any(n in msg for n in names), msg
    assert any(h in msg for h in HINTS), msg


def corrupted_tasks() -> TaskData:
    """One query image of task 2 holds a NaN pixel (a corrupted file): its loss, and every gradient, is NaN."""
    tasks = make_tasks()
    xq = tasks.xq.clone()
    xq[2, 1, 0, 1, 1] = float("nan")
    return tasks._replace(xq=xq)


def test_non_finite_in_train_converged() -> None:
    obj = objective(corrupted_tasks())
    with pytest.raises(NonFiniteError) as info:
        train_converged(obj, obj.model.init(0), tol=1e-8, max_iter=10)
    assert_hint(info, "task loss", "meta-objective", "gradient")


def test_non_finite_in_train_stochastic() -> None:
    obj = objective(corrupted_tasks())
    with pytest.raises(NonFiniteError) as info:  # one epoch (M / batch steps) reaches the corrupted task
        train_stochastic(obj, obj.model.init(0), steps=M // 2, batch=2, lr=0.1, optimizer="adam")
    assert_hint(info, "task loss", "gradient")  # the summed-loss pass meets the loss first


def test_non_finite_in_scoring() -> None:
    """Scoring at a lam that holds NaN (e.g. a diverged checkpoint): the evaluation gradient / HVP is caught."""
    obj = objective(delta=1.0)
    lam = obj.model.init(0)
    lam[3] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        eval_vector(obj, lam, objective(make_tasks(1)), InfluenceConfig())
    assert_hint(info, "gradient", "Hessian")
    with pytest.raises(NonFiniteError) as info:
        task_scores(obj, lam, torch.ones_like(lam))
    assert_hint(info, "gradient")


# -- solvers ------------------------------------------------------------------------------------------------
def test_cg_not_converged_says_what_to_change() -> None:
    a = torch.diag(torch.logspace(0, 6, 12, dtype=DT))
    with pytest.raises(SolverNotConvergedError) as info:
        solve(lambda u: a @ u, torch.ones(12, dtype=DT), "cg", tol=1e-12, max_iter=3)
    msg = str(info.value)
    assert all(k in msg for k in ("max_iter", "damping", "tol")), msg
    # the same through the real objective (delta = 1 keeps it positive definite, so only max_iter is short)
    obj = objective(delta=1.0)
    with pytest.raises(SolverNotConvergedError, match="max_iter"):
        eval_vector(obj, obj.model.init(0), objective(make_tasks(1)), InfluenceConfig(max_iter=1, tol=1e-14))


def test_indefinite_stand_in_hessian() -> None:
    h = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=DT))
    b = torch.ones(3, dtype=DT)
    for method in ("dense", "cg"):
        with pytest.raises(IndefiniteHessianError, match="damping"):
            solve(lambda u: h @ u, b, method)
        x, _ = solve(lambda u: h @ u, b, method, damping=2.5, tol=1e-12)
        assert torch.allclose(x, b / (torch.diagonal(h) + 2.5), atol=1e-10)


def test_indefinite_total_hessian_needs_damping() -> None:
    """At a random initialisation the total Hessian of the real meta-objective is indefinite (delta = 0)."""
    obj, ev = objective(), objective(make_tasks(1))
    lam = obj.model.init(0)
    lo = float(torch.linalg.eigvalsh(obj.dense_hessian(lam))[0])
    assert lo < 0
    with pytest.raises(IndefiniteHessianError) as info:
        eval_vector(obj, lam, ev, InfluenceConfig(solver="dense"))
    msg = str(info.value)
    assert "damping" in msg and f"{-lo:.3e}" in msg, msg
    damping = -lo + 0.05
    v_dense, info_d = eval_vector(obj, lam, ev, InfluenceConfig(solver="dense", damping=damping))
    v_cg, _ = eval_vector(obj, lam, ev, InfluenceConfig(solver="cg", damping=damping, tol=1e-12, max_iter=2000))
    assert info_d.min_eigenvalue is not None and info_d.min_eigenvalue > 0
    assert float((v_dense - v_cg).norm() / v_dense.norm()) <= 1e-6


# == the metainf-repro harness ===================================================================================

REPO = Path(__file__).resolve().parents[1]
E6 = ["run", "E6", "--scale", "smoke"]
FAST = ["--set", "outer_steps=5"]  # E6 smoke on the bundled digits in about a second


def short_error(err: str, *names: str) -> None:
    """At most 5 lines on stderr, no traceback, and every one of ``names`` in the message."""
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 5, err
    assert "Traceback" not in err, err
    for name in names:
        assert name in err, (name, err)


def cli_run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded-data caches of these tests stay in the test's folder."""
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "data-cache"))


@pytest.mark.parametrize("items, names", [
    (["n_way=five"], ["n_way", "integer", "five"]),
    (["k_shot=0"], ["k_shot", ">= 1", "got 0"]),
    (["delta=-1"], ["delta", ">= 0"]),
    (["image_size=3"], ["image_size", ">= 4"]),
    (["outer_lr=-0.1"], ["outer_lr", "> 0"]),
    (["outer_lr=fast"], ["outer_lr", "number"]),
    (["hidden=4"], ["hidden", "list"]),
    (["kinds=[\"tsk\"]"], ["kinds", "'task'"]),
    (["unrolled.steps=0"], ["unrolled.steps", ">= 1"]),
    (["unrolled={\"lr\": 0.4, \"steps\": 1, \"stepz\": 2}"], ["unrolled.stepz", "unknown key"]),
    (["outer_optimizer=rmsprop"], ["outer_optimizer", "'sgd'"]),
    (["tol=NaN"], ["tol", "finite"]),
    (["bogus=1"], ["bogus", "unknown key"]),
    (["unrolled.lrr=1"], ["unrolled.lrr", "did you mean unrolled.lr"]),
    # every bad key in one error
    (["n_way=five", "k_shot=0", "bogus=1", "delta=-1"], ["n_way", "k_shot", "bogus", "delta"]),
])
def test_bad_config_is_one_line_listing_every_bad_key(tmp_path: Path, capsys, items: list[str],
                                                       names: list[str]) -> None:
    code, err = cli_run(capsys, *E6, "--dataset", "omniglot", "--out", str(tmp_path / "out"), "--set", *items)
    assert code == 2
    short_error(err, *names)
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "E6").exists()  # validated before any work


@pytest.mark.parametrize("experiment, items, names", [
    ("E6", ["inners=[]"], ["inners", "non-empty list"]),
    ("E2", ["inners=[]", "kinds=[]"], ["inners", "kinds", "non-empty list"]),
    ("E5", ["tasks_grid=[]"], ["tasks_grid", "non-empty list"]),
    ("E4", ["curvatures=[\"bogus\", \"gamma_scaled:0.1\"]"], ["E4 smoke", "curvature 'bogus'", "gamma_scaled"]),
    ("E4", ["inner_solvers=[\"bogus\"]"], ["E4 smoke", "inner solver 'bogus'", "cg, dense, ekfac"]),
])
def test_a_config_that_would_fail_midway_is_refused_up_front(tmp_path: Path, capsys, experiment: str,
                                                              items: list[str], names: list[str]) -> None:
    """Lists a run cannot do without, and E4's grid names: refused before any work (an empty inners crashed E2 and
    E6, left E3 with an empty result; a bad curvature failed E4 after part of its grid)."""
    code, err = cli_run(capsys, "run", experiment, "--dataset", "mnist", "--scale", "smoke",
                        "--out", str(tmp_path / "out"), "--set", *items)
    assert code == 2
    short_error(err, *names)
    assert "curvature 'gamma_scaled:0.1'" not in err  # a valid H' mode is not refused
    assert not (tmp_path / "out" / experiment).exists()


@pytest.mark.parametrize("argv, name", [
    (["run", "E9"], "unknown experiment 'E9'"),
    (["run", "E6", "--dataset", "cifar"], "cifar"),
    (["run", "E6", "--scale", "huge"], "huge"),
    (["run", "E6", "--jobs", "two"], "--jobs"),
    (["frobnicate"], "frobnicate"),
])
def test_unknown_names(tmp_path: Path, capsys, argv: list[str], name: str) -> None:
    code, err = cli_run(capsys, *argv, *(["--out", str(tmp_path / "out")] if argv[0] == "run" else []))
    assert code == 2
    short_error(err, name)


def test_every_default_config_passes_the_schema() -> None:
    from experiments import registry
    from replication.config import resolve_config

    for experiment in registry.EXPERIMENTS.values():
        for scale in experiment.configs:
            for dataset in experiment.datasets:
                resolve_config(experiment, scale, dataset, {})


# -- data --------------------------------------------------------------------------------------------------------
def _tree() -> dict:
    return omniglot_tree({"Alpha": 6, "Beta": 6}, drawers=4)


def _bad_crc(path: Path) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".png"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 40
    data[start] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncated_png(path: Path) -> None:
    tree = _tree()
    png = tree["Alpha"]["character01"][0]
    tree["Alpha"]["character01"][0] = png[: len(png) // 2]
    write_omniglot_zip(path, tree)


def _wrong_layout(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images_background_small1/Alpha/0101_01.png", _tree()["Alpha"]["character01"][0])


@pytest.mark.parametrize("damage, names", [
    (lambda p: p.write_bytes(b"this is not a zip file" * 10), ["images_background_small1.zip", "not a readable zip"]),
    (_bad_crc, ["images_background_small1.zip", "damaged", "re-download"]),
    (_truncated_png, ["images_background_small1.zip:", "not a readable image", "Replace"]),
    (_wrong_layout, ["images_background_small1.zip:", "expected", "layout"]),
])
def test_damaged_dataset_names_the_file_and_the_fix(tmp_path: Path, capsys, cache, damage, names) -> None:
    root = tmp_path / "data"
    path = root / "omniglot" / "images_background_small1.zip"
    write_omniglot_zip(path, _tree())
    damage(path)
    out = tmp_path / "out"
    (out / "E6").mkdir(parents=True)
    earlier = out / "E6" / "omniglot-smoke.json"
    earlier.write_text('{"earlier": true}\n')
    code, err = cli_run(capsys, *E6, "--dataset", "omniglot", "--data-root", str(root), "--out", str(out), *FAST)
    assert code == 2
    short_error(err, str(root), *names)
    assert earlier.read_text() == '{"earlier": true}\n'


@pytest.mark.parametrize("make, names", [
    (lambda root: None, ["does not exist"]),
    (lambda root: root.mkdir(), ["is empty"]),
    (lambda root: (root / "unrelated").mkdir(parents=True), ["omniglot", "not under --data-root"]),
])
def test_missing_or_empty_data_root(tmp_path: Path, capsys, make, names) -> None:
    root = tmp_path / "data"
    make(root)
    code, err = cli_run(capsys, *E6, "--dataset", "omniglot", "--data-root", str(root), "--out", str(tmp_path / "o"))
    assert code == 2
    short_error(err, "--data-root", str(root), *names)


def test_an_unreachable_scheduler_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    """Found up front, not when E3 first hands work to dask after training (E6, which never does, exited 0)."""
    code, err = cli_run(capsys, *E6, "--dataset", "mnist", "--out", str(tmp_path / "o"), "--executor", "dask",
                        "--scheduler", "tcp://127.0.0.1:9")
    assert code == 2
    short_error(err, "cannot reach the dask scheduler tcp://127.0.0.1:9", "drop --scheduler")
    assert not (tmp_path / "o").exists()


def test_a_dataset_not_found_says_how_to_find_out_where_it_belongs(tmp_path: Path, capsys,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METAINF_DATA", raising=False)
    code, err = cli_run(capsys, "run", "E1", "--dataset", "fc100", "--scale", "smoke", "--out", str(tmp_path / "o"))
    assert code == 2
    short_error(err, "dataset fc100 is not available", "metainf-repro data info fc100", "--data-root DIR")


@pytest.mark.parametrize("make, names", [
    (lambda root: None, ["does not exist", "or unset it"]),
    (lambda root: root.write_text("not a folder"), ["is not a folder"]),
    (lambda root: root.mkdir(), ["is empty"]),
])
def test_a_bad_metainf_data_is_not_silently_skipped(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, make,
                                                    names) -> None:
    """Without --data-root, a set $METAINF_DATA is the user's choice of data: a wrong one must not fall through to
    ../shared/data (run and data info alike)."""
    root = tmp_path / "data"
    make(root)
    monkeypatch.setenv("METAINF_DATA", str(root))
    for argv in ([*E6, "--dataset", "omniglot", "--out", str(tmp_path / "o")], ["data", "info", "omniglot"]):
        code, err = cli_run(capsys, *argv)
        assert code == 2
        short_error(err, "$METAINF_DATA", str(root), *names)


def test_data_used_is_recorded_without_machine_paths(tmp_path: Path, capsys, cache) -> None:
    root = tmp_path / "data"
    write_omniglot_zip(root / "omniglot" / "images_background_small1.zip",
                       omniglot_tree({f"A{i}": 5 for i in range(6)}, drawers=4))
    out = tmp_path / "out"
    code, err = cli_run(capsys, *E6, "--dataset", "omniglot", "--data-root", str(root), "--out", str(out), *FAST,
                        "n_train_tasks=5", "n_eval_tasks=3", "hidden=[2]", "conv4.q_query=3")  # 4 images a class
    assert code == 0, err
    text = (out / "E6" / "omniglot-smoke.json").read_text()
    data = json.loads(text)
    assert data["data"]["dataset"] == "omniglot"
    assert data["data"]["source"].startswith("omniglot (files sha256:")
    assert str(tmp_path) not in text and "/work/" not in text


# -- numbers -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("item, names", [
    ("outer_lr=1e6", ["diverged", "outer_lr"]),
    ("unrolled.lr=1e6", ["diverged", "unrolled.lr"]),
])
def test_divergence_is_named_with_the_config_key(tmp_path: Path, capsys, item: str, names: list[str]) -> None:
    out = tmp_path / "out"
    (out / "E6").mkdir(parents=True)
    earlier = out / "E6" / "mnist-smoke.json"
    earlier.write_text('{"earlier": true}\n')
    code, err = cli_run(capsys, *E6, "--dataset", "mnist", "--out", str(out), "--set", item)
    assert code == 2
    short_error(err, *names)
    assert earlier.read_text() == '{"earlier": true}\n'


def test_non_finite_or_exploded_result_numbers_fail_the_run(tmp_path: Path, capsys,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever an experiment returns, a NaN or a 1e149 outside a row marked failed never reaches a result."""
    from experiments import registry

    experiment = registry.EXPERIMENTS["E6"]
    for bad in (float("nan"), float("inf"), 1e149):
        payload = {"metrics": {"m": {"spearman": bad}, "failed_row": {"status": "indefinite", "x": float("nan")}}}
        monkeypatch.setitem(registry.EXPERIMENTS, "E6", experiment.__class__(
            **{**experiment.__dict__, "run": lambda ctx, p=payload: p}))
        code, err = cli_run(capsys, *E6, "--dataset", "mnist", "--out", str(tmp_path / "out"))
        assert code == 2
        short_error(err, "m.spearman", "non-finite or exploded")
        assert "failed_row" not in err
        assert not (tmp_path / "out" / "E6" / "mnist-smoke.json").exists()
    clean = {"metrics": {"m": {"spearman": 0.5}, "failed_row": {"status": "indefinite", "x": float("nan")}}}
    monkeypatch.setitem(registry.EXPERIMENTS, "E6", experiment.__class__(
        **{**experiment.__dict__, "run": lambda ctx: clean}))
    assert cli.main([*E6, "--dataset", "mnist", "--out", str(tmp_path / "out")]) == 0


# -- corrupt results and caches ----------------------------------------------------------------------------------
def test_corrupt_seed_cache_is_set_aside_and_recomputed(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = [*E6, "--dataset", "mnist", "--out", str(out), "--seed", "0", *FAST]
    assert cli.main(argv) == 0
    reference = results.read_json(out / "E6" / "mnist-smoke.json")
    # an interrupted rerun's seed cache, truncated (a disk-full write, a copy cut short)
    prepared = cli.runner.prepare(cli._request(cli.build_parser().parse_args(argv), "E6", "mnist", argv))
    prepared.cache_dir.mkdir(parents=True)
    seed_file = prepared.cache_dir / "seed-0.json"
    seed_file.write_text('{"payload": {"metrics": ')
    (prepared.cache_dir / ".seed-0.json.abc.tmp").write_text("half")
    capsys.readouterr()
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    short_error(err, "seed-0.json", "corrupt", ".corrupt", "recomputing")
    again = results.read_json(out / "E6" / "mnist-smoke.json")
    assert again["per_seed"] == reference["per_seed"]
    assert again["provenance"]["resumed_seeds"] == []
    assert not list(out.rglob("*.tmp"))


def test_corrupt_result_file_is_skipped_by_report_and_figures(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert cli.main([*E6, "--dataset", "mnist", "--out", str(out), *FAST]) == 0
    good = (out / "E6" / "mnist-smoke.json").read_text()
    for command, extra in (("report", ["--out", str(tmp_path / "REPRODUCE.md")]), ("figures", [])):
        bad = out / "E1" / "mnist-smoke.json"
        bad.parent.mkdir(exist_ok=True)
        bad.write_text('{"schema": 1, "experiment": "E1", "per_se')
        capsys.readouterr()
        assert cli.main([command, "--results", str(out), *extra]) == 0
        err = capsys.readouterr().err
        short_error(err, "E1/mnist-smoke.json", "corrupt", "skipped")
        assert not bad.exists() and (bad.parent / "mnist-smoke.json.corrupt").exists()
        assert (out / "E6" / "mnist-smoke.json").read_text() == good


def test_results_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        path = results.write_json(tmp_path / "a" / "r.json", {"x": 1})
        assert path.stat().st_mode & 0o777 == 0o640
        os.umask(0o022)
        assert results.write_json(path, {"x": 2}).stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


# -- failure isolation -------------------------------------------------------------------------------------------
def test_a_raising_method_is_recorded_and_the_others_kept(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, err = cli_run(capsys, *E6, "--dataset", "mnist", "--out", str(out), *FAST, "--method", "tracin",
                        "tests.plugin_method:Raises")
    assert code == 0, err
    metrics = results.read_json(out / "E6" / "mnist-smoke.json")["per_seed"]["0"]["metrics"]
    assert "task_error" in metrics["tests_plugin_method:Raises"]
    assert isinstance(metrics["tracin"]["task_early_share"], float)


def test_sigterm_during_a_scoring_stops_the_run_and_records_nothing(tmp_path: Path, capsys) -> None:
    """SIGTERM inside a method's scoring ends the run (143, one line); it is not recorded as that method failing."""
    out = tmp_path / "out"
    code, err = cli_run(capsys, "run", "E2", "--dataset", "mnist", "--scale", "smoke", "--out", str(out),
                        "--method", "grad_dot", "tests.plugin_method:Terminated")
    assert code == 143, err
    short_error(err, "terminated", "resume")
    assert not (out / "E2" / "mnist-smoke.json").exists()
    assert not list(out.rglob("seed-0.json"))  # the seed is not cached with the scoring marked as failed


def test_sigterm_that_a_library_turned_into_its_own_error_still_stops_the_run(tmp_path: Path, capsys) -> None:
    """SIGTERM inside code whose cleanup then raises a RuntimeError with the stop as its context (torch's vmap, seen
    in CI): the run still stops (143, one line), and the RuntimeError is not recorded as the method failing."""
    out = tmp_path / "out"
    code, err = cli_run(capsys, "run", "E2", "--dataset", "mnist", "--scale", "smoke", "--out", str(out),
                        "--method", "grad_dot", "tests.plugin_method:TerminatedInsideTorch")
    assert code == 143, err
    short_error(err, "terminated", "resume")
    assert not list(out.rglob("seed-0.json"))


def test_ctrl_c_that_a_library_turned_into_its_own_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys) -> None:
    """The same outside any scoring (in CI: SIGTERM during training): ``main`` finds the stop behind the error."""
    def execute(prepared: object) -> dict:
        try:
            raise KeyboardInterrupt
        except BaseException:
            raise RuntimeError("INTERNAL ASSERT FAILED (a stand-in)")

    monkeypatch.setattr(runner, "execute", execute)
    code, err = cli_run(capsys, *E6, "--dataset", "mnist", "--out", str(tmp_path / "out"), *FAST)
    assert code == 130, err
    short_error(err, "interrupted", "resume")


def test_score_all_records_a_crashing_method(tmp_path: Path) -> None:
    obj = objective(delta=1.0)
    lam = obj.model.init(0)
    problem = AttributionProblem(objective=obj, eval_objective=objective(make_tasks(1)), lam=lam, trajectory=None,
                                 train_config={}, task_ids=[f"t{k}" for k in range(M)], seed=0)
    scores, skipped = scoring.score_all(("tests.plugin_method:Raises", "grad_dot"), problem, ("task",))
    assert skipped == {"tests.plugin_method:Raises/task": "failed: RuntimeError: plugin exploded on purpose"}
    assert torch.isfinite(scores["grad_dot"]["task"].values).all()


# -- W&B ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def silent_server() -> str:
    """A local server that accepts connections and never answers (an unreachable W&B host)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_wandb_online_without_answer_falls_back_offline_once(tmp_path: Path, capsys, silent_server: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_BASE_URL", silent_server)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setattr(wandb_mirror, "INIT_TIMEOUT_S", 1.0)
    monkeypatch.setattr(wandb_mirror, "_online_failed", [])
    for attempt in range(2):
        start = time.monotonic()
        mirror = wandb_mirror.WandbMirror("online", tmp_path)
        mirror.start(name=f"r{attempt}", group="g", config={})
        waited = time.monotonic() - start
        assert mirror.active
        mirror.finish()
        # the 1 s limit plus an offline start (2-3 s alone, much more on a loaded machine; the probe's own bound is
        # checked in test_wandb_probe_gives_up_at_the_limit)
        assert waited < 1.0 + 30.0
    err = capsys.readouterr().err
    assert err.count("W&B online did not start") == 1 and "offline" in err
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2


def test_wandb_probe_gives_up_at_the_limit(silent_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", silent_server)
    start = time.monotonic()
    reason = wandb_mirror.server_unreachable(0.5)
    assert reason is not None and silent_server in reason
    assert time.monotonic() - start < 2.0


# -- signals -----------------------------------------------------------------------------------------------------
def _default_sigint() -> None:
    """In the child before exec: Ctrl-C back to its default. A shell without job control starts background commands
    (``make test &``) with SIGINT ignored, and Python keeps an ignored SIGINT ignored, so the run would never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_wandb_shuts_down_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """W&B's service ends inside ``main`` (``wandb_mirror.close_service``), so a Ctrl-C while it shuts down is the
    CLI's one line and exit 130, not a traceback from W&B's atexit hook after ``main`` returned."""
    calls: list[int] = []

    def interrupted() -> None:
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(wandb_mirror, "close_service", interrupted)
    assert cli.main(["data", "info", "mnist"]) == 130
    assert calls == [1]
    err = capsys.readouterr().err.strip()
    assert err.startswith("metainf-repro: interrupted") and "\n" not in err


def test_ctrl_c_while_the_cli_loads_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The console script's entry point catches a Ctrl-C that arrives while replication.cli and torch load."""
    import importlib.abc
    from replication import launch

    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object, target: object = None) -> None:
            if name == "replication.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "replication.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    assert launch.main() == 130
    err = capsys.readouterr().err
    assert err.strip() == "metainf-repro: interrupted while starting; nothing was written"


def test_signals_stop_cleanly_and_the_rerun_resumes(tmp_path: Path) -> None:
    """SIGTERM after the first seed, then (resumed) Ctrl-C after the second: one line each, exit 143 and 130, no
    temp file, earlier results untouched; the third run resumes both seeds and prints nothing on stderr."""
    out = tmp_path / "out"
    (out / "E6").mkdir(parents=True)
    (out / "E6" / "omniglot-smoke.json").write_text('{"earlier": true}\n')
    argv = [sys.executable, "-m", "replication.cli", *E6, "--dataset", "mnist", "--out", str(out),
            "--seed", "0", "1", "2", "3", "4", "5", *FAST]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    cache = out / ".cache" / "E6"
    for seed, sig, code, word in ((0, signal.SIGTERM, 143, "terminated"), (1, signal.SIGINT, 130, "interrupted")):
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_default_sigint)
        deadline = time.monotonic() + 120
        while not list(cache.rglob(f"seed-{seed}.json")) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        short_error(err, word, "resume")
        assert len(err.strip().splitlines()) == 1
        assert not list(out.rglob("*.tmp"))
        assert (out / "E6" / "omniglot-smoke.json").read_text() == '{"earlier": true}\n'
    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stderr.strip() == ""  # a default run prints no warning at all (e.g. no "gradient norm inf")
    assert {0, 1} <= set(results.read_json(out / "E6" / "mnist-smoke.json")["provenance"]["resumed_seeds"])


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killing_a_pooled_run_leaves_no_worker(tmp_path: Path, sig: int) -> None:
    """``--jobs 2``: after SIGKILL of the parent, or Ctrl-C to the process group (one line, exit 130), no pool
    worker is alive 5 s later; the pool's helper processes (forkserver, resource tracker) end too."""
    argv = [sys.executable, "-m", "replication.cli", *E6, "--dataset", "mnist", "--out", str(tmp_path / "out"),
            "--jobs", "2", "--seed", "0", "1", "2", "3", "4", "5", *FAST]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    with open(tmp_path / "stderr", "w") as err_file:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err_file,
                                start_new_session=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120
    helpers: set[int] = set()
    while len(helpers) < 4 and time.monotonic() < deadline:  # resource tracker, forkserver and two workers
        time.sleep(0.3)
        helpers = _descendants(proc.pid)
    assert len(helpers) >= 4, "the pool did not start"
    time.sleep(1.0)
    workers = _descendants(proc.pid) - set(_children(proc.pid))
    if sig == signal.SIGKILL:
        proc.kill()
    else:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    proc.wait(timeout=60)
    time.sleep(5.0)
    assert not [pid for pid in workers if _alive(pid)]
    deadline = time.monotonic() + 30
    while [pid for pid in helpers if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in helpers if _alive(pid)]
    if sig == signal.SIGINT:
        err = (tmp_path / "stderr").read_text()
        assert proc.returncode == 130, err
        short_error(err, "interrupted")
        assert len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "out").rglob("*.tmp"))


def _children(pid: int) -> list[int]:
    return [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
            if _read_ppid(p) == pid]


def _read_ppid(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_corrupt_unit_cache_is_set_aside_and_recomputed(tmp_path: Path, capsys) -> None:
    units = {f"u{i}": (i,) for i in range(3)}
    assert run_units(abs, units, cache_dir=tmp_path, progress=False) == {"u0": 0, "u1": 1, "u2": 2}
    (tmp_path / unit_file_name("u1")).write_bytes(b"\x80\x02trunc")
    (tmp_path / ".tmp-abc.pt").write_bytes(b"half")
    assert run_units(abs, units, cache_dir=tmp_path, progress=False) == {"u0": 0, "u1": 1, "u2": 2}
    err = capsys.readouterr().err
    short_error(err, unit_file_name("u1"), "corrupt", ".corrupt", "recomputing")
    assert (tmp_path / (unit_file_name("u1") + ".corrupt")).exists()
    assert not list(tmp_path.glob(".tmp-*"))


# -- plug-in runs, seeds, report and figures (a new user's audit) ------------------------------------------------
E2 = ["run", "E2", "--dataset", "mnist", "--scale", "smoke"]


def test_a_run_with_method_does_not_replace_a_result_of_other_methods(tmp_path: Path, capsys) -> None:
    """A plug-in run into a folder holding other methods' results (the committed results/) would lose them."""
    out = tmp_path / "out"
    mnist = ["--dataset", "mnist", "--out", str(out), *FAST]
    assert cli_run(capsys, *E6, *mnist, "--method", "tracin")[0] == 0
    path = out / "E6" / "mnist-smoke.json"
    before = path.read_bytes()
    code, err = cli_run(capsys, *E6, *mnist, "--method", "tests.plugin_method:NormScore")
    assert code == 2
    short_error(err, str(path), "tracin", "--out DIR", "--replace")
    assert path.read_bytes() == before
    assert cli_run(capsys, *E6, *mnist, "--method", "tracin", "tests.plugin_method:NormScore")[0] == 0  # keeps tracin
    assert cli_run(capsys, *E6, *mnist, "--method", "tests.plugin_method:NormScore", "--replace")[0] == 0
    assert results.read_json(path)["methods"] == ["tests.plugin_method:NormScore"]


def test_a_method_without_any_score_exits_2_and_the_result_keeps_why(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, err = cli_run(capsys, *E2, "--out", str(out), "--method", "tests.plugin_method:NonFinite")
    assert code == 2
    assert "error: method tests.plugin_method:NonFinite produced no scores" in err and "non-finite" in err
    assert "Traceback" not in err
    result = results.read_json(out / "E2" / "mnist-smoke.json")
    assert any(entry.names("tests.plugin_method:NonFinite") for entry in runner.skipped_scorings(result))
    # beside a method that scores: the same exit, one warning line before it, and the other method's results kept
    code, err = cli_run(capsys, *E2, "--out", str(out), "--method", "grad_dot", "tests.plugin_method:NonFinite",
                        "--replace")
    assert code == 2
    short_error(err, "warning: 1 scoring(s) skipped", "produced no scores", "non-finite")
    metrics = results.read_json(out / "E2" / "mnist-smoke.json")["aggregate"]["metrics"]
    assert any(".grad_dot." in path for path in metrics)


@pytest.mark.parametrize("seeds, names", [
    (["-1"], ["--seed -1", "0..4294967295"]),
    (["4294967296"], ["--seed 4294967296", "0..4294967295"]),
    (["0", "1", "0"], ["--seed 0", "twice"]),
])
def test_bad_seeds_exit_2_before_anything_is_written(tmp_path: Path, capsys, seeds: list[str],
                                                     names: list[str]) -> None:
    out = tmp_path / "out"
    for extra in ([], ["--estimate-only"]):
        code, err = cli_run(capsys, *E6, "--dataset", "mnist", "--out", str(out), "--seed", *seeds, *extra)
        assert code == 2
        short_error(err, *names)
        assert not out.exists()


@pytest.mark.parametrize("source, attribute, names", [
    ("def broken(:\n", "X", ["SyntaxError"]),
    ("raise RuntimeError('import failed on purpose')\n", "X", ["RuntimeError", "import failed on purpose"]),
    ("class NeedsArgs:\n    def __init__(self, required):\n        pass\n", "NeedsArgs", ["TypeError", "required"]),
])
def test_a_plugin_that_cannot_load_is_one_line(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch,
                                               source: str, attribute: str, names: list[str]) -> None:
    module = f"plugin_{abs(hash(source))}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = cli_run(capsys, *E6, "--dataset", "mnist", "--out", str(tmp_path / "out"),
                        "--method", f"{module}:{attribute}")
    assert code == 2
    short_error(err, f"{module}:{attribute}", "cannot be loaded", *names)


def test_report_on_another_folder_writes_inside_it(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """``report --results DIR`` must not replace the repository's REPRODUCE.md and docs/results/ pages."""
    assert cli_run(capsys, *E6, "--dataset", "mnist", "--out", str(tmp_path / "other"), *FAST)[0] == 0
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "--results", "other"]) == 0
    assert (tmp_path / "other" / "REPRODUCE.md").is_file() and (tmp_path / "other" / "docs" / "results").is_dir()
    assert not (tmp_path / "REPRODUCE.md").exists() and not (tmp_path / "docs").exists()
    assert cli.report_path(Path("results"), None) == Path("REPRODUCE.md")


def test_report_and_figures_on_a_missing_or_unwritable_folder(tmp_path: Path, capsys,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for command in ("report", "figures"):
        code, err = cli_run(capsys, command, "--results", str(tmp_path / "nope"))
        assert code == 2
        short_error(err, "no such folder")

    def read_only(*args: object) -> None:
        raise OSError(30, "Read-only file system")

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(cli.report, "write_report", read_only)
    monkeypatch.setattr(cli.figures, "regenerate_all", read_only)
    for command in ("report", "figures"):
        code, err = cli_run(capsys, command, "--results", str(tmp_path / "ro"))
        assert code == 2
        short_error(err, "cannot write", "Read-only file system")


def test_a_full_or_read_only_disk_is_one_line_and_keeps_the_finished_seeds(tmp_path: Path, capsys,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails for the machine's sake (no space, read-only, forbidden) mid-run: exit 2, one line naming
    the file; the seeds written before it stay and the rerun resumes them."""
    out = tmp_path / "out"
    write = results.write_json
    for number, text in ((errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")):
        def refuse_seed_1(path: Path, data: dict) -> Path:
            if "seed-1" in path.name:
                raise OSError(number, text, str(path))
            return write(path, data)

        monkeypatch.setattr(results, "write_json", refuse_seed_1)
        code, err = cli_run(capsys, *E2, "--out", str(out), "--seed", "0", "1", "--method", "grad_dot")
        assert code == 2, err
        short_error(err, text, "seed-1", "rerun to resume")
    monkeypatch.setattr(results, "write_json", write)
    assert cli_run(capsys, *E2, "--out", str(out), "--seed", "0", "1", "--method", "grad_dot")[0] == 0
    assert results.read_json(out / "E2" / "mnist-smoke.json")["provenance"]["resumed_seeds"] == [0]


def test_a_figure_that_fails_keeps_the_result_and_the_old_figures(tmp_path: Path, capsys,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    assert cli_run(capsys, *E6, "--dataset", "mnist", "--out", str(out), *FAST)[0] == 0
    drawn = sorted((out / "figures").rglob("*.png"))
    assert drawn

    def broken(result: dict, out_dir: Path) -> list[Path]:
        raise ValueError("figure broke on purpose")

    monkeypatch.setitem(figures.FIGURES, "E6", broken)
    code, err = cli_run(capsys, *E6, "--dataset", "mnist", "--out", str(out), *FAST)
    assert code == 0, err
    short_error(err, "figures not drawn", "figure broke on purpose", "metainf-repro figures")
    assert sorted((out / "figures").rglob("*.png")) == drawn
    assert results.read_json(out / "E6" / "mnist-smoke.json")["per_seed"]


def test_data_info_rejects_a_missing_or_empty_data_root(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for root, names in ((tmp_path / "empty", ["is empty"]), (tmp_path / "nope", ["does not exist"])):
        code, err = cli_run(capsys, "data", "info", "omniglot", "--data-root", str(root))
        assert code == 2
        short_error(err, str(root), *names)


def test_the_conv4_regime_takes_the_dtype_option(tmp_path: Path, capsys) -> None:
    """``--dtype float64`` on a Conv-4 run: lam_0 in the run's dtype (it kept the config's float32, and the first
    meta-gradient failed with 'expected both vectors to have same dtype')."""
    code, err = cli_run(capsys, "run", "E1", "--dataset", "mnist", "--scale", "smoke", "--dtype", "float64",
                        "--out", str(tmp_path / "out"))
    assert code == 0, err


def test_a_file_in_the_results_place_that_is_not_a_result_is_kept(tmp_path: Path, capsys) -> None:
    """Writing a result over a JSON file that is not one (or a corrupt one) moves that file aside first."""
    out = tmp_path / "out"
    path = out / "E6" / "mnist-smoke.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"seeds": [0], "mine": true}')
    code, err = cli_run(capsys, *E6, "--dataset", "mnist", "--out", str(out), *FAST, "--reuse")
    assert code == 0, err
    assert "not a metainf result" in err
    assert json.loads(path.with_name(path.name + ".corrupt").read_text())["mine"] is True
    assert results.read_json(path)["experiment"] == "E6"
