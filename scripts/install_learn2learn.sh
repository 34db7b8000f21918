#!/usr/bin/env bash
# Install learn2learn 0.2.0 into a Python >= 3.11 environment.
#
# learn2learn 0.2.0 (the last release, 2023) publishes no cp311+ wheel, and its sdist ships C files generated
# by Cython 0.29 that include "longintrepr.h", which Python 3.11 moved: `pip install learn2learn` fails
# (learnables/learn2learn#413). Workaround: unpack the sdist, regenerate the C sources with Cython >= 3,
# build a wheel without build isolation and install it with --no-deps (its declared dependencies pull in
# gsutil and qpth, which only some dataset downloads need).
#
# Usage:  scripts/install_learn2learn.sh [--force]
#   PYTHON   interpreter of the target environment (default: .venv/bin/python if it exists, else python3)
#   --force  rebuild the wheel even if it is cached, and reinstall even if learn2learn 0.2.0 already imports
#   --dry-run  print the resolved interpreter and cache, run the interpreter from inside another directory (as
#              the build does) and print its sys.prefix; install nothing
# The built wheel is cached in ${XDG_CACHE_HOME:-$HOME/.cache}/metainf/wheels, so re-runs take seconds.
# All building happens in a temporary directory, removed on exit; nothing is written into the repository.
set -euo pipefail

L2L_VERSION=0.2.0
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FORCE=0
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install_learn2learn: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

abspath() { realpath -m -s -- "$1"; }
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
# the build runs inside the unpacked sdist: a relative interpreter path would not resolve there (symlinks kept)
[[ "$PYTHON" == */* ]] && PYTHON="$(abspath "$PYTHON")"
CACHE_DIR="$(abspath "${XDG_CACHE_HOME:-$HOME/.cache}")/metainf/wheels"

say() { echo "[l2l] $*"; }
STEP="start"
step() { STEP="$1"; say "$1"; }
fail() {
  echo "[l2l] ERROR while: $STEP" >&2
  [[ $# -gt 0 ]] && echo "[l2l] $*" >&2
  echo "[l2l] learn2learn is optional: metainf works without it and the learn2learn cross-check tests skip." >&2
  exit 1
}
trap 'fail "a command exited with status $? (see its output above)"' ERR

# gym (imported by learn2learn) prints a deprecation notice on stderr at import; keep it out of our output.
l2l_ok() {
  "$PYTHON" - "$L2L_VERSION" 2>/dev/null <<'EOF'
import contextlib, io, sys
with contextlib.redirect_stderr(io.StringIO()):
    import learn2learn
import importlib.metadata as md
# a build that still ships the sdist's top-level `tests` package would shadow the project's own tests/
stray = [f for f in (md.distribution("learn2learn").files or []) if str(f).split("/")[0] == "tests"]
sys.exit(0 if learn2learn.__version__ == sys.argv[1] and not stray else 1)
EOF
}

# The wheel must hold only learn2learn/ and its .dist-info (no top-level `tests` package).
wheel_ok() {
  "$PYTHON" - "$1" <<'EOF'
import sys, zipfile
tops = {n.split("/")[0] for n in zipfile.ZipFile(sys.argv[1]).namelist()}
sys.exit(0 if tops and all(t == "learn2learn" or t.startswith("learn2learn-") for t in tops) else 1)
EOF
}

command -v "$PYTHON" >/dev/null 2>&1 || fail "Python interpreter '$PYTHON' not found (set PYTHON=...)"
if [[ $DRY_RUN -eq 1 ]]; then
  say "dry run: PYTHON=$PYTHON cache=$CACHE_DIR"
  elsewhere="$(mktemp -d)"
  (cd "$elsewhere" && say "prefix from another directory: $("$PYTHON" -c 'import sys; print(sys.prefix)')")
  rmdir "$elsewhere"
  exit 0
fi
PIP=("$PYTHON" -m pip --disable-pip-version-check)

if [[ $FORCE -eq 0 ]] && l2l_ok; then
  say "learn2learn $L2L_VERSION already importable with $PYTHON: nothing to do"
  exit 0
fi

PYTAG="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
PLAT="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_platform().replace("-", "_").replace(".", "_"))')"
say "target: $PYTHON ($PYTAG, $PLAT); wheel cache: $CACHE_DIR"

step "installing build tools (Cython >= 3, setuptools, wheel)"
"${PIP[@]}" install -q 'cython>=3' setuptools wheel \
  || fail "could not install Cython >= 3 / setuptools / wheel from the package index"

CACHED="$CACHE_DIR/learn2learn-$L2L_VERSION-$PYTAG-$PYTAG-$PLAT.whl"
if [[ -f "$CACHED" ]] && ! wheel_ok "$CACHED"; then
  say "discarding cached wheel with stray top-level packages: $CACHED"
  rm -f "$CACHED"
fi
if [[ $FORCE -eq 0 && -f "$CACHED" ]]; then
  WHEEL="$CACHED"
  say "using cached wheel $WHEEL"
else
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/metainf-l2l.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  step "downloading the learn2learn $L2L_VERSION sdist"
  # --no-build-isolation: pip prepares the sdist's metadata with our Cython >= 3, so setuptools does not
  # fetch and compile Cython from source for setup_requires (that takes ~5 minutes on 2 cores).
  "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
      "learn2learn==$L2L_VERSION" -d "$WORK/dl" \
    || fail "pip could not download learn2learn==$L2L_VERSION (is the package index reachable?)"
  SDIST="$(ls "$WORK"/dl/learn2learn-"$L2L_VERSION".tar.gz 2>/dev/null)" \
    || fail "pip download did not produce learn2learn-$L2L_VERSION.tar.gz in $WORK/dl"
  tar -xzf "$SDIST" -C "$WORK"
  SRC="$WORK/learn2learn-$L2L_VERSION"
  rm -rf "$SRC/.eggs" "$SRC"/learn2learn.egg-info   # stale Cython 0.29 eggs and metadata shipped in the sdist
  # setup.py's find_packages() would also install the sdist's tests/ as a top-level `tests` package, which
  # shadows this project's tests/ (a namespace package) and breaks `from tests.fixtures_data import ...`.
  rm -rf "$SRC/tests"

  step "regenerating the C sources with Cython >= 3"
  mapfile -t PYX < <(cd "$SRC" && find learn2learn -name '*.pyx' | sort)
  [[ ${#PYX[@]} -gt 0 ]] || fail "no .pyx files found in the sdist"
  for pyx in "${PYX[@]}"; do
    say "  cython -3 $pyx"
    (cd "$SRC" && "$PYTHON" -m cython -3 "$pyx") || fail "Cython failed on $pyx"
    head -n 1 "$SRC/${pyx%.pyx}.c" | grep -q 'Generated by Cython 3' \
      || fail "${pyx%.pyx}.c was not regenerated by Cython 3"
  done

  step "building the wheel (pip wheel --no-deps --no-build-isolation; compiles 3 C extensions)"
  (cd "$SRC" && "${PIP[@]}" wheel -q --no-deps --no-build-isolation . -w "$WORK/wheel") \
    || fail "building the learn2learn wheel failed (needs a C compiler and Python headers)"
  BUILT="$WORK/wheel/$(basename "$CACHED")"
  [[ -f "$BUILT" ]] || fail "pip wheel did not produce $(basename "$CACHED"); found: $(ls "$WORK/wheel")"
  wheel_ok "$BUILT" || fail "the built wheel holds top-level packages other than learn2learn"
  mkdir -p "$CACHE_DIR"
  cp "$BUILT" "$CACHED.tmp.$$" && mv -f "$CACHED.tmp.$$" "$CACHED"   # atomic for concurrent runs
  WHEEL="$CACHED"
  say "cached $WHEEL"
fi

# Runtime dependencies first, then the wheel with --no-deps: its metadata also lists gsutil and qpth (needed only
# for some dataset downloads), which we leave out on purpose (`pip check` reports them as missing).
step "installing learn2learn's runtime dependencies gym, scipy, requests, tqdm, Cython"
"${PIP[@]}" install -q gym scipy requests tqdm 'cython>=3' \
  || fail "installing learn2learn's runtime dependencies (gym scipy requests tqdm) failed"
step "installing $(basename "$WHEEL") (--no-deps)"
"${PIP[@]}" install -q --no-deps --force-reinstall "$WHEEL" || fail "installing $WHEEL failed"

step "checking that learn2learn $L2L_VERSION imports"
if ! l2l_ok; then
  "$PYTHON" -c 'import learn2learn' || true
  fail "learn2learn was installed but does not import (traceback above)"
fi
trap - ERR
say "learn2learn $L2L_VERSION installed into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
