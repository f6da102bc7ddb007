#!/usr/bin/env bash
# The paper's scaling comparison: DECO and its dense twin at 0.1B, 0.2B, 0.5B
# and 1.2B (configs/{deco,dense}-<scale>.yaml), each trained in its own run
# directory, then one `deco report --compare` over all of them (a summary
# table and final loss against non-embedding parameters, DECO vs dense).
#
#   scripts/scaling_runs.sh [options] [-- deco train options...]
#
#   --out DIR          where the runs go: DIR/<kind>-<scale>/ (default runs/scaling)
#   --scales "S..."    default "0.1b 0.2b 0.5b 1.2b"
#   --kinds "K..."     default "deco dense"
#   --configs DIR      where <kind>-<scale>.yaml are read from (default configs/)
#   --launcher "CMD"   prefix of every training command, e.g. "mpirun -np 8"
#   --save-interval N  checkpoint every N steps (default 1000; 0: only at the end)
#   --slurm            instead of training here: write DIR/scaling.sbatch, a Slurm
#                      array with one task per run, and submit it with sbatch
#                      (--no-submit: only write it); once they end, run this
#                      script with --report-only (same --out, --scales, --kinds)
#   --report-only      train nothing: only the report of the runs in DIR
#   --sbatch "ARGS"    extra #SBATCH lines' arguments, e.g. "--nodes=1 --gpus=8 --time=48:00:00"
#   --deco PATH        the deco binary (default build/deco)
#   anything after --  passed to every `deco train` (e.g. -- --set training.train_iters=100)
#
# Runs train one after another. Each saves checkpoints in its run directory
# and resumes from them (checkpoint.load=auto), so relaunching the script
# after a failure continues where it stopped (a run that already reached its
# last step resumes there and ends at once; raising training.train_iters
# after -- extends every run). A run directory left without a checkpoint
# by a failed first attempt is moved aside (<dir>.incomplete-<time>), never
# deleted.
set -euo pipefail
cd "$(dirname "$0")/.."

out=runs/scaling
scales="0.1b 0.2b 0.5b 1.2b"
kinds="deco dense"
configs=configs
launcher=""
save_interval=1000
slurm=0
report_only=0
submit=1
sbatch_args=""
deco=build/deco
extra=()

die() { echo "scaling_runs.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --scales) scales=$2; shift 2 ;;
    --kinds) kinds=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    --launcher) launcher=$2; shift 2 ;;
    --save-interval) save_interval=$2; shift 2 ;;
    --slurm) slurm=1; shift ;;
    --no-submit) submit=0; shift ;;
    --report-only) report_only=1; shift ;;
    --sbatch) sbatch_args=$2; shift 2 ;;
    --deco) deco=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1'; see scripts/scaling_runs.sh --help" ;;
  esac
done
[ -x "$deco" ] || die "$deco is not an executable; build it with scripts/setup.sh or pass --deco PATH"
[[ "$save_interval" =~ ^[0-9]+$ ]] || die "--save-interval '$save_interval' is not a whole number of steps"

# The runs, in order: name and config file.
names=()
files=()
for scale in $scales; do
  for kind in $kinds; do
    f="$configs/$kind-$scale.yaml"
    [ -f "$f" ] || die "$f does not exist; --kinds and --scales name configs/<kind>-<scale>.yaml files (see --configs)"
    names+=("$kind-$scale")
    files+=("$f")
  done
done
[ ${#names[@]} -gt 0 ] || die "no runs: --scales and --kinds are empty"
mkdir -p "$out"

# The `deco train` command of run i, as words.
train_command() {
  local i=$1 dir="$out/${names[$1]}"
  printf '%q ' $launcher "$deco" train --config "${files[$i]}" --run-dir "$dir" \
    --set "checkpoint.save=$dir/checkpoints" --set "checkpoint.save_interval=$save_interval" \
    --set "checkpoint.keep_last=2" --set "checkpoint.load=auto" "${extra[@]}"
}

# A run directory with metrics but no checkpoint cannot be resumed: move it aside.
set_aside_if_unresumable() {
  local dir="$out/${names[$1]}"
  if [ -f "$dir/metrics.jsonl" ] && [ ! -e "$dir/checkpoints/latest" ]; then
    local aside="$dir.incomplete-$(date +%Y%m%d-%H%M%S)"
    mv "$dir" "$aside"
    echo "scaling_runs.sh: ${names[$1]} stopped before its first checkpoint; moved it to $aside and starting over"
  fi
}

if [ "$slurm" = 1 ]; then
  script="$out/scaling.sbatch"
  {
    echo "#!/usr/bin/env bash"
    echo "#SBATCH --job-name=deco-scaling"
    echo "#SBATCH --array=0-$(( ${#names[@]} - 1 ))"
    echo "#SBATCH --output=$out/slurm-%A_%a.out"
    for a in $sbatch_args; do echo "#SBATCH $a"; done
    echo "# Written by scripts/scaling_runs.sh: one array task per run. When they end, run"
    echo "# scripts/scaling_runs.sh --report-only with the same --out, --scales and --kinds for the report;"
    echo "# a failed task resubmitted (sbatch --array=N) resumes from its last checkpoint."
    echo "set -euo pipefail"
    echo "cd $(printf '%q' "$PWD")"
    echo "case \$SLURM_ARRAY_TASK_ID in"
    for i in "${!names[@]}"; do
      echo "  $i) exec $(train_command "$i");;"
    done
    echo "esac"
  } > "$script"
  echo "scaling_runs.sh: wrote $script (${#names[@]} array tasks: ${names[*]})"
  if [ "$submit" = 1 ]; then
    command -v sbatch >/dev/null || die "sbatch not found; submit $script on the cluster, or pass --no-submit"
    sbatch "$script"
  fi
  exit 0
fi

for i in "${!names[@]}"; do
  [ "$report_only" = 1 ] && break
  set_aside_if_unresumable "$i"
  echo "scaling_runs.sh: training ${names[$i]} ($(date -u +%H:%M:%S) UTC): $(train_command "$i")"
  eval "$(train_command "$i")" > >(tee -a "$out/${names[$i]}.log") 2>&1 ||
    die "${names[$i]} failed (log: $out/${names[$i]}.log); fix the cause and rerun this script to resume"
done

dirs=()
for n in "${names[@]}"; do dirs+=("$out/$n"); done
for d in "${dirs[@]}"; do
  [ -f "$d/metrics.jsonl" ] || die "$d has no metrics.jsonl yet; train it first (run without --report-only)"
done
report=("$deco" report "${dirs[0]}" --out "$out/scaling_report.html")
[ ${#dirs[@]} -gt 1 ] && report+=(--compare "${dirs[@]:1}")
"${report[@]}"
