#!/usr/bin/env bash
# The questions the paper leaves open (issue 20, item 6): FedIT, Ditto, FedDPA and FedOA (its
# personal, mixed and global models) under
#   1. a heterogeneity sweep: the six non-paraphrase Flan-8 tasks over 6 clients by a Dirichlet
#      split over the task label, alpha = 100 (near-IID), 1, 0.1, and natural_id (one task per
#      client); paraphrase held out as OOD (benchmarks/flan8_sweep.toml);
#   2. many clients: 100 clients (Dirichlet alpha 0.5 over the task), 10% sampled per round, 10
#      rounds, 16 training and 20 test records per client.
# Each point is its own `fedoa compare` folder under benchmarks/sweeps/. Resumable: rerun the same
# command; finished runs are reused, an interrupted one resumes from its last round.
#
#   bash benchmarks/sweeps.sh                 # every point, SEEDS (default 3) seeds each
#   SEEDS=1 POINTS="alpha100 natural" bash benchmarks/sweeps.sh
#   LIST=1 bash benchmarks/sweeps.sh          # print each point's name and overrides, run nothing
#   REPORT_ONLY=1 bash benchmarks/sweeps.sh   # re-render the finished runs' tables, train nothing
set -euo pipefail
cd "$(dirname "$0")/.."
FEDOA="${FEDOA:-.venv/bin/fedoa}"
SEEDS="${SEEDS:-3}"
POINTS="${POINTS:-alpha100 alpha1 alpha0.1 natural clients100}"
OUT=benchmarks/sweeps
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
METHODS="fedit,ditto,feddpa,fedoa"

point() {  # name, then --set overrides of benchmarks/flan8_sweep.toml
  local name=$1; shift
  if [[ -n "${LIST:-}" ]]; then echo "$name $*"; return; fi
  local sets=()
  for s in "$@"; do sets+=(--set "$s"); done
  "$FEDOA" compare --config benchmarks/flan8_sweep.toml "${sets[@]}" --methods "$METHODS" --seeds "$SEEDS" \
    --out "$OUT/$name" ${REPORT_ONLY:+--report-only --quiet}
}
for p in $POINTS; do
  case $p in
    alpha*) point "$p" "data.dirichlet_alpha=${p#alpha}" ;;
    natural) point natural data.partition=natural_id ;;
    clients100) point clients100 data.num_clients=100 data.dirichlet_alpha=0.5 data.train_per_client=16 \
                  data.test_per_client=20 fed.rounds=10 fed.client_fraction=0.1 ;;
    *) echo "sweeps.sh: unknown point '$p' (alpha<value>, natural, clients100)" >&2; exit 2 ;;
  esac
done
