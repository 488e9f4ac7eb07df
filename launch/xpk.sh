#!/usr/bin/env bash
# Runs an `r1ov` command as an xpk workload on a GKE TPU cluster (one or more slices).
#
#   launch/xpk.sh --cluster C --tpu-type v5p-64 [--num-slices 1] [--project P --zone Z] [--workload NAME] \
#       [--docker-image IMG | --base-docker-image python:3.11] [--out-dir /mnt/runs/sft] [--dry-run] \
#       -- sft --config configs/qwen2_5_vl_7b_sft.py --config.mesh.fsdp=32 ...
#
# With a base image (the default), xpk builds an image from a clean copy of this working tree (tracked +
# untracked files, without what .gitignore excludes) and the container installs jax[tpu] + the package before
# running; with --docker-image the image must already hold both (the command runs in its working directory).
# xpk sets the TPU worker environment, so `jax.distributed.initialize()` needs nothing from here.
# See launch/README.md for recipes, mesh shapes and preemption.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=launch/common.sh
. "$HERE/common.sh"

usage() {
  cat <<'EOF'
usage: launch/xpk.sh --cluster C --tpu-type TYPE [options] -- R1OV_SUBCOMMAND ARGS...

where:
  --cluster C              GKE cluster made with `xpk cluster create`          (required)
  --tpu-type TYPE          e.g. v5p-64, v6e-256                                 (required)
  --num-slices N           slices (default 1); the data axis should be a multiple of N (see README)
  --project P, --zone Z    passed to xpk (default: gcloud's configured ones)
  --workload NAME          workload name (lowercase, <= 40 chars; default r1ov-<subcommand>-<time>)
  --docker-image IMG       a ready image with jax[tpu] and r1ov-jax installed (no install at start)
  --base-docker-image IMG  base image xpk adds this tree to (default python:3.11); installs at start
  --out-dir DIR            run directory for `sft`/`grpo` (passed as --out) on storage all pods share
                           (e.g. a bucket attached with `xpk storage attach`, mounted in the pods)
  --log-dir DIR            also tee each pod's output to DIR/WORKLOAD-<hostname>.log (default: OUT_DIR/logs
                           with --out-dir; else only `kubectl logs` / Cloud Logging)
  --env KEY=VALUE          extra container environment (repeatable)
  --max-restarts N         JobSet restarts after a failure or preemption (default 3; resume is automatic)
  --grace-period S         seconds between SIGTERM and SIGKILL on preemption (default 300: time to checkpoint)
  --priority P             very-low | low | medium | high | very-high
  --spot                   run on Spot capacity
  --dry-run                print every command instead of running it
  -h, --help               this text
EOF
}

CLUSTER="" TPU_TYPE="" NUM_SLICES=1 PROJECT="" ZONE="" WORKLOAD="" DOCKER_IMAGE="" BASE_IMAGE="" OUT_DIR=""
LOG_DIR="" MAX_RESTARTS=3 GRACE=300 PRIORITY="" SPOT=0
ENVS=()
R1OV_ARGS=()
HAVE_CMD=0

while (($#)); do
  case $1 in
    --cluster) need_arg "$1" $# && CLUSTER=$2 && shift ;;
    --tpu-type) need_arg "$1" $# && TPU_TYPE=$2 && shift ;;
    --num-slices) need_arg "$1" $# && NUM_SLICES=$2 && shift ;;
    --project) need_arg "$1" $# && PROJECT=$2 && shift ;;
    --zone) need_arg "$1" $# && ZONE=$2 && shift ;;
    --workload) need_arg "$1" $# && WORKLOAD=$2 && shift ;;
    --docker-image) need_arg "$1" $# && DOCKER_IMAGE=$2 && shift ;;
    --base-docker-image) need_arg "$1" $# && BASE_IMAGE=$2 && shift ;;
    --out-dir) need_arg "$1" $# && OUT_DIR=$2 && shift ;;
    --log-dir) need_arg "$1" $# && LOG_DIR=$2 && shift ;;
    --env) need_arg "$1" $# && check_env_kv "$2" && ENVS+=("$2") && shift ;;
    --max-restarts) need_arg "$1" $# && MAX_RESTARTS=$2 && shift ;;
    --grace-period) need_arg "$1" $# && GRACE=$2 && shift ;;
    --priority) need_arg "$1" $# && PRIORITY=$2 && shift ;;
    --spot) SPOT=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      HAVE_CMD=1
      R1OV_ARGS=("$@")
      break
      ;;
    *) die "unknown option '$1' (the r1ov command goes after '--'; see --help)" ;;
  esac
  shift
done

# ---- validate ----
[[ -n $CLUSTER ]] || die "--cluster is required"
[[ -n $TPU_TYPE ]] || die "--tpu-type is required (e.g. v5p-64)"
check_pos_int --num-slices "$NUM_SLICES"
is_uint "$MAX_RESTARTS" || die "--max-restarts must be a non-negative integer, got '$MAX_RESTARTS'"
check_pos_int --grace-period "$GRACE"
[[ -z $DOCKER_IMAGE || -z $BASE_IMAGE ]] || die "--docker-image and --base-docker-image are exclusive"
case $PRIORITY in
  "" | very-low | low | medium | high | very-high) ;;
  *) die "--priority '$PRIORITY': one of very-low, low, medium, high, very-high" ;;
esac
((HAVE_CMD)) || die "no r1ov command given: put it after '--', e.g. -- sft --config configs/qwen2_5_vl_7b_sft.py"
normalize_r1ov_args "${R1OV_ARGS[@]}"
apply_out_dir "$OUT_DIR"
tpu_topology "$TPU_TYPE"
NDEV=""
if [[ -n $TPU_DEVICES ]]; then
  NDEV=$((TPU_DEVICES * NUM_SLICES))
  note "$NUM_SLICES x $TPU_TYPE: $NDEV JAX devices on $((TPU_HOSTS * NUM_SLICES)) pod(s)"
fi
check_mesh "$NDEV" "${R1OV_ARGS[@]}"
[[ -n $WORKLOAD ]] || WORKLOAD="r1ov-${R1OV_ARGS[0]}-$(date +%m%d-%H%M%S)"
if ((${#WORKLOAD} > 40)) || ! [[ $WORKLOAD =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]]; then
  die "--workload '$WORKLOAD': lowercase letters, digits and '-', starting with a letter, at most 40 characters"
fi
[[ -n $LOG_DIR ]] || LOG_DIR=${OUT_DIR:+$OUT_DIR/logs}
need_tool xpk "pip install xpk"

# ---- the command each pod runs (bash, in the image's working directory) ----
cmd=$(join_cmd r1ov "${R1OV_ARGS[@]}")
script="set -o pipefail; "
if [[ -z $DOCKER_IMAGE ]]; then
  script+="python -m pip install -q -U \"jax[tpu]\" && python -m pip install -q -e . && "
fi
if [[ -n $LOG_DIR ]]; then
  ld=$(shquote "$LOG_DIR")
  script+="mkdir -p $ld && $cmd 2>&1 | tee $ld/$WORKLOAD-\$(hostname).log"
  note "logs: $LOG_DIR/$WORKLOAD-<pod hostname>.log, and kubectl logs / Cloud Logging"
else
  script+="$cmd"
fi

xpk=(xpk workload create --cluster "$CLUSTER" --workload "$WORKLOAD" --tpu-type "$TPU_TYPE"
  --num-slices "$NUM_SLICES" --max-restarts "$MAX_RESTARTS" --termination-grace-period-seconds "$GRACE")
[[ -z $PROJECT ]] || xpk+=(--project "$PROJECT")
[[ -z $ZONE ]] || xpk+=(--zone "$ZONE")
[[ -z $PRIORITY ]] || xpk+=(--priority "$PRIORITY")
((SPOT == 0)) || xpk+=(--spot)
xpk+=(--env JAX_PLATFORMS=tpu)
for kv in "${ENVS[@]}"; do
  xpk+=(--env "$kv")
done

if [[ -n $DOCKER_IMAGE ]]; then
  xpk+=(--docker-image "$DOCKER_IMAGE")
else
  # xpk copies --script-dir into the image: hand it a clean copy of the tree, not the venv and run folders.
  if ((DRY_RUN)); then
    stage=${TMPDIR:-/tmp}/r1ov-xpk-src
  else
    stage=$(mktemp -d "${TMPDIR:-/tmp}/r1ov-xpk-src.XXXXXX")
    trap 'rm -rf "$stage" "$stage.tar.gz"' EXIT
  fi
  pack_code "$ROOT" "$stage.tar.gz"
  run mkdir -p "$stage"
  run tar -xzf "$stage.tar.gz" -C "$stage"
  ((DRY_RUN)) || rm -f "$stage.tar.gz"
  xpk+=(--base-docker-image "${BASE_IMAGE:-python:3.11}" --script-dir "$stage")
fi
xpk+=(--command "$script")
note "r1ov command: $cmd"
run "${xpk[@]}"
