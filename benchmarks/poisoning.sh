#!/usr/bin/env bash
# One client in four (nyt) sends a scaled (x100), sign-flipped or NaN update every round; each
# attack meets plain FedAvg (validation off: the damage), FedAvg with the default validation,
# coordinate-wise median, trimmed mean and norm clipping (validation off for the robust rules, so
# they are measured alone), and one DP-FedAvg run. Global OOD accuracy against the clean run:
# benchmarks/RESULTS.md.
#   bash benchmarks/poisoning.sh        (resumable; results in benchmarks/poisoning/)
#   REPORT_ONLY=1 bash benchmarks/poisoning.sh   (re-render the committed runs; trains nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
FEDOA="${FEDOA:-.venv/bin/fedoa}"
OUT=benchmarks/poisoning
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
REPORT=()
[[ -n "${REPORT_ONLY:-}" ]] && REPORT=(--report-only)
[[ -z "${REPORT_ONLY:-}" ]] && "$FEDOA" compare --config benchmarks/poisoning.toml --methods "clean=fedit" --seeds 1 \
  --out "$OUT" --quiet
# clip at twice the clean run's median update norm
CLIP=$("${FEDOA%fedoa}python" -c "
import json, statistics
lines = [json.loads(l) for l in open('$OUT/runs/clean/seed0/metrics.jsonl')]
print(round(2 * statistics.median(l['update_norm'] for l in lines if l['phase'] == 'update'), 4))")
OFF="trust.norm_factor=0"
M="clean=fedit"
for kind in scale "'nan'" signflip; do
  name=${kind//\'/}
  M="$M,$name-fedavg=fedit[attack.kind=$kind;$OFF],$name-validated=fedit[attack.kind=$kind]"
  M="$M,$name-median=fedit[attack.kind=$kind;$OFF;fed.aggregation=median]"
  M="$M,$name-trimmed=fedit[attack.kind=$kind;$OFF;fed.aggregation=trimmed_mean;fed.trim_fraction=0.25]"
  M="$M,$name-clipped=fedit[attack.kind=$kind;$OFF;fed.clip_norm=$CLIP]"
  # DP-FedAvg, no attack: z = 1 with the same clip (its epsilon is in results.json and RESULTS.md)
  [[ $name == scale ]] && M="$M,dp-z1=fedit[dp.noise_multiplier=1.0;dp.clip_norm=$CLIP;fed.aggregation=uniform]"
done
"$FEDOA" compare --config benchmarks/poisoning.toml --methods "$M" --seeds 1 --out "$OUT" --focus none "${REPORT[@]}"
