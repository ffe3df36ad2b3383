#!/usr/bin/env bash
# Re-render every committed comparison from its finished runs (`fedoa compare ... --report-only`:
# nothing is trained; compare.md/json/html/png are rewritten with today's statistics). Each command
# is the one that made the comparison, so each run's config matches and is recognised as finished.
# `data.train_subset_seed = "split"` is pinned (in the config files, or by --set) because these runs drew one training subset for every seed; `fedoa compare` would
# otherwise draw one per seed and see them as different runs.
#
#   bash benchmarks/rerender.sh       # from the repository root, with the venv of `make setup`
set -euo pipefail
cd "$(dirname "$0")/.."
FEDOA="${FEDOA:-.venv/bin/fedoa}"

# the Flan-8 evidence (benchmarks/evidence.sh, the same METHODS): within-category, seeds 0-2; a method
# whose runs are not there yet (fedlora, perada while they run) shows as "not run"
W0="fedoa.regular_weight=0;fedoa.mixed_eval=false"
SHIPPED="fedoa.feature=answer;fed.personal_init=global"
METHODS="fedit,local,ditto,feddpa,fedoa,fedoa-w0=fedoa[$W0],shipped=fedoa[$SHIPPED],shipped-w0=fedoa[$SHIPPED;$W0],fedlora,perada"
"$FEDOA" compare --config benchmarks/flan8_evidence.toml --methods "$METHODS" --seeds 3 \
  --out benchmarks/evidence/within-category --report-only --quiet
# leave-category-out, seed 0, every held-out category that ran
"$FEDOA" compare --config benchmarks/flan8_evidence.toml --set protocol.name=leave-category-out \
  --methods "fedit,fedoa,shipped=fedoa[$SHIPPED],local" --seeds 1 \
  --out benchmarks/evidence/leave-category-out --report-only --quiet

# FedOA's h_G from the global step against the separate pass: made with the default preset of commit
# cbf2639, which has changed since; the comparison's own config.toml holds the settings it ran with
"$FEDOA" compare --config benchmarks/global-step/config.toml --set data.train_subset_seed=split \
  --methods "fedoa,fedoa-gs=fedoa[fedoa.target_features=global_step]" --seeds 1 \
  --out benchmarks/global-step --report-only --quiet

# hostile clients and DP: the same method list as benchmarks/poisoning.sh, re-rendered by it
FEDOA="$FEDOA" REPORT_ONLY=1 bash benchmarks/poisoning.sh

# the regularizer study (3 seeds) and the heterogeneity sweep (seed 0 so far; each script's own command)
FEDOA="$FEDOA" REPORT_ONLY=1 bash benchmarks/regularizer.sh
ran=$(cd benchmarks/sweeps && ls -d */ 2>/dev/null | tr -d / | tr '\n' ' ')
[ -z "$ran" ] || FEDOA="$FEDOA" REPORT_ONLY=1 SEEDS=1 POINTS="$ran" bash benchmarks/sweeps.sh
