#!/usr/bin/env bash
# Creates (or reuses) ./.venv and installs r1ov-jax with its test extra. Source it or run it; idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# The parity references need torch on CPU only: prefer the CPU build (small), fall back to plain torch elsewhere.
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
    || python -m pip install -q torch
fi
python -m pip install -q -e ".[test,tpu]"
