"""Held-out evaluation: greedy pass@1, unbiased pass@k, maj@k, format rate, length, truncation.

The trainer (at start, every `eval.every` steps, at the end) and `rl-reasoning eval` both call
`evaluate`, so "before" and "after" are scored by the same code. A completion is correct when
the accuracy reward gives it >= 1 (rewards may give partial credit; only full credit counts).

- pass@k: the unbiased estimator of Chen et al. 2021 (Codex), 1 - C(n-c, k) / C(n, k) with n
  samples of which c are correct, averaged over problems.
- maj@k: majority vote over the final answers extracted from the first k samples (answers
  normalised as the math reward does; samples without an answer do not vote). Ties go to the
  answer that appeared first. The vote is correct when a sample carrying the voted answer is.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import torch

from rewards.extract import completion_text, extract_answer, normalize_answer
from rewards.format import is_well_formatted, reasoning_section

from .config import RolloutConfig
from .prompts import encode_prompt, render_prompt
from .reward_runner import RewardRunner
from .rollout import RolloutEngine

CORRECT = 1.0 - 1e-6


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: n samples, c correct."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_vote(answers: list[str | None]) -> int | None:
    """Index of the first sample carrying the most frequent answer (ties: earliest first); None if no answers."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(i for i, a in enumerate(answers) if a is not None and counts[a] == best)


def problem_columns(problems: list[dict], repeat: int) -> dict[str, list]:
    """Dataset columns for the reward functions, each value repeated once per completion."""
    keys = [k for k in problems[0] if k != "id"]
    return {k: [p.get(k) for p in problems for _ in range(repeat)] for k in keys}


def answer_fallback(accuracy: RewardRunner) -> str:
    """maj@k extracts answers the way the accuracy reward does (its `fallback` parameter, if any)."""
    fn = accuracy.components[0].fn
    return getattr(fn, "keywords", {}).get("fallback", "none")


def _answer_of(completion: str, fallback: str) -> str | None:
    found = extract_answer(completion_text(completion), fallback=fallback)
    return None if found is None else normalize_answer(found)


def generate_and_score(engine, tokenizer, problems, prompt_cfg, scorer, params, batch_size, step, generator, label):
    """Yields (chunk, batch, completions, scores) over prompt chunks of at most batch_size completions."""
    per_chunk = max(1, batch_size // params.num_generations)
    for lo in range(0, len(problems), per_chunk):
        chunk = problems[lo : lo + per_chunk]
        texts = [render_prompt(tokenizer, p["question"], prompt_cfg) for p in chunk]
        ids = [encode_prompt(tokenizer, t, prompt_cfg.template) for t in texts]
        batch = engine.generate(ids, params, generator)
        completions = [prompt_cfg.prefill + t for t in batch.texts]
        G = params.num_generations
        scores = scorer(completions, problem_columns(chunk, G), [t for t in texts for _ in range(G)], step, where=f"{label} at step {step}").total
        yield lo, chunk, batch, completions, scores


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
    n: int = 0,
    ks: tuple[int, ...] = (),
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    answer_fallback: str = "none",
    analyzer=None,
) -> tuple[dict, list[dict]]:
    """Greedy pass@1 (always) and, with n >= 1 samples, pass@k and maj@k for each k in ks. Returns (metrics, per-problem records)."""
    start = time.perf_counter()
    records = [{"step": step, "problem": i, "question": p["question"], "answer": p["answer"]} for i, p in enumerate(problems)]
    greedy = RolloutConfig(num_generations=1, max_new_tokens=max_new_tokens, temperature=0.0, stop=stop)
    for lo, chunk, batch, completions, scores in generate_and_score(engine, tokenizer, problems, prompt_cfg, accuracy, greedy, batch_size, step, None, "held-out evaluation"):
        for j in range(len(chunk)):
            records[lo + j].update(
                completion=completions[j],
                score=None if torch.isnan(scores[j]) else float(scores[j]),
                correct=bool(scores[j] >= CORRECT),
                formatted=is_well_formatted(completions[j]),
                think_words=len(reasoning_section(completions[j]).split()),
                length=int(batch.lengths[j]),
                truncated=bool(batch.truncated[j]),
            )
    count = max(len(records), 1)
    metrics = {
        "eval/accuracy": sum(r["correct"] for r in records) / count,
        "eval/format_rate": sum(r["formatted"] for r in records) / count,
        "eval/mean_length": sum(r["length"] for r in records) / count,
        "eval/think_words": sum(r["think_words"] for r in records) / count,  # words in the reasoning section (0 without one)
        "eval/truncated_frac": sum(r["truncated"] for r in records) / count,
        "eval/num_problems": len(records),
        "eval/greedy_seconds": time.perf_counter() - start,
    }
    if analyzer is not None and records:
        metrics.update(_reflection_metrics(records, analyzer))
    if n >= 1 and problems:
        sampled = RolloutConfig(num_generations=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stop)
        generator = torch.Generator(device=engine.device).manual_seed(seed)
        lengths, truncated, formatted = [], [], []
        for lo, chunk, batch, completions, scores in generate_and_score(engine, tokenizer, problems, prompt_cfg, accuracy, sampled, batch_size, step, generator, "sampled evaluation"):
            for j in range(len(chunk)):
                rows = range(j * n, (j + 1) * n)
                correct = [bool(scores[r] >= CORRECT) for r in rows]
                answers = [_answer_of(completions[r], answer_fallback) for r in rows]
                record = records[lo + j]
                record["samples_correct"] = correct
                record["sample_answers"] = answers
                for k in ks:
                    record[f"pass@{k}"] = pass_at_k(n, sum(correct), k)
                    voted = majority_vote(answers[:k])
                    record[f"maj@{k}"] = voted is not None and correct[voted]
                lengths += [int(batch.lengths[r]) for r in rows]
                truncated += [bool(batch.truncated[r]) for r in rows]
                formatted += [is_well_formatted(completions[r]) for r in rows]
        for k in ks:
            metrics[f"eval/pass@{k}"] = sum(r[f"pass@{k}"] for r in records) / count
            metrics[f"eval/maj@{k}"] = sum(r[f"maj@{k}"] for r in records) / count
        metrics["eval/sampled_format_rate"] = sum(formatted) / max(len(formatted), 1)
        metrics["eval/sampled_mean_length"] = sum(lengths) / max(len(lengths), 1)
        metrics["eval/sampled_truncated_frac"] = sum(truncated) / max(len(truncated), 1)
        metrics["eval/sampled_seconds"] = time.perf_counter() - start - metrics["eval/greedy_seconds"]
    metrics["eval/seconds"] = time.perf_counter() - start
    return metrics, records


REFLECTION_METRICS = ("reflection_rate", "reflections_per_1k_tokens", "revision_rate", "verification_rate")


def _reflection_metrics(records: list[dict], analyzer) -> dict:
    """Self-correction rates of the greedy completions (see rl_reasoning.traces); adds `reflections` to each record."""
    from .traces import step_statistics

    analyses = []
    for r in records:
        a = analyzer(r["completion"], str(r["answer"]), r["correct"], r["length"])
        r["reflections"] = [span.label for span in a.reflections]
        r["revision"] = a.revision.kind if a.revision else None
        analyses.append(a)
    stats = step_statistics(analyses)
    return {f"eval/{k}": stats[f"traces/{k}"] for k in REFLECTION_METRICS}
