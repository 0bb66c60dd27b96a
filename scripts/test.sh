#!/usr/bin/env bash
# THE test command of Diffusion Labs (README.md cites it; .ci/run calls it).
#   0. the lint gate: ruff with the rules stated in pyproject.toml ([tool.ruff])
#   1. unit tests (tests/): solutions, starters, checks, machinery, grader, notebooks' sync
#   2. every notebook as learners get it (pristine starters, auto mode: the references fill
#      the TODOs), executed top to bottom by nbval; outputs are not stored, so --nbval-lax.
# Any failure, or a run that collects no tests (pytest exit 5), fails the command.
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
unset DIFFUSION_LABS_MODE DIFFUSION_LABS_STARTERS
python -m ruff check .
python -m pytest tests/ -q -p no:cacheprovider "$@"
mkdir -p runs
python -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=300 notebooks/ -q -p no:cacheprovider \
  --junitxml=runs/nbval.xml
python -m scripts.nb_times runs/nbval.xml   # per-notebook seconds (docs/BUDGETS.md)
# every code cell again after Run All, last to first, in the same kernel (scripts/rerun_cells.py)
python -m scripts.rerun_cells
