#!/usr/bin/env bash
# Create .venv and install veloxseg with the CPU build of PyTorch (never a multi-GB CUDA build).
# Usage: bash scripts/setup.sh [test]     (default: the train extra, which the demo needs; "test": the test extras)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
extras="[train]"
[ "${1:-}" = "test" ] && extras="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints-cpu.txt "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e ".${extras}"
