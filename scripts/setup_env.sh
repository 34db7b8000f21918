#!/usr/bin/env bash
# Create or update the project virtualenv (what `make venv` runs).
#
#   PYTHON=python3 VENV=.venv scripts/setup_env.sh
#
# PYTHON, VENV and XDG_CACHE_HOME may be relative (to the working directory this is called from), absolute, or
# hold spaces: every path handed on is absolute.
#
# 1. `$PYTHON -m venv $VENV` if $VENV/bin/python is missing;
# 2. torch==2.14.1 torchvision==0.29.1 (plain pip: taken from the machine's local wheel cache when present);
# 3. `pip install -e '.[dev,wandb]'` (the metainf package, tests, dattri cross-checks, W&B);
# 4. learn2learn 0.2.0 through scripts/install_learn2learn.sh (skip with METAINF_SKIP_L2L=1).
# A stamp file $VENV/.metainf-setup-<hash of pyproject.toml and the two setup scripts> marks a finished setup,
# so a second call is a no-op until one of those files changes. Set METAINF_FORCE_SETUP=1 to redo it anyway.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# abspath P: P made absolute against the caller's working directory and normalised, symlinks kept (a venv's
# bin/python is a symlink to the base interpreter: resolving it would install into the wrong environment).
abspath() { realpath -m -s -- "$1"; }
PYTHON="${PYTHON:-python3}"
# an interpreter given as a path (it holds a slash) is made absolute; a bare name is looked up on PATH
[[ "$PYTHON" == */* ]] && PYTHON="$(abspath "$PYTHON")"
VENV="$(abspath "${VENV:-.venv}")"
[[ -n "${XDG_CACHE_HOME:-}" ]] && export XDG_CACHE_HOME="$(abspath "$XDG_CACHE_HOME")"
cd "$REPO_ROOT"
TORCH_SPEC=(torch==2.14.1 torchvision==0.29.1)

say() { echo "[venv] $*"; }
STEP="start"
step() { STEP="$1"; say "$1"; }
fail() { echo "[venv] ERROR while: $STEP${1:+: $1}" >&2; exit 1; }
trap 'fail "a command exited with status $? (see its output above)"' ERR

hash_of() {
  # sha256 of the files that define the environment (+ the L2L switch), first 12 hex digits
  { cat pyproject.toml scripts/setup_env.sh scripts/install_learn2learn.sh; echo "skip_l2l=${METAINF_SKIP_L2L:-0}"; } \
    | sha256sum | cut -c1-12
}
STAMP="$VENV/.metainf-setup-$(hash_of)"

if [[ "${METAINF_SETUP_DRY_RUN:-0}" == 1 ]]; then
  # print the resolved paths and let the learn2learn script run the venv's interpreter from inside another
  # directory, as its build does; install nothing (tests/test_setup_paths.py)
  say "dry run: PYTHON=$PYTHON VENV=$VENV XDG_CACHE_HOME=${XDG_CACHE_HOME:-}"
  PYTHON="$VENV/bin/python" bash "$REPO_ROOT/scripts/install_learn2learn.sh" --dry-run
  exit 0
fi

if [[ -f "$STAMP" && -x "$VENV/bin/python" && "${METAINF_FORCE_SETUP:-0}" != 1 ]]; then
  say "$VENV is up to date ($(basename "$STAMP"))"
  exit 0
fi

T0=$SECONDS
if [[ ! -x "$VENV/bin/python" ]]; then
  step "creating $VENV with $PYTHON"
  command -v "$PYTHON" >/dev/null 2>&1 || fail "Python interpreter '$PYTHON' not found (set PYTHON=...)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || fail "metainf needs Python >= 3.10; '$PYTHON' is $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv "$VENV" || fail "python -m venv failed (on Debian: apt-get install python3-venv)"
else
  say "reusing $VENV ($("$VENV/bin/python" -V 2>&1))"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

step "installing ${TORCH_SPEC[*]}"
"${PIP[@]}" install -q "${TORCH_SPEC[@]}" || fail "could not install ${TORCH_SPEC[*]}"

step "installing metainf in editable mode with extras [dev,wandb]"
"${PIP[@]}" install -q -e ".[dev,wandb]" || fail "pip install -e '.[dev,wandb]' failed"

if [[ "${METAINF_SKIP_L2L:-0}" == 1 ]]; then
  say "METAINF_SKIP_L2L=1: not installing learn2learn (its cross-check tests will skip)"
else
  step "installing learn2learn 0.2.0 (scripts/install_learn2learn.sh)"
  PYTHON="$VENV/bin/python" bash "$REPO_ROOT/scripts/install_learn2learn.sh" || fail "learn2learn install failed (METAINF_SKIP_L2L=1 skips it)"
fi

rm -f "$VENV"/.metainf-setup-*
touch "$STAMP"
say "done in $((SECONDS - T0)) s: $VENV ready ($(basename "$STAMP"))"
