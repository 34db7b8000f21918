#!/usr/bin/env bash
# GPU smoke check of the device path, end to end (about 5 minutes on one GPU; at most 8):
#   1. the device and dtype tests (tests/test_runtime_device.py) run for cuda as well as cpu;
#   2. E0 (MAML, float32) and E3 (influence vs leave-one-out, float64 and float32) run at smoke scale with
#      --device cuda into a temporary results folder;
#   3. the paper-scale estimate of E1 on Omniglot on the GPU (--estimate-only: one measured outer step, seconds).
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
"$PY" -m replication.cli run E0 --scale smoke --device cuda --out "$OUT" --wandb disabled
"$PY" -m replication.cli run E3 --dataset mnist --scale smoke --device cuda --out "$OUT" --wandb disabled
"$PY" -m replication.cli run E3 --dataset mnist --scale smoke --device cuda --dtype float32 --out "$OUT/f32" \
  --wandb disabled
"$PY" -m replication.cli run E1 --dataset omniglot --scale paper --device cuda --estimate-only --out "$OUT" \
  --wandb disabled
echo "gpu_check: OK in $((SECONDS - start)) s"
