# shellcheck shell=bash
# Helpers shared by launch/tpu_pod.sh, launch/xpk.sh and launch/slurm_submit.sh (sourced, never run).
#
# Conventions: user mistakes print one "error: ..." line and exit 2; `--dry-run` prints every command as one
# shell-quoted line (copy-paste runnable) and notes as lines starting with "# ".

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "error: the launch scripts need bash >= 4.4 (this is $BASH_VERSION; on macOS: brew install bash)" >&2
  exit 2
fi

DRY_RUN=${DRY_RUN:-0}
# Subcommands of the `r1ov` CLI (r1ov_jax/cli.py); checked here so a typo fails before any machine is touched.
R1OV_SUBCOMMANDS=(synth sft grpo eval generate import-hf export-hf demo)

die() {
  echo "error: $*" >&2
  exit 2
}

# Prints a note: to stdout as "# ..." in a dry run (so the output stays a runnable script), else to stderr.
note() {
  if [[ $DRY_RUN == 1 ]]; then
    echo "# $*"
  else
    echo "[launch] $*" >&2
  fi
}

# shquote WORD: WORD as one shell word; plain words stay bare, everything else is single-quoted.
shquote() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# join_cmd WORD...: the words as one shell command line.
join_cmd() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(shquote "$w")"
  done
  printf '%s' "$out"
}

# run CMD...: runs the command, or prints it (quoted) in a dry run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    join_cmd "$@"
    echo
  else
    echo "+ $(join_cmd "$@")" >&2
    "$@"
  fi
}

# need_arg FLAG "$#": dies unless FLAG has a value after it.
need_arg() {
  (($2 >= 2)) || die "$1 needs a value"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

check_pos_int() { # NAME VALUE
  [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"
}

check_env_kv() { # KEY=VALUE
  [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env expects KEY=VALUE (KEY a shell variable name), got '$1'"
}

need_tool() { # TOOL HINT: only checked for real runs; a dry run needs nothing installed.
  [[ $DRY_RUN == 1 ]] || command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH ($2)"
}

# normalize_r1ov_args ARG...: sets R1OV_ARGS to the r1ov command line (a leading "r1ov" is optional) and
# checks the subcommand.
normalize_r1ov_args() {
  R1OV_ARGS=("$@")
  if ((${#R1OV_ARGS[@]} > 0)) && [[ ${R1OV_ARGS[0]} == r1ov ]]; then
    R1OV_ARGS=("${R1OV_ARGS[@]:1}")
  fi
  ((${#R1OV_ARGS[@]} > 0)) || die "no r1ov command given: put it after '--', e.g. -- sft --config configs/qwen2_5_vl_7b_sft.py"
  local sub=${R1OV_ARGS[0]} known
  for known in "${R1OV_SUBCOMMANDS[@]}"; do
    [[ $sub == "$known" ]] && return 0
  done
  die "unknown r1ov subcommand '$sub' (expected one of: ${R1OV_SUBCOMMANDS[*]})"
}

# apply_out_dir DIR: the run directory of `r1ov sft|grpo` (their --out flag) on storage every host sees.
apply_out_dir() {
  local dir=$1 a
  [[ -n $dir ]] || return 0
  [[ $dir == gs://* ]] && die "--out-dir $dir: r1ov writes run directories with plain file I/O; mount the bucket" \
    "on every host (gcsfuse, or an xpk storage attach) and pass the mount path, e.g. /mnt/gcs/runs/sft"
  case ${R1OV_ARGS[0]} in
    sft | grpo) ;;
    *) die "--out-dir applies to 'r1ov sft' and 'r1ov grpo' only; give '${R1OV_ARGS[0]}' its own --out" ;;
  esac
  for a in "${R1OV_ARGS[@]}"; do
    [[ $a == --out || $a == --out=* ]] && die "--out-dir and an r1ov --out were both given; keep one"
  done
  R1OV_ARGS+=(--out "$dir")
}

# check_mesh NUM_DEVICES ARG...: the --config.mesh.{data,fsdp,tensor} overrides among the r1ov args (as --k=v or
# --k v) must fit NUM_DEVICES. Axes left to the config are unknown here, so this checks what must hold whatever
# they are: sizes are -1 (fill) or positive, at most one -1, the product of the given sizes divides the device
# count (and equals it when all three are given). An empty NUM_DEVICES checks the values only.
check_mesh() {
  local ndev=$1 a axis val prod=1 fills=0 given=0 desc=""
  shift
  while (($#)); do
    a=$1
    shift
    if [[ $a =~ ^--config\.mesh\.(data|fsdp|tensor)(=(.*))?$ ]]; then
      axis=${BASH_REMATCH[1]}
      if [[ -n ${BASH_REMATCH[2]} ]]; then
        val=${BASH_REMATCH[3]}
      else
        (($#)) || die "$a needs a value"
        val=$1
        shift
      fi
    else
      continue
    fi
    [[ $val =~ ^(-1|[1-9][0-9]*)$ ]] || die "--config.mesh.$axis=$val: a mesh size is a positive integer or -1 (fill)"
    given=$((given + 1))
    desc+="${desc:+ }$axis=$val"
    if [[ $val == -1 ]]; then
      fills=$((fills + 1))
    else
      prod=$((prod * val))
    fi
  done
  ((given)) || return 0
  ((fills <= 1)) || die "mesh ($desc): at most one axis may be -1"
  if [[ -z $ndev ]]; then
    note "mesh $desc (device count unknown here: not checked)"
    return 0
  fi
  ((ndev % prod == 0)) || die "mesh ($desc) does not fit $ndev devices: $prod does not divide $ndev"
  if ((given == 3 && fills == 0 && prod != ndev)); then
    die "mesh ($desc) needs $prod devices, the job has $ndev"
  fi
  note "mesh $desc on $ndev devices"
}

# tpu_topology ACCELERATOR: sets TPU_DEVICES (JAX devices = chips; cores on v2/v3) and TPU_HOSTS (workers),
# empty when the type is unknown. Names count TensorCores on v2-v5p (2 per chip; v4/v5p chips are one
# "megacore" device) and chips on v5e/v6e.
# shellcheck disable=SC2034 # TPU_DEVICES / TPU_HOSTS are results, read by the sourcing script
tpu_topology() {
  local acc=$1 n
  TPU_DEVICES="" TPU_HOSTS=""
  [[ $acc =~ ^(v[0-9]+[a-z]*)-([0-9]+)$ ]] || die "--accelerator '$acc': expected a type like v5p-64, v4-32, v6e-16"
  n=${BASH_REMATCH[2]}
  ((n > 0)) || die "--accelerator '$acc': size must be positive"
  local family=${BASH_REMATCH[1]}
  case $family in
    v2 | v3)
      TPU_DEVICES=$n
      TPU_HOSTS=$(((n + 7) / 8))
      ;;
    v4 | v5p)
      ((n % 2 == 0)) || die "--accelerator '$acc': $family types count TensorCores (2 per chip), size must be even"
      TPU_DEVICES=$((n / 2))
      TPU_HOSTS=$(((TPU_DEVICES + 3) / 4))
      ;;
    v5litepod | v5e | v6e)
      TPU_DEVICES=$n
      if ((n <= 8)); then TPU_HOSTS=1; else TPU_HOSTS=$((n / 4)); fi
      ;;
  esac
}

# pack_code ROOT OUT_TGZ: a gzipped tar of the repository's files: tracked + untracked, minus what .gitignore
# excludes (no .venv, runs/, caches), working-tree state (uncommitted edits included).
pack_code() {
  local root=$1 out=$2 f files=()
  if [[ $DRY_RUN == 1 ]]; then
    echo "git -C $(shquote "$root") ls-files -z --cached --others --exclude-standard" \
      "| tar -C $(shquote "$root") --null -T - -czf $(shquote "$out")"
    return 0
  fi
  git -C "$root" rev-parse --git-dir >/dev/null 2>&1 || die "$root is not a git checkout: cannot pack the code"
  while IFS= read -r -d '' f; do
    [[ -e $root/$f || -L $root/$f ]] && files+=("$f") # tracked files deleted in the working tree are skipped
  done < <(git -C "$root" ls-files -z --cached --others --exclude-standard)
  ((${#files[@]})) || die "$root: no files to pack"
  echo "+ pack ${#files[@]} files of $root into $out" >&2
  tar -C "$root" -czf "$out" -- "${files[@]}"
}
