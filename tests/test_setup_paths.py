"""The set-up scripts hand on absolute paths: a relative ``VENV`` (holding a space) works from any directory.

The learn2learn build runs the venv's interpreter from inside the unpacked sdist; with a relative interpreter
path that failed on a fresh machine (issue "Fresh machine"). The dry run of ``scripts/setup_env.sh`` resolves the
paths and has ``scripts/install_learn2learn.sh`` run the interpreter from another directory, installing nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from metainf.data.roots import REPO_ROOT, portable_path
from replication.results import git_state

SETUP = REPO_ROOT / "scripts" / "setup_env.sh"


def _dry_run(cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "METAINF_SETUP_DRY_RUN": "1", **env}
    return subprocess.run(["bash", str(SETUP)], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("venv_name", ["my venv", "venv"])
def test_relative_venv_from_another_directory(tmp_path: Path, venv_name: str) -> None:
    target = tmp_path / venv_name
    venv.create(target, with_pip=False)
    elsewhere = tmp_path / "some other dir"
    elsewhere.mkdir()
    out = _dry_run(elsewhere, VENV=f"../{venv_name}", XDG_CACHE_HOME="cache dir", PYTHON=sys.executable)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"VENV={target}" in out.stdout
    assert f"XDG_CACHE_HOME={elsewhere / 'cache dir'}" in out.stdout
    assert f"cache={elsewhere / 'cache dir'}/metainf/wheels" in out.stdout
    # the interpreter ran from inside another directory and is the venv's (symlink kept, not the base Python)
    assert f"prefix from another directory: {target}" in out.stdout


def test_absolute_venv(tmp_path: Path) -> None:
    target = tmp_path / "abs venv"
    venv.create(target, with_pip=False)
    out = _dry_run(tmp_path, VENV=str(target))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"prefix from another directory: {target}" in out.stdout


def test_results_record_data_roots_relative_to_the_project() -> None:
    assert portable_path(REPO_ROOT.parent / "shared" / "data" / "omniglot") == "../shared/data/omniglot"
    assert portable_path(REPO_ROOT / "data" / "mnist") == "data/mnist"
    assert not portable_path("/opt/far/away/omniglot").startswith("/")


def test_run_outputs_do_not_make_provenance_dirty(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results").mkdir()
    for name in ("code.py", "REPRODUCE.md", "results/E1.json"):
        (tmp_path / name).write_text("a\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "results" / "E1.json").write_text("b\n")
    (tmp_path / "REPRODUCE.md").write_text("b\n")
    assert git_state(tmp_path)["dirty"] is False  # a reproduction rewrote its own outputs
    (tmp_path / "code.py").write_text("b\n")
    assert git_state(tmp_path)["dirty"] is True


def test_recorded_command_lines_hold_no_machine_path() -> None:
    from replication.runner import portable_argv

    argv = ["run", "E1", "--data-root", str(REPO_ROOT.parent / "shared" / "data"), "--out", "/opt/far/res"]
    assert portable_argv(argv) == ["run", "E1", "--data-root", "../shared/data", "--out", "<outside>/res"]
