#!/usr/bin/env bash
# After `python bench/learning.py --recipe recipes/r1zero_code_cpu.yaml --out OUT`: sampled pass@k on
# the held-out code_tasks and HumanEval greedy pass@1 (the transfer check), base model vs the last
# checkpoint, each pair compared with a paired bootstrap interval; between them the reward-hacking review
# (50 passing programs of the second half of training, flagged and re-judged on 100 stress tests
# each, and the held-out greedy programs of both models re-judged the same way).
# Usage: bash bench/code_eval.sh OUT    (about 35 minutes on 2 CPU cores)
set -euo pipefail
out=$1
rl=".venv/bin/rl-reasoning"
last=$(ls -d "$out"/run/checkpoints/step-* | sort | tail -1)
mkdir -p "$out/passk" "$out/humaneval"
for name in base last; do
  model=$([ $name = base ] && echo smollm2-135m-instruct || echo "$last")
  /usr/bin/time -f "pass@k $name: %e s" $rl eval --recipe recipes/r1zero_code_cpu.yaml --model "$model" --n 8 --k 1,8 \
      --temperature 0.5 --out "$out/passk/$name.json"
done
$rl eval --compare "$out/passk/base.json" "$out/passk/last.json" | tee "$out/passk/compare.md"
steps=$(ls "$out"/eval/step-*.json | sort)
.venv/bin/python bench/code_hacking_review.py "$out/run" --samples 50 --from-step 21 --stress 100 --out "$out/hacking_review.md" \
    --evals $(echo "$steps" | head -1) $(echo "$steps" | tail -1) | tee "$out/hacking_summary.txt"
for name in base last; do
  model=$([ $name = base ] && echo smollm2-135m-instruct || echo "$last")
  /usr/bin/time -f "humaneval $name: %e s" $rl eval --task humaneval --problems 164 --model "$model" --max-new-tokens 192 --batch-size 64 \
      --out "$out/humaneval/$name.json"
done
$rl eval --compare "$out/humaneval/base.json" "$out/humaneval/last.json" | tee "$out/humaneval/compare.md"
