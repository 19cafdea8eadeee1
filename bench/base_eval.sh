#!/usr/bin/env bash
# Base-model evaluation of the embedded SmolLM2-135M-Instruct: greedy pass@1, pass@8, maj@8
# on three reasoning-gym tasks (200 held-out problems each) and on HumanEval (164 problems).
# Usage: bash bench/base_eval.sh [OUT_DIR]    (about 40 minutes on 2 CPU cores)
set -euo pipefail
out=${1:-runs/base_eval}
mkdir -p "$out"
rl=".venv/bin/rl-reasoning"
common=(--model smollm2-135m-instruct --n 8 --k 1,8 --temperature 0.6 --batch-size 64)
for task in basic_arithmetic leg_counting chain_sum; do
  /usr/bin/time -f "$task: %e s" $rl eval --recipe recipes/quickstart.yaml --task "$task" --problems 200 \
      --max-new-tokens 96 "${common[@]}" --out "$out/$task.json"
done
/usr/bin/time -f "humaneval: %e s" $rl eval --task humaneval --problems 164 --max-new-tokens 192 "${common[@]}" --out "$out/humaneval.json"
