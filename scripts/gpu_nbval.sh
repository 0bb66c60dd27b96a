#!/usr/bin/env bash
# Run every notebook under nbval, each in its own process (one at a time, or --jobs N at a
# time), and write a per-notebook time table. Made for a GPU machine with no package index
# (wheels carried beside the tree), and runs the same on a CPU machine (the table then says
# device "cpu").
#
#   bash scripts/gpu_nbval.sh [--out DIR] [--wheels DIR] [--no-install] [--unit-tests]
#                             [--jobs N] [--save NOTEBOOK]... [--dry-run] [NOTEBOOK ...]
#
# From the repository root (it cd's there). Writes into DIR (default: $OUT when set, else
# runs/gpu_nbval-<date>/):
#   gpu_nbval.md    the machine (GPU name, driver, CPU cores), versions (python, torch, CUDA,
#                   diffusers, transformers, nbval), date, then one row per notebook: result,
#                   cells passed, wall and CPU (user+sys) seconds, the total, and the elapsed
#                   time of all the notebooks' runs (with --jobs N, less than the total)
#   gpu_nbval.log   the install step and every nbval run's full output
#   <stem>.ipynb    for each --save NOTEBOOK: that notebook executed (nbclient, every cell even
#                   after an error), outputs kept (lab 10's CUDA memory table, say); compare
#                   their claims with the CPU's: python -m scripts.claim_drift DIR
# Exit status: 0 when every notebook (and --unit-tests) passed, 1 otherwise, 2 on bad usage
# or a failed install.
#
# Install step (skipped with --no-install, or when the wheel folder is absent): what
# requirements.txt asks (torch aside) that the machine lacks, from the wheels only:
#   pip install --no-index --find-links .whl -r requirements.txt (minus torch and -e .)
# falling back to the way ../shared/gpu/wheels.sh prints (--no-deps --target /tmp/site, on
# PYTHONPATH), then `pip install --no-deps -e .` (or this checkout on PYTHONPATH).
# To carry the wheels, here:  bash ../shared/gpu/wheels.sh  (fills .whl/, Python 3.12), then
# on the GPU machine:         bash scripts/gpu_nbval.sh --unit-tests      (carry: .whl)
#
# --jobs N runs N notebooks at once (default 1), each still in its own interpreter and
# kernel, sharing the machine (and its GPU): the DESIGN's GPU budget (all notebooks in 3 min
# on one H100/H200) is for the elapsed time, and these tiny models leave a GPU mostly idle
# (a UNet call is bound by kernel launches and Python). With N > 1 and OMP_NUM_THREADS unset,
# each run gets OMP_NUM_THREADS = cores / N (at least 1). Timing claims inside the labs then
# share the CPU: a failure seen only with --jobs is worth a serial re-run before a fix.
# --unit-tests also times `pytest tests/` (the first half of scripts/test.sh), so the table
# gives the whole test command's time. --dry-run installs and runs nothing: it writes the
# table (device and versions as found) with every notebook "not run", and logs the commands.
# Environment: PYTHON (default python3), GPU_NBVAL_SITE (the fallback's folder, /tmp/site).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
OUTDIR=${OUT:-}
WHEELS=.whl
SITE=${GPU_NBVAL_SITE:-/tmp/site}  # the fallback install's --target folder
INSTALL=1 DRY=0 UNIT=0 JOBS=1
NOTEBOOKS=() SAVE=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUTDIR=${2:?--out needs a folder}; shift 2 ;;
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --unit-tests) UNIT=1; shift ;;
    -j|--jobs) JOBS=${2:?--jobs needs a number}; shift 2
      [[ $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "gpu_nbval.sh: --jobs needs a whole number >= 1, not $JOBS" >&2; exit 2; } ;;
    --save) SAVE+=("${2:?--save needs a notebook}"); shift 2 ;;
    --dry-run) DRY=1; INSTALL=0; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_nbval.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) NOTEBOOKS+=("$1"); shift ;;
  esac
done
[ ${#NOTEBOOKS[@]} -gt 0 ] || NOTEBOOKS=(notebooks/*.ipynb)
for nb in "${NOTEBOOKS[@]}" "${SAVE[@]}"; do
  [ -f "$nb" ] || { echo "gpu_nbval.sh: no notebook $nb" >&2; exit 2; }
done
OUTDIR=${OUTDIR:-runs/gpu_nbval-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/gpu_nbval.log TABLE=$OUTDIR/gpu_nbval.md
: >"$LOG"
log() { printf '%s\n' "$*" | tee -a "$LOG"; }

# As scripts/test.sh: offline, no display, learners' default mode (pristine starters, auto).
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
unset DIFFUSION_LABS_MODE DIFFUSION_LABS_STARTERS

# ---------------------------------------------------------------------------- install
if [ "$INSTALL" = 1 ] && [ -d "$WHEELS" ]; then
  log "== install from $WHEELS ($(ls "$WHEELS"/*.whl 2>/dev/null | wc -l) wheels), no index"
  reqs=$(mktemp)
  grep -v -E '^\s*(torch\b|-e\b|#|$)' requirements.txt >"$reqs"
  if "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" --no-cache-dir -r "$reqs" >>"$LOG" 2>&1; then
    log "requirements.txt (torch aside) satisfied from the machine and $WHEELS"
  else
    log "resolving install failed (log above); installing every wheel --no-deps into $SITE instead"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl >>"$LOG" 2>&1 || { log "install failed"; exit 2; }
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  fi
  rm -f "$reqs"
  if "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$LOG" 2>&1; then
    log "course library: pip install --no-deps -e ."
  else
    log "pip install -e . failed (log above); this checkout goes on PYTHONPATH instead"
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  fi
  "$PYTHON" -m pip check >>"$LOG" 2>&1 || log "pip check reports conflicts (see log); going on"
elif [ "$INSTALL" = 1 ]; then
  log "== no wheel folder $WHEELS: using the packages installed"
fi
if [ "$DRY" = 0 ]; then
  missing=$("$PYTHON" - <<'PY'
import importlib.util
print(" ".join(m for m in ("torch", "diffusers", "transformers", "nbval", "nbclient", "jupytext", "ipykernel", "helpers")
               if importlib.util.find_spec(m) is None))
PY
)
  if [ -n "$missing" ]; then
    log "missing: $missing. Carry wheels (bash ../shared/gpu/wheels.sh, then carry .whl) or install requirements.txt"
    exit 2
  fi
fi

# ---------------------------------------------------------------------------- the machine
info=$("$PYTHON" - <<'PY'
import os, platform
from importlib.metadata import PackageNotFoundError, version
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
try:
    import torch
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    gpu = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}" if cuda else "none"
    tv = torch.__version__ + (f" (CUDA {torch.version.cuda})" if cuda else "")
except ImportError:
    device, gpu, tv = "cpu", "none", "not installed"
rows = {"device": device, "gpu": gpu, "python": platform.python_version(), "torch": tv,
        "diffusers": v("diffusers"), "transformers": v("transformers"), "nbval": v("nbval"),
        "cores": str(os.cpu_count())}
for k, val in rows.items():
    print(f"{k}\t{val}")
PY
)
get() { printf '%s\n' "$info" | awk -F'\t' -v k="$1" '$1 == k {print $2}'; }
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
NBVAL=(-m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=300 -q -p no:cacheprovider)
log "== $DATE | device $(get device) | gpu $(get gpu)${driver:+ (driver $driver)} | torch $(get torch)" \
    "| diffusers $(get diffusers) | transformers $(get transformers) | nbval $(get nbval)"

# ---------------------------------------------------------------------------- the runs
TIMEFORMAT='%R %U %S'
ROWS=() FAILED=0 PASSED=0 WALL=0 CPU=0

# timed OUTFILE CMD...: run CMD (output to OUTFILE), set RC, SECS (wall) and CPUS (user+sys,
# children included: the kernel's work counts).
timed() {
  local out=$1 t; shift
  t=$(mktemp); RC=0
  { time "$@" >"$out" 2>&1; } 2>"$t" || RC=$?
  read -r SECS u s <"$t"; rm -f "$t"
  CPUS=$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.1f", u + s}')
  SECS=$(awk -v r="$SECS" 'BEGIN {printf "%.1f", r}')
}
# counts FILE: "passed/total" from pytest's summary line
counts() {
  local line p f e
  line=$(grep -E '(passed|failed|error)' "$1" | tail -1 || true)
  p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
  f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
  e=$(grep -oE '[0-9]+ errors?' <<<"$line" | grep -oE '[0-9]+' || echo 0)
  echo "$p/$((p + f + e))"
}
add_row() {  # add_row LABEL OUTFILE: a finished run's output to the log, its table row (RC, SECS, CPUS set)
  local label=$1 out=$2 res cells
  cat "$out" >>"$LOG"
  cells=$(counts "$out")
  if [ "$RC" = 0 ]; then res=passed; PASSED=$((PASSED + 1)); else res="FAILED (exit $RC)"; FAILED=$((FAILED + 1)); fi
  log "-- $label: $res, $cells passed, ${SECS}s wall, ${CPUS}s CPU"
  ROWS+=("| $label | $res | $cells | $SECS | $CPUS |")
  WALL=$(awk -v a="$WALL" -v b="$SECS" 'BEGIN {print a + b}')
  CPU=$(awk -v a="$CPU" -v b="$CPUS" 'BEGIN {print a + b}')
}
run_one() {  # run_one LABEL CMD...: run CMD now, then add_row
  local label=$1; shift
  log "== $label: $*"
  if [ "$DRY" = 1 ]; then
    ROWS+=("| $label | not run (dry run) | | | |"); return
  fi
  local o; o=$(mktemp)
  timed "$o" "$@"
  add_row "$label" "$o"
  rm -f "$o"
}

# The notebooks: each run in the background ($JOBS at a time), its output to $RUNS/I.out and
# "RC SECS CPUS" to $RUNS/I.res; then, in the notebooks' order, add_row for each.
if [ "$JOBS" -gt 1 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  OMP_NUM_THREADS=$(( $(get cores) / JOBS )); [ "$OMP_NUM_THREADS" -ge 1 ] || OMP_NUM_THREADS=1
  export OMP_NUM_THREADS
fi
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT
T0=$(date +%s.%N)
i=0
for nb in "${NOTEBOOKS[@]}"; do
  log "== $(basename "$nb" .ipynb): $PYTHON ${NBVAL[*]} $nb"
  if [ "$DRY" = 0 ]; then
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    ( timed "$RUNS/$i.out" "$PYTHON" "${NBVAL[@]}" "$nb"; echo "$RC $SECS $CPUS" >"$RUNS/$i.res" ) &
  fi
  i=$((i + 1))
done
wait
ELAPSED=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
i=0
for nb in "${NOTEBOOKS[@]}"; do
  label=$(basename "$nb" .ipynb)
  if [ "$DRY" = 1 ]; then
    ROWS+=("| $label | not run (dry run) | | | |")
  else
    read -r RC SECS CPUS <"$RUNS/$i.res"
    echo "== $label: output" >>"$LOG"
    add_row "$label" "$RUNS/$i.out"
  fi
  i=$((i + 1))
done
NB_WALL=$WALL NB_CPU=$CPU NB_N=${#NOTEBOOKS[@]} NB_FAILED=$FAILED
if [ "$UNIT" = 1 ]; then
  run_one "unit tests (pytest tests/)" "$PYTHON" -m pytest tests/ -q -p no:cacheprovider
fi
# The saved runs (--save), $JOBS at a time too: every cell runs even after an error (so every
# claim is measured: python -m scripts.claim_drift DIR compares them with solutions/), and the
# run fails when any cell raised. Figures are kept (MPLBACKEND unset for the kernel).
i=0
for nb in "${SAVE[@]}"; do
  stem=$(basename "$nb" .ipynb)
  log "== save $stem executed: $OUTDIR/$stem.ipynb"
  if [ "$DRY" = 0 ]; then
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    ( rc=0; env -u MPLBACKEND "$PYTHON" - "$nb" "$OUTDIR/$stem.ipynb" >"$RUNS/save$i.out" 2>&1 <<'PY' || rc=$?
import os, sys
import nbformat
from jupyter_client import KernelManager
from nbclient import NotebookClient
from nbval.kernel import CURRENT_ENV_KERNEL_NAME, NbvalKernelspecManager  # this interpreter, as nbval
src, dst = sys.argv[1:3]
nb = nbformat.read(src, as_version=4)
km = KernelManager(kernel_name=CURRENT_ENV_KERNEL_NAME, kernel_spec_manager=NbvalKernelspecManager())
try:
    NotebookClient(nb, km=km, timeout=300, allow_errors=True,
                   resources={"metadata": {"path": os.path.dirname(os.path.abspath(src))}}).execute()
finally:
    nbformat.write(nb, dst)
errors = [o.get("ename", "") + ": " + o.get("evalue", "")[:300] for c in nb.cells if c.cell_type == "code"
          for o in c.get("outputs", []) if o.get("output_type") == "error"]
print("\n".join(errors) or "no cell raised")
sys.exit(1 if errors else 0)
PY
      echo "$rc" >"$RUNS/save$i.res" ) &
  fi
  i=$((i + 1))
done
wait
i=0
for nb in "${SAVE[@]}"; do
  stem=$(basename "$nb" .ipynb)
  if [ "$DRY" = 0 ]; then
    { echo "== save $stem: output"; cat "$RUNS/save$i.out"; } >>"$LOG"
    if [ "$(cat "$RUNS/save$i.res")" != 0 ]; then log "-- save $stem: FAILED (log above)"; FAILED=$((FAILED + 1)); fi
  fi
  i=$((i + 1))
done

# ---------------------------------------------------------------------------- the table
{
  echo "# nbval, $( [ "$JOBS" = 1 ] && echo "one notebook at a time" || echo "$JOBS notebooks at a time"): $(get device)$( [ "$(get gpu)" != none ] && echo ", $(get gpu)")"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| date | $DATE |"
  echo "| device | $(get device) |"
  echo "| GPU | $(get gpu)${driver:+ (driver $driver)} |"
  echo "| CPU cores | $(get cores) (OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}) |"
  echo "| notebooks at a time | $JOBS (--jobs) |"
  echo "| python | $(get python) |"
  echo "| torch | $(get torch) |"
  echo "| diffusers | $(get diffusers) |"
  echo "| transformers | $(get transformers) |"
  echo "| nbval | $(get nbval) |"
  echo "| command | \`python ${NBVAL[*]} NOTEBOOK\` |"
  echo
  echo "| notebook | result | cells passed | wall (s) | CPU user+sys (s) |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  if [ "$DRY" = 0 ]; then
    echo "| **total, $NB_N notebooks** | $((NB_N - NB_FAILED)) passed, $NB_FAILED failed | | $(printf %.1f "$NB_WALL") | $(printf %.1f "$NB_CPU") |"
    echo "| **elapsed, $NB_N notebooks, $JOBS at a time** | | | $ELAPSED | |"
    [ "$UNIT" = 1 ] && echo "| **whole test command** (unit tests + all notebooks) | | | $(printf %.1f "$WALL") | $(printf %.1f "$CPU") |"
  fi
  echo
  echo "Wall includes each run's start (interpreter, kernel, imports); CPU counts the kernel too. Elapsed: from the
first notebook's start to the last one's end (the DESIGN's budgets are for it)."
} >"$TABLE"
log "== table: $TABLE"
cat "$TABLE"
[ "$FAILED" = 0 ]
