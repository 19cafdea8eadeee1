"""Greedy held-out evaluation: accuracy, format rate, length and truncation on a fixed problem set.

Used by the trainer at start, every `eval.every` steps and at the end, so "before" and
"after" are scored by the same code. A completion is correct when the accuracy reward gives
it >= 1 (rewards may give partial credit; only full credit counts).
"""

from __future__ import annotations

import time

import torch

from rewards.format import is_well_formatted

from .prompts import encode_prompt, render_prompt
from .reward_runner import RewardRunner
from .rollout import RolloutEngine, SamplingParams

CORRECT = 1.0 - 1e-6


def problem_columns(problems: list[dict], repeat: int) -> dict[str, list]:
    """Dataset columns for the reward functions, each value repeated once per completion."""
    keys = [k for k in problems[0] if k != "id"]
    return {k: [p.get(k) for p in problems for _ in range(repeat)] for k in keys}


def evaluate(
    engine: RolloutEngine,
    tokenizer,
    problems: list[dict],
    prompt_cfg,
    accuracy: RewardRunner,
    max_new_tokens: int,
    stop: list[str],
    batch_size: int,
    step: int,
) -> tuple[dict, list[dict]]:
    """Returns (metrics, per-problem records)."""
    start = time.perf_counter()
    params = SamplingParams(num_generations=1, max_new_tokens=max_new_tokens, temperature=0.0, stop=stop)
    records = []
    for lo in range(0, len(problems), batch_size):
        chunk = problems[lo : lo + batch_size]
        texts = [render_prompt(tokenizer, p["question"], prompt_cfg) for p in chunk]
        ids = [encode_prompt(tokenizer, t, prompt_cfg.template) for t in texts]
        batch = engine.generate(ids, params)
        completions = [prompt_cfg.prefill + t for t in batch.texts]
        scores = accuracy(completions, problem_columns(chunk, 1), texts, step, where=f"held-out evaluation at step {step}").total
        for i, p in enumerate(chunk):
            records.append(
                {
                    "step": step,
                    "problem": lo + i,
                    "question": p["question"],
                    "answer": p["answer"],
                    "completion": completions[i],
                    "score": None if torch.isnan(scores[i]) else float(scores[i]),
                    "correct": bool(scores[i] >= CORRECT),
                    "formatted": is_well_formatted(completions[i]),
                    "length": int(batch.lengths[i]),
                    "truncated": bool(batch.truncated[i]),
                }
            )
    n = max(len(records), 1)
    metrics = {
        "eval/accuracy": sum(r["correct"] for r in records) / n,
        "eval/format_rate": sum(r["formatted"] for r in records) / n,
        "eval/mean_length": sum(r["length"] for r in records) / n,
        "eval/truncated_frac": sum(r["truncated"] for r in records) / n,
        "eval/num_problems": len(records),
        "eval/seconds": time.perf_counter() - start,
    }
    return metrics, records
