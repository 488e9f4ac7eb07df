#!/usr/bin/env bash
# Checks an `r1ov` command against the job size and submits launch/slurm_gpu.sbatch with the right options.
#
#   launch/slurm_submit.sh --nodes 2 [--gpus-per-node 8] [--partition P] [--dry-run] \
#       -- sft --config configs/qwen2_5_vl_7b_sft.py --config.mesh.data=2 --config.mesh.fsdp=8 ...
#
# --dry-run prints the sbatch command and then what the job will run (its environment and the srun line), with
# placeholder node names.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=launch/common.sh
. "$HERE/common.sh"

usage() {
  cat <<'EOF'
usage: launch/slurm_submit.sh --nodes N [options] -- R1OV_SUBCOMMAND ARGS...

where:
  --nodes N              nodes; one r1ov process per node                         (required)
  --gpus-per-node G      GPUs per node, all used by that process (default 8)
  --partition P, --account A, --qos Q
  --time T               wall-clock limit, e.g. 24:00:00 (the job checkpoints and requeues itself before it)
  --job-name NAME        default r1ov-<subcommand>
  --venv DIR             virtualenv on the shared filesystem (default: <repo>/.venv)
  --log-dir DIR          batch log + per-node logs (default: <repo>/runs/slurm)
  --port PORT            jax.distributed coordinator port (default: derived from the job id)
  --out-dir DIR          run directory for `sft`/`grpo` (passed as --out) on the shared filesystem
  --env KEY=VALUE        extra environment for the job (repeatable), e.g. NCCL_SOCKET_IFNAME=ib0
  --no-requeue           at the time limit only checkpoint and stop (default: checkpoint and requeue)
  --sbatch-arg ARG       any other sbatch option, e.g. --sbatch-arg=--constraint=h100 (repeatable)
  --dry-run              print the commands instead of submitting
  -h, --help             this text
EOF
}

NODES="" GPUS=8 PARTITION="" ACCOUNT="" QOS="" TIME="" JOB_NAME="" VENV="" LOG_DIR="" PORT="" OUT_DIR=""
REQUEUE=1
ENVS=()
EXTRA=()
R1OV_ARGS=()
HAVE_CMD=0

while (($#)); do
  case $1 in
    --nodes) need_arg "$1" $# && NODES=$2 && shift ;;
    --gpus-per-node) need_arg "$1" $# && GPUS=$2 && shift ;;
    --partition) need_arg "$1" $# && PARTITION=$2 && shift ;;
    --account) need_arg "$1" $# && ACCOUNT=$2 && shift ;;
    --qos) need_arg "$1" $# && QOS=$2 && shift ;;
    --time) need_arg "$1" $# && TIME=$2 && shift ;;
    --job-name) need_arg "$1" $# && JOB_NAME=$2 && shift ;;
    --venv) need_arg "$1" $# && VENV=$2 && shift ;;
    --log-dir) need_arg "$1" $# && LOG_DIR=$2 && shift ;;
    --port) need_arg "$1" $# && PORT=$2 && shift ;;
    --out-dir) need_arg "$1" $# && OUT_DIR=$2 && shift ;;
    --env) need_arg "$1" $# && check_env_kv "$2" && ENVS+=("$2") && shift ;;
    --no-requeue) REQUEUE=0 ;;
    --sbatch-arg) need_arg "$1" $# && EXTRA+=("$2") && shift ;;
    --sbatch-arg=*) EXTRA+=("${1#--sbatch-arg=}") ;;
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
[[ -n $NODES ]] || die "--nodes N is required"
check_pos_int --nodes "$NODES"
check_pos_int --gpus-per-node "$GPUS"
((GPUS <= 16)) || die "--gpus-per-node $GPUS: more GPUs than any node has (one process per node uses them all)"
if [[ -n $PORT ]] && ! { [[ $PORT =~ ^[0-9]+$ ]] && ((PORT >= 1024 && PORT <= 65535)); }; then
  die "--port must be in 1024-65535, got '$PORT'"
fi
if [[ -n $TIME && ! $TIME =~ ^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$ ]]; then
  die "--time '$TIME': use minutes, H:MM:SS or D-HH:MM:SS"
fi
((HAVE_CMD)) || die "no r1ov command given: put it after '--', e.g. -- sft --config configs/qwen2_5_vl_7b_sft.py"
normalize_r1ov_args "${R1OV_ARGS[@]}"
apply_out_dir "$OUT_DIR"
NDEV=$((NODES * GPUS))
note "$NODES node(s) x $GPUS GPUs: $NDEV JAX devices, $NODES process(es)"
check_mesh "$NDEV" "${R1OV_ARGS[@]}"
[[ -n $JOB_NAME ]] || JOB_NAME="r1ov-${R1OV_ARGS[0]}"
[[ -n $LOG_DIR ]] || LOG_DIR=$ROOT/runs/slurm
[[ -n $VENV ]] || VENV=$ROOT/.venv
need_tool sbatch "run this on a SLURM login node"
if [[ $DRY_RUN != 1 && ! -f $VENV/bin/activate ]]; then
  die "no virtualenv at $VENV: create it on the shared filesystem first (see launch/README.md) or pass --venv"
fi

# ---- the job's environment (sbatch passes the submitting environment through to the job) ----
JOB_ENV=(R1OV_REPO="$ROOT" R1OV_VENV="$VENV" R1OV_LOG_DIR="$LOG_DIR" R1OV_REQUEUE="$REQUEUE")
[[ -z $PORT ]] || JOB_ENV+=(R1OV_COORDINATOR_PORT="$PORT")
JOB_ENV+=("${ENVS[@]}")

SB=(sbatch --job-name="$JOB_NAME" --nodes="$NODES" --ntasks-per-node=1 --gpus-per-node="$GPUS"
  --chdir="$ROOT" --output="$LOG_DIR/%x-%j.out")
[[ -z $PARTITION ]] || SB+=(--partition="$PARTITION")
[[ -z $ACCOUNT ]] || SB+=(--account="$ACCOUNT")
[[ -z $QOS ]] || SB+=(--qos="$QOS")
[[ -z $TIME ]] || SB+=(--time="$TIME")
((REQUEUE)) || SB+=(--no-requeue)
SB+=("${EXTRA[@]}" "$HERE/slurm_gpu.sbatch" "${R1OV_ARGS[@]}")

run mkdir -p "$LOG_DIR"
run env "${JOB_ENV[@]}" "${SB[@]}"

if ((DRY_RUN)); then
  placeholder_nodes=""
  for ((i = 0; i < NODES; i++)); do
    placeholder_nodes+="${placeholder_nodes:+ }node-$i"
  done
  note "---- the job then runs (job id 0 and node names node-0..node-$((NODES - 1)) are placeholders) ----"
  env "${JOB_ENV[@]}" R1OV_DRY_RUN=1 R1OV_DRY_RUN_NODES="$placeholder_nodes" SLURM_JOB_ID=0 \
    SLURM_JOB_NUM_NODES="$NODES" SLURM_GPUS_PER_NODE="$GPUS" SLURM_SUBMIT_DIR="$ROOT" \
    bash "$HERE/slurm_gpu.sbatch" "${R1OV_ARGS[@]}"
fi
