#!/usr/bin/env bash
# The evidence comparison (issue 8) on Flan-8, in stages that each resume where they stopped:
#   1. within-category, every method, seeds 0 and 1;
#   2. leave-category-out, seed 0, the main rows, paraphrase held out (HOLDOUT=all rotates the
#      held-out category over all four: 4x the runs; finished runs are reused either way);
#   3. within-category, seed 2.
# Rerun the same command and finished runs (their results.json under benchmarks/evidence/) are not
# redone, on this machine or another one with the committed results; an interrupted run resumes from
# its last round. Run it from the repository root with the venv made by `make setup`:
#
#   bash benchmarks/evidence.sh              # every stage
#   STAGE=within bash benchmarks/evidence.sh  # one stage: within, lco or within3
#
# Only results are committed (results.json, report.md, config.toml, metrics.jsonl, compare.*),
# never adapters (see .gitignore).
set -euo pipefail
cd "$(dirname "$0")/.."
FEDOA="${FEDOA:-.venv/bin/fedoa}"
STAGE="${STAGE:-all}"
OUT=benchmarks/evidence
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # threads sleep instead of spinning when the CPU is shared
W0="fedoa.regular_weight=0;fedoa.mixed_eval=false"
SHIPPED="fedoa.feature=answer;fed.personal_init=global"
METHODS="fedit,local,ditto,feddpa,fedoa,fedoa-w0=fedoa[$W0],shipped=fedoa[$SHIPPED],shipped-w0=fedoa[$SHIPPED;$W0],fedlora,perada"
LCO_METHODS="${LCO_METHODS:-fedit,fedoa,shipped=fedoa[$SHIPPED],local}"
HOLDOUT="${HOLDOUT:-paraphrase}"
HOLDOUT_SET=()
if [[ "$HOLDOUT" != all ]]; then HOLDOUT_SET=(--set "protocol.holdout=$HOLDOUT"); fi

within() {
  "$FEDOA" compare --config benchmarks/flan8_evidence.toml --methods "$METHODS" --seeds "$1" \
    --out "$OUT/within-category"
}
if [[ "$STAGE" == all || "$STAGE" == within ]]; then within 2; fi
if [[ "$STAGE" == all || "$STAGE" == lco ]]; then
  "$FEDOA" compare --config benchmarks/flan8_evidence.toml --set protocol.name=leave-category-out "${HOLDOUT_SET[@]}" \
    --methods "$LCO_METHODS" --seeds 1 --out "$OUT/leave-category-out"
fi
if [[ "$STAGE" == all || "$STAGE" == within3 ]]; then within 3; fi
