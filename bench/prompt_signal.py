"""How much learning signal does the embedded model get from a prompt? (How the quickstart prompt was chosen.)

For each prompt variant: greedy and sampled format rate (strict think/answer), strict accuracy
(<answer> equals the gold) and last-number accuracy, on a fixed set of reasoning-gym problems,
plus the share of groups of G samples whose quickstart reward has zero variance (no gradient).

    python bench/prompt_signal.py [--problems 16] [--samples 8] [--temperature 0.9]
"""

from __future__ import annotations

import argparse

import torch

from rewards.extract import extract_answer, last_number
from rewards.format import is_well_formatted
from rl_reasoning.config import PromptConfig, RolloutConfig, load_config
from rl_reasoning.evaluation import problem_columns
from rl_reasoning.grpo import zero_variance_groups
from rl_reasoning.models import eos_token_ids, load_model
from rl_reasoning.prompts import encode_prompt, render_prompt
from rl_reasoning.reward_runner import RewardRunner
from rl_reasoning.rollout import RolloutEngine
from rl_reasoning.tasks import load_task

VARIANTS = {
    "plain instruction": PromptConfig(
        system_prompt="Think step by step inside <think> </think> tags, then give only the final number inside <answer> </answer> tags."
    ),
    "plain + <think> prefill": PromptConfig(
        system_prompt="Think step by step inside <think> </think> tags, then give only the final number inside <answer> </answer> tags.",
        prefill="<think>",
    ),
    "r1zero template + prefill": PromptConfig(template="r1zero", prefill="<think>"),
    "worked example + prefill (quickstart)": None,  # taken from recipes/quickstart.yaml
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=None, help="default: the quickstart's")
    args = ap.parse_args()
    cfg = load_config("recipes/quickstart.yaml", [f"data.eval_size={args.problems}"])
    temperature = args.temperature or cfg.rollout.temperature
    torch.set_num_threads(torch.get_num_threads())
    loaded = load_model(cfg.model.name)
    tok = loaded.tokenizer
    engine = RolloutEngine(loaded.model, tok, eos_token_ids(loaded.model, tok), tok.pad_token_id)
    problems = load_task(cfg.data).held_out
    runner = RewardRunner(cfg.rewards, cfg.weights())
    print(f"{len(problems)} held-out problems of {cfg.data.task} {cfg.data.task_config}; sampled: G={args.samples}, T={temperature}")
    print("| prompt | greedy format | greedy acc (strict) | greedy acc (last number) | sampled format | sampled acc (last number) | zero-variance groups |")
    print("|---|---|---|---|---|---|---|")
    for name, prompt in VARIANTS.items():
        prompt = prompt or cfg.prompt
        ids = [encode_prompt(tok, render_prompt(tok, p["question"], prompt), prompt.template) for p in problems]
        row = []
        for G, T in ((1, 0.0), (args.samples, temperature)):
            params = RolloutConfig(num_generations=G, max_new_tokens=cfg.rollout.max_new_tokens, temperature=T, stop=cfg.rollout.stop)
            batch = engine.generate(ids, params, torch.Generator().manual_seed(0))
            texts = [prompt.prefill + t for t in batch.texts]
            golds = [p["answer"] for p in problems for _ in range(G)]
            fmt = sum(map(is_well_formatted, texts)) / len(texts)
            strict = sum(extract_answer(t) == g for t, g in zip(texts, golds)) / len(texts)
            last = sum(last_number(t) == g for t, g in zip(texts, golds)) / len(texts)
            row.append((fmt, strict, last))
            if G > 1:
                reward = runner(texts, problem_columns(problems, G), [""] * len(texts), 0).total
                zero = float(zero_variance_groups(reward, G).float().mean())
        (gf, gs, gl), (sf, _, sl) = row
        print(f"| {name} | {gf:.0%} | {gs:.0%} | {gl:.0%} | {sf:.0%} | {sl:.0%} | {zero:.0%} |", flush=True)


if __name__ == "__main__":
    main()
