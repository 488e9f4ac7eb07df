#!/usr/bin/env bash
# The main job on the tiny CPU config: sets up ./.venv, then synthesis → SFT → GRPO → eval → HF export.
# Extra arguments go to `r1ov demo` (e.g. --out DIR, --config.sft.train.steps=100).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec r1ov demo --out runs/demo "$@"
