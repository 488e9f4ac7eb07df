#!/usr/bin/env bash
# The test command: sets up ./.venv, then runs the whole suite on CPU.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh || { echo "environment setup failed" >&2; exit 1; }
# shellcheck disable=SC1091
. .venv/bin/activate
export JAX_PLATFORMS=cpu
python -m ruff check r1ov_jax kernels configs benchmarks tests || { echo "ruff found errors" >&2; exit 1; }
python -m ruff format --check r1ov_jax kernels configs benchmarks tests \
  || { echo "unformatted code: run 'ruff format r1ov_jax kernels configs benchmarks tests'" >&2; exit 1; }
# Two workers by default (R1OV_TEST_WORKERS=0: one process); whole files per worker so module fixtures run once,
# handed out in collection order (tests/conftest.py puts the longest files first), not by test count.
python -m pytest -q -n "${R1OV_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
