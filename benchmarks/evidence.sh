#!/usr/bin/env bash
# The evidence comparison (issue 8): Flan-8, within-category over 3 seeds, then
# leave-category-out (every category held out in turn) for seed 0. Resumable: rerun the same
# command and finished runs (their results.json under benchmarks/evidence/) are not redone, on
# this machine or another one with the committed results; an interrupted run resumes from its
# last round. Run it from the repository root with the venv made by `make setup`:
#
#   bash benchmarks/evidence.sh              # both protocols
#   STAGE=within bash benchmarks/evidence.sh  # only within-category (or STAGE=lco)
#
# Only results are committed (results.json, report.md, config.toml, metrics.jsonl, compare.*),
# never adapters (see .gitignore).
set -euo pipefail
cd "$(dirname "$0")/.."
FEDOA="${FEDOA:-.venv/bin/fedoa}"
STAGE="${STAGE:-all}"
OUT=benchmarks/evidence
REF="fedoa.regular_weight=0;fedoa.mixed_eval=false"
SHIPPED="fedoa.feature=answer;fed.personal_init=global"
METHODS="fedit,local,ditto,feddpa,fedoa,fedoa-w0=fedoa[$REF],shipped=fedoa[$SHIPPED],shipped-w0=fedoa[$SHIPPED;$REF]"
LCO_METHODS="${LCO_METHODS:-$METHODS}"

if [[ "$STAGE" == all || "$STAGE" == within ]]; then
  "$FEDOA" compare --config benchmarks/flan8_evidence.toml --methods "$METHODS" --seeds 3 \
    --out "$OUT/within-category"
fi
if [[ "$STAGE" == all || "$STAGE" == lco ]]; then
  "$FEDOA" compare --config benchmarks/flan8_evidence.toml --set protocol.name=leave-category-out \
    --methods "$LCO_METHODS" --seeds 1 --out "$OUT/leave-category-out"
fi
