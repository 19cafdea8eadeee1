"""How much learning signal does the embedded model get on code_tasks from a prompt? (How recipes/r1zero_code_cpu.yaml's prompt was chosen.)

For each prompt variant, on the first held-out code_tasks of the recipe's data config: greedy and
sampled pass rate (all shown and hidden tests, the `code` reward in the sandbox), the runnable
rate (a fenced program that compiles and defines the asked function), mean completion length,
the truncation rate, and the share of groups of G samples whose reward has zero variance (no
gradient).

    python bench/code_prompt_signal.py [--problems 32] [--samples 8] [--temperatures 1.0,0.7] [--variants 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from rewards.code import code_reward, extract_program, runnable
from rl_reasoning.config import PromptConfig, RolloutConfig, load_config
from rl_reasoning.evaluation import problem_columns
from rl_reasoning.grpo import zero_variance_groups
from rl_reasoning.models import eos_token_ids, load_model
from rl_reasoning.prompts import encode_prompt, render_prompt
from rl_reasoning.rollout import RolloutEngine
from rl_reasoning.tasks import load_task

CODER = "You are an expert Python programmer. Write correct, simple code."
THINK = ("First think briefly about the steps inside <think> </think>, then write the complete function "
         "in a ```python code block.")
VARIANTS = {
    "plain": (PromptConfig(), []),
    "plain, stop at closing fence": (PromptConfig(), ["\n```\n"]),
    "```python prefill": (PromptConfig(prefill="```python\n"), ["```"]),
    "coder system + ```python prefill": (PromptConfig(system_prompt=CODER, prefill="```python\n"), ["```"]),
    "think, then code": (PromptConfig(system_prompt=THINK, prefill="<think>"), ["\n```\n"]),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/r1zero_code_cpu.yaml")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--temperatures", default="1.0", help="comma-separated sampling temperatures, one row each")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--variants", help="comma-separated indices into the variant list (default: all)")
    args = ap.parse_args()
    cfg = load_config(args.recipe, [f"data.eval_size={args.problems}"])
    loaded = load_model(cfg.model.name)
    tok = loaded.tokenizer
    engine = RolloutEngine(loaded.model, tok, eos_token_ids(loaded.model, tok), tok.pad_token_id)
    problems = load_task(cfg.data).held_out
    chosen = list(VARIANTS.items())
    if args.variants:
        chosen = [chosen[int(i)] for i in args.variants.split(",")]
    temperatures = [float(t) for t in args.temperatures.split(",")]
    print(f"{len(problems)} held-out code_tasks ({cfg.data.task_config}); sampled: G={args.samples}, "
          f"<= {args.max_new_tokens} new tokens")
    print("| prompt | T | greedy pass | greedy runnable | sampled pass | sampled runnable | mean tokens | truncated | zero-variance groups | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, (prompt, stop)), temperature in ((v, t) for v in chosen for t in temperatures):
        ids = [encode_prompt(tok, render_prompt(tok, p["question"], prompt), prompt.template) for p in problems]
        row, start = [], time.perf_counter()
        for G, T in ((1, 0.0), (args.samples, temperature)):
            params = RolloutConfig(num_generations=G, max_new_tokens=args.max_new_tokens, temperature=T, stop=stop)
            batch = engine.generate(ids, params, torch.Generator().manual_seed(0))
            texts = [prompt.prefill + t for t in batch.texts]
            entries = [p["entry_point"] for p in problems for _ in range(G)]
            scores = torch.tensor(code_reward(texts, **problem_columns(problems, G)), dtype=torch.float32)
            row.append((float(scores.mean()), sum(map(runnable, map(extract_program, texts), entries)) / len(texts)))
            if G > 1:
                zero = float(zero_variance_groups(scores, G).float().mean())
                tokens = float(batch.sampled_mask.sum(1).float().mean())
                truncated = float(batch.truncated.float().mean())
        (gp, gr), (sp, sr) = row
        print(f"| {name} | {temperature} | {gp:.0%} | {gr:.0%} | {sp:.0%} | {sr:.0%} | {tokens:.0f} | {truncated:.0%} | {zero:.0%} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
