#!/usr/bin/env bash
# Does FedOA's regularizer do anything? (issue 20, item 5) The within-category evidence setup
# (benchmarks/flan8_evidence.toml: 64 training / 100 test records per task) with the personal
# adapter given the reference's 3 local epochs (24 optimizer steps per local update instead of 8):
# FedOA, its lambda-0 ablation and Ditto, seeds 0, 1, 2 (seed-major: seed 0 of all three first).
# FedOA's runs trace the feature distance (fedoa.trace_reg: reg at the first and last step's
# batches, and over all the client's data before and after every personal step). Resumable: rerun
# the same command; finished runs are reused, an interrupted one resumes from its last round.
# Then the curves and table: .venv/bin/python benchmarks/regularizer.py benchmarks/evidence/regularizer
#
#   bash benchmarks/regularizer.sh          # SEEDS=1 for seed 0 only; REPORT_ONLY=1: re-render, train nothing
set -euo pipefail
cd "$(dirname "$0")/.."
FEDOA="${FEDOA:-.venv/bin/fedoa}"
SEEDS="${SEEDS:-3}"
OUT=benchmarks/evidence/regularizer
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
TRACE="fedoa.trace_reg=true"
METHODS="fedoa=fedoa[$TRACE],fedoa-w0=fedoa[$TRACE;fedoa.regular_weight=0;fedoa.mixed_eval=false],ditto"
"$FEDOA" compare --config benchmarks/flan8_evidence.toml --set train.epochs=3 \
  --methods "$METHODS" --seeds "$SEEDS" --out "$OUT" ${REPORT_ONLY:+--report-only --quiet}
