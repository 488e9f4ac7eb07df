#!/usr/bin/env bash
# Runs an `r1ov` command on every worker of a Cloud TPU VM pod slice, through gcloud.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project P] [--accelerator v5p-64 --create] \
#       [--sync | --repo-url URL [--ref REF]] [--out-dir /mnt/shared/runs/sft] [--dry-run] \
#       -- sft --config configs/qwen2_5_vl_7b_sft.py --config.mesh.fsdp=32 ...
#
# Steps (each one command, all printed by --dry-run): [create the TPU VM] → [copy the working tree (--sync) or
# clone (--repo-url) to every worker] → [venv + jax[tpu] + pip install -e .] → run the command on all workers at
# once (gcloud ... ssh --worker=all), each worker teeing its output to LOG_DIR/RUN-<hostname>.log.
# Multi-host set-up needs nothing here: on a TPU VM `jax.distributed.initialize()` finds the other workers itself.
# See launch/README.md for the paper-scale recipes and the mesh shapes.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=launch/common.sh
. "$HERE/common.sh"

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --tpu NAME --zone ZONE [options] [-- R1OV_SUBCOMMAND ARGS...]

where:
  --tpu NAME             TPU VM name                                   (required)
  --zone ZONE            its zone, e.g. us-east5-a                      (required)
  --project P            GCP project (default: gcloud's configured one)
  --accelerator TYPE     e.g. v5p-64, v4-32, v6e-16: needed by --create; also checks the mesh overrides
  --create               create the TPU VM first (gcloud compute tpus tpu-vm create)
  --version V            TPU runtime for --create (default from the type: v5p → v2-alpha-tpuv5, ...)
  --spot                 create as a Spot TPU (preemptible; see README: preemption)
  --sync                 copy this working tree (tracked + untracked, not .gitignore'd) to every worker
  --repo-url URL         or: git clone URL on every worker (existing clones are updated)
  --ref REF              branch/tag/commit to check out with --repo-url
  --remote-dir DIR       code folder on the workers, relative to home (default r1ov-jax)
  --python BIN           interpreter for the venv (default python3; jax >= 0.7 needs Python >= 3.11)
  --skip-install         do not (re)install the venv
  --out-dir DIR          run directory for `sft`/`grpo` (passed as --out) on storage all workers share
                         (Filestore/NFS or a gcsfuse-mounted bucket); required for multi-host checkpoints
  --log-dir DIR          per-worker logs; relative = in the home directory (default: OUT_DIR/logs with
                         --out-dir, else r1ov-logs)
  --run-name NAME        names the log files (default r1ov-<subcommand>-<date>)
  --env KEY=VALUE        extra environment for the command (repeatable; after the defaults, so it wins)
  --worker W             run on one worker only, e.g. 0 for export-hf (default: all)
  --detach               start the command in the background (nohup) and return; follow the logs
  --kill-stale           first kill processes still holding the TPU devices (a crashed previous run)
  --iap                  ssh/scp through IAP (workers without external IPs)
  --dry-run              print every command instead of running it
  -h, --help             this text

Nothing after `--` means: only create / copy / install.
EOF
}

TPU="" ZONE="" PROJECT="" ACCEL="" CREATE=0 VERSION="" SPOT=0 SYNC=0 REPO_URL="" REF="" REMOTE_DIR=r1ov-jax
PYTHON=python3 SKIP_INSTALL=0 OUT_DIR="" LOG_DIR="" RUN_NAME="" WORKER=all DETACH=0 KILL_STALE=0 IAP=0
ENVS=()
R1OV_ARGS=()
HAVE_CMD=0

while (($#)); do
  case $1 in
    --tpu) need_arg "$1" $# && TPU=$2 && shift ;;
    --zone) need_arg "$1" $# && ZONE=$2 && shift ;;
    --project) need_arg "$1" $# && PROJECT=$2 && shift ;;
    --accelerator) need_arg "$1" $# && ACCEL=$2 && shift ;;
    --create) CREATE=1 ;;
    --version) need_arg "$1" $# && VERSION=$2 && shift ;;
    --spot) SPOT=1 ;;
    --sync) SYNC=1 ;;
    --repo-url) need_arg "$1" $# && REPO_URL=$2 && shift ;;
    --ref) need_arg "$1" $# && REF=$2 && shift ;;
    --remote-dir) need_arg "$1" $# && REMOTE_DIR=$2 && shift ;;
    --python) need_arg "$1" $# && PYTHON=$2 && shift ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --out-dir) need_arg "$1" $# && OUT_DIR=$2 && shift ;;
    --log-dir) need_arg "$1" $# && LOG_DIR=$2 && shift ;;
    --run-name) need_arg "$1" $# && RUN_NAME=$2 && shift ;;
    --env) need_arg "$1" $# && check_env_kv "$2" && ENVS+=("$2") && shift ;;
    --worker) need_arg "$1" $# && WORKER=$2 && shift ;;
    --detach) DETACH=1 ;;
    --kill-stale) KILL_STALE=1 ;;
    --iap) IAP=1 ;;
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

# ---- validate everything before touching any machine ----
[[ -n $TPU ]] || die "--tpu NAME is required"
[[ $TPU =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--tpu '$TPU': lowercase letters, digits and '-', starting with a letter"
[[ -n $ZONE ]] || die "--zone ZONE is required"
((SYNC == 0 || ${#REPO_URL} == 0)) || die "--sync and --repo-url are exclusive: copy this tree or clone, not both"
[[ -z $REF || -n $REPO_URL ]] || die "--ref needs --repo-url"
[[ $WORKER == all ]] || is_uint "$WORKER" || die "--worker must be 'all' or a worker number, got '$WORKER'"
[[ $REMOTE_DIR != /* && $REMOTE_DIR != *..* && -n $REMOTE_DIR ]] || die "--remote-dir is a folder inside the home directory, got '$REMOTE_DIR'"
if ((CREATE)); then
  [[ -n $ACCEL ]] || die "--create needs --accelerator (e.g. v5p-64)"
fi
TPU_DEVICES=""
TPU_HOSTS=""
if [[ -n $ACCEL ]]; then
  tpu_topology "$ACCEL"
  [[ -z $TPU_DEVICES ]] || note "$ACCEL: $TPU_DEVICES JAX devices on $TPU_HOSTS worker(s)"
  if [[ -z $VERSION ]]; then
    case $ACCEL in
      v5p-*) VERSION=v2-alpha-tpuv5 ;;
      v5litepod-* | v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
      v6e-*) VERSION=v2-alpha-tpuv6e ;;
      v2-* | v3-* | v4-*) VERSION=tpu-ubuntu2204-base ;;
      *) ((CREATE == 0)) || die "no default runtime for '$ACCEL': pass --version" ;;
    esac
  fi
fi
if ((HAVE_CMD)); then
  normalize_r1ov_args "${R1OV_ARGS[@]}"
  apply_out_dir "$OUT_DIR"
  if [[ $WORKER == all ]]; then
    check_mesh "$TPU_DEVICES" "${R1OV_ARGS[@]}"
  else
    check_mesh "" "${R1OV_ARGS[@]}"
  fi
  [[ -n $RUN_NAME ]] || RUN_NAME="r1ov-${R1OV_ARGS[0]}-$(date +%Y%m%d-%H%M%S)"
  [[ $RUN_NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "--run-name '$RUN_NAME': letters, digits, '.', '_' and '-' only"
else
  [[ -z $OUT_DIR ]] || die "--out-dir given but no r1ov command after '--'"
fi
[[ -n $LOG_DIR ]] || LOG_DIR=${OUT_DIR:+$OUT_DIR/logs}
[[ -n $LOG_DIR ]] || LOG_DIR=r1ov-logs
need_tool gcloud "install the Google Cloud CLI"

GCLOUD_COMMON=(--zone="$ZONE")
[[ -z $PROJECT ]] || GCLOUD_COMMON+=(--project="$PROJECT")
SSH_EXTRA=()
((IAP == 0)) || SSH_EXTRA+=(--tunnel-through-iap)

# on_workers WORKER SCRIPT: runs SCRIPT (a bash command line) on the worker(s) through gcloud ssh.
on_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU" "${GCLOUD_COMMON[@]}" --worker="$1" "${SSH_EXTRA[@]}" --command "$2"
}

# ---- 1. create ----
if ((CREATE)); then
  create=(gcloud compute tpus tpu-vm create "$TPU" "${GCLOUD_COMMON[@]}" --accelerator-type="$ACCEL" --version="$VERSION")
  ((SPOT == 0)) || create+=(--spot)
  run "${create[@]}"
fi

RD=$(shquote "$REMOTE_DIR")

# ---- 2. code ----
if ((SYNC)); then
  if ((DRY_RUN)); then
    tgz=${TMPDIR:-/tmp}/r1ov-code.tar.gz
  else
    tgz=$(mktemp "${TMPDIR:-/tmp}/r1ov-code.XXXXXX")
    trap 'rm -f "$tgz"' EXIT
  fi
  pack_code "$ROOT" "$tgz"
  run gcloud compute tpus tpu-vm scp "$tgz" "$TPU:$REMOTE_DIR.tar.gz" "${GCLOUD_COMMON[@]}" --worker=all "${SSH_EXTRA[@]}"
  on_workers all "mkdir -p $RD && tar -xzf $RD.tar.gz -C $RD && rm -f $RD.tar.gz"
elif [[ -n $REPO_URL ]]; then
  url=$(shquote "$REPO_URL")
  if [[ -n $REF ]]; then
    update="git -C $RD fetch -q origin $(shquote "$REF") && git -C $RD checkout -q FETCH_HEAD"
  else
    update="git -C $RD pull -q --ff-only"
  fi
  on_workers all "{ [ -d $RD/.git ] || git clone -q $url $RD; } && $update"
fi

# ---- 3. install ----
if ((SKIP_INSTALL == 0)); then
  py=$(shquote "$PYTHON")
  # Ubuntu images may lack the venv module: install it once if creating the venv fails.
  on_workers all "cd $RD && { [ -x .venv/bin/pip ] || $py -m venv .venv || { rm -rf .venv && sudo apt-get -q update && sudo apt-get -q install -y python3-venv && $py -m venv .venv; }; } && . .venv/bin/activate && python -m pip install -q -U pip && python -m pip install -q -U \"jax[tpu]\" && python -m pip install -q -e ."
fi

# ---- 4. run ----
if ((HAVE_CMD)); then
  env_words=(JAX_PLATFORMS=tpu R1OV_DISTRIBUTED=1 "${ENVS[@]}")
  exports=""
  for kv in "${env_words[@]}"; do
    exports+=" $(shquote "$kv")"
  done
  cmd=$(join_cmd r1ov "${R1OV_ARGS[@]}")
  ld=$(shquote "$LOG_DIR")
  # a relative log dir is relative to the home directory (the command itself runs in the code folder)
  [[ $LOG_DIR == /* ]] || ld="\"\$HOME\"/$ld"
  log="$ld/$(shquote "$RUN_NAME")-\$(hostname).log"
  pre="cd $RD || { echo \"no code in $RD on \$(hostname): use --sync or --repo-url\" >&2; exit 1; }; . .venv/bin/activate && mkdir -p $ld && export$exports"
  if ((KILL_STALE)); then
    pre="sudo lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null | sort -u | xargs -r sudo kill -9; $pre"
  fi
  note "r1ov command: $cmd"
  shown=$LOG_DIR
  [[ $LOG_DIR == /* ]] || shown="\$HOME/$LOG_DIR"
  note "logs: $shown/$RUN_NAME-<worker hostname>.log on each worker"
  if ((DETACH)); then
    on_workers "$WORKER" "$pre && { nohup $cmd > $log 2>&1 < /dev/null & echo \"started on \$(hostname): pid \$!\"; }"
    note "detached: follow with: $(join_cmd gcloud compute tpus tpu-vm ssh "$TPU" "${GCLOUD_COMMON[@]}" --worker=0 --command "tail -f $ld/$RUN_NAME-*.log")"
  else
    on_workers "$WORKER" "set -o pipefail; $pre && $cmd 2>&1 | tee $log"
  fi
fi
