#!/usr/bin/env bash
# GPU smoke check of the device path, end to end (about 10 minutes on one GPU):
#   1. the device and dtype tests (tests/test_runtime_device.py) run for cuda as well as cpu;
#   2. every experiment at smoke scale with --device cuda into a temporary results folder: E0 (MAML, float32), E1
#      (Conv-4 regime: training, damping, TRAK, DVEmb-Fisher, TracIn-CP, removal; float32 and float64), E2 (both
#      noisy pools), E3 (influence vs converged and trajectory leave-one-out, float64 and float32; on Omniglot also
#      the Conv-4 LDS and warm-start leave-one-out), E4 (ablation grid and frontier), E5 (cost, Nystrom), E6
#      (phase split); scores and ground truths are compared on the CPU only through the committed results;
#   3. the paper-scale estimate of E1 on Omniglot on the GPU (--estimate-only: one measured outer step, seconds).
# The device fixes of 2026-12-05 (tensors drawn on the CPU generator and moved, .cpu() before .numpy()) were made by
# reading the code on a CPU-only machine; this script is how a GPU user confirms them.
# Usage: scripts/gpu_check.sh [python]   (default: .venv/bin/python if present, else python3). Exit 2 without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled WANDB_SILENT=true
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)"; then
  echo "gpu_check: torch sees no CUDA device here (torch.cuda.is_available() is False)" >&2
  exit 2
fi
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
start=$SECONDS
"$PY" -m pytest -q tests/test_runtime_device.py
run() { "$PY" -m replication.cli run "$@" --scale smoke --device cuda --wandb disabled; }
run E0 --out "$OUT"
run E1 --dataset mnist --out "$OUT"
run E1 --dataset mnist --dtype float64 --out "$OUT/f64"
run E2 --dataset mnist --out "$OUT"
run E3 --dataset mnist --out "$OUT"
run E3 --dataset mnist --dtype float32 --out "$OUT/f32"
run E4 --dataset mnist --out "$OUT"
run E5 --dataset mnist --out "$OUT"
run E6 --dataset mnist --out "$OUT"
if "$PY" -m replication.cli data info omniglot >/dev/null 2>&1; then  # the Conv-4 parts of E2, E3 and E6
  run E2 --dataset omniglot --out "$OUT"
  run E3 --dataset omniglot --out "$OUT"
  run E6 --dataset omniglot --out "$OUT"
fi
"$PY" -m replication.cli run E1 --dataset omniglot --scale paper --device cuda --estimate-only --out "$OUT" \
  --wandb disabled
echo "gpu_check: OK in $((SECONDS - start)) s"
