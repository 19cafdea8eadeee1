"""Held-out evaluation: greedy pass@1, unbiased pass@k, maj@k, format rate, length, truncation.

The trainer (at start, every `eval.every` steps, at the end), `rl-reasoning eval` and
`rl-reasoning distill` all score through `evaluate`, with settings built by
`EvalSettings.from_config` from one recipe, so "before" and "after" are scored by the same code
with the same sampling. A completion is correct when the accuracy reward gives it >= 1 (rewards
may give partial credit; only full credit counts).

- Greedy and sampled generation take the recipe's `rollout` section (stop strings, top_p,
  packed weights) with `eval.max_new_tokens`; sampling uses `eval.temperature` and
  `eval.num_samples` completions per problem.
- pass@k: the unbiased estimator of Chen et al. 2021 (Codex), 1 - C(n-c, k) / C(n, k) with n
  samples of which c are correct, averaged over problems.
- maj@k: majority vote over the final answers extracted from the first k samples (answers
  normalised as the math reward does; samples without an answer do not vote). Ties go to the
  answer that appeared first. The vote is correct when a sample carrying the voted answer is.
- Code problems (an `entry_point` column: HumanEval, code_tasks) get no maj@k (a program has no
  final answer to vote on), and get `runnable_rate` (greedy) and
  `sampled_runnable_rate`, the share of completions whose fenced program parses and defines the
  asked function (the stub put in front when the model wrote only a body, as the code reward does).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import torch

from rewards.code import extract_program, runnable, with_stub
from rewards.extract import clean_answer, completion_text, final_answer_with_source
from rewards.format import is_well_formatted, reasoning_section

from .config import Config, PromptConfig, RolloutConfig
from .engine import GenerationEngine
from .models import eos_token_ids, load_model
from .multiturn import MultiTurnEngine, build_environment, build_toolbox, episode_columns, episode_metrics, multi_turn, prompt_with_tools
from .precision import cast_parameters, run_precision
from .prompts import encode_prompt, render_prompt
from .reward_runner import CORRECT, RewardRunner, accuracy_runner, answer_fallback
from .rollout import RolloutEngine
from .runtime import configure_cpu, default_device, quiet_library_progress_bars
from .tasks import load_task
from .traces import Analyzer, step_statistics

__all__ = ["CORRECT", "EvalSettings", "evaluate", "evaluate_model", "generate_and_score", "majority_vote", "pass_at_k", "problem_columns"]


@dataclass(frozen=True)
class EvalSettings:
    """How held-out problems are generated and scored."""

    greedy: RolloutConfig  # one completion per problem at temperature 0
    sampled: RolloutConfig | None  # n completions per problem for pass@k / maj@k; None = greedy only
    ks: tuple[int, ...]
    batch_size: int  # completions generated together
    seed: int

    @classmethod
    def from_config(cls, cfg: Config) -> EvalSettings:
        """The recipe's `rollout` section with the `eval` section's length, temperature and sample count."""
        length = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
        greedy = replace(cfg.rollout, num_generations=1, max_new_tokens=length, temperature=0.0)
        sampled = None
        if cfg.eval.num_samples >= 1:
            sampled = replace(cfg.rollout, num_generations=cfg.eval.num_samples, max_new_tokens=length, temperature=cfg.eval.temperature)
        return cls(greedy, sampled, tuple(cfg.eval.k), cfg.eval.batch_size, cfg.seed)


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


def _answer_of(completion: str, fallback: str) -> str | None:
    """The answer a sample votes for: read and cleaned as the math reward reads it, so that surface
    forms the reward counts as equal ("\\$1,250" and "1250") vote together."""
    found, _ = final_answer_with_source(completion_text(completion), fallback=fallback)
    return None if found is None else clean_answer(found)


def generate_and_score(engine: GenerationEngine, tokenizer, problems: list[dict], prompt_cfg: PromptConfig, scorer: RewardRunner,
                       params: RolloutConfig, batch_size: int, step: int, generator: torch.Generator | None, label: str):
    """Yields (offset, chunk, batch, completions, scores) over chunks of problems with at most
    `batch_size` completions each: `offset` is the chunk's first problem index, `batch` the
    engine's RolloutBatch, `completions` the texts the scorer judged (prefill included), `scores`
    its totals (P * G,)."""
    per_chunk = max(1, batch_size // params.num_generations)
    for lo in range(0, len(problems), per_chunk):
        chunk = problems[lo : lo + per_chunk]
        texts = [render_prompt(tokenizer, p["question"], prompt_cfg) for p in chunk]
        ids = [encode_prompt(tokenizer, t, prompt_cfg.template) for t in texts]
        extra = {"problems": chunk} if isinstance(engine, MultiTurnEngine) else {}
        batch = engine.generate(ids, params, generator, **extra)
        completions = [prompt_cfg.prefill + t for t in batch.texts]
        G = params.num_generations
        columns = {**problem_columns(chunk, G), **episode_columns(batch)}
        scores = scorer(completions, columns, [t for t in texts for _ in range(G)], step, where=f"{label} at step {step}").total
        yield lo, chunk, batch, completions, scores


def evaluate(
    engine: GenerationEngine,
    tokenizer,
    problems: list[dict],
    prompt_cfg: PromptConfig,
    accuracy: RewardRunner,
    settings: EvalSettings,
    step: int,
    analyzer=None,
) -> tuple[dict, list[dict]]:
    """Greedy pass@1 (always) and, with sampling settings, pass@k and maj@k for each k.
    Returns (metrics, per-problem records)."""
    start = time.perf_counter()
    records = [{"step": step, "problem": i, "question": p["question"], "answer": p["answer"]} for i, p in enumerate(problems)]
    chunks = generate_and_score(engine, tokenizer, problems, prompt_cfg, accuracy, settings.greedy, settings.batch_size, step, None, "held-out evaluation")
    episodes = []
    for lo, chunk, batch, completions, scores in chunks:
        for j in range(len(chunk)):
            if batch.episodes is not None:
                e = batch.episodes[j]
                episodes.append(e)
                records[lo + j].update(tool_calls=e["tool_calls"], turns=e["turns"], verdicts=e["verdicts"], turn_texts=e["turn_texts"], feedback=e["feedback"])
            records[lo + j].update(
                completion=completions[j],
                score=None if torch.isnan(scores[j]) else float(scores[j]),
                correct=bool(scores[j] >= CORRECT),
                formatted=is_well_formatted(completions[j]),
                think_words=len(reasoning_section(completions[j]).split()),
                length=int(batch.sampled_mask[j].sum()),  # tokens the model wrote (tool results left out)
                truncated=bool(batch.truncated[j]),
            )
            if (ok := code_runnable(completions[j], chunk[j])) is not None:
                records[lo + j]["runnable"] = ok
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
    if (rate := _share([r.get("runnable") for r in records])) is not None:
        metrics["eval/runnable_rate"] = rate
    metrics.update(episode_metrics(episodes, torch.tensor([r["correct"] for r in records], dtype=torch.bool), prefix="eval/"))
    if analyzer is not None and records:
        metrics.update(_reflection_metrics(records, analyzer))
    if settings.sampled is not None and problems:
        metrics.update(_sampled_metrics(engine, tokenizer, problems, prompt_cfg, accuracy, settings, step, records))
        metrics["eval/sampled_seconds"] = time.perf_counter() - start - metrics["eval/greedy_seconds"]
    metrics["eval/seconds"] = time.perf_counter() - start
    return metrics, records


def code_runnable(completion: str, problem: dict) -> bool | None:
    """Does the completion hold a program that parses and defines the problem's function? None for non-code problems."""
    entry = problem.get("entry_point")
    if not entry:
        return None
    return runnable(with_stub(extract_program(completion), problem.get("prompt"), entry), entry)


def _share(flags: list) -> float | None:
    """Share of True among the flags that are not None (None when all are)."""
    flags = [f for f in flags if f is not None]
    return sum(flags) / len(flags) if flags else None


def _sampled_metrics(engine, tokenizer, problems, prompt_cfg, accuracy, settings: EvalSettings, step: int, records: list[dict]) -> dict:
    """pass@k, maj@k and the sampled format/length/truncation rates; adds each problem's samples to its record."""
    n, fallback = settings.sampled.num_generations, answer_fallback(accuracy)
    generator = torch.Generator(device=engine.device).manual_seed(settings.seed)
    lengths, truncated, formatted, runs = [], [], [], []
    chunks = generate_and_score(engine, tokenizer, problems, prompt_cfg, accuracy, settings.sampled, settings.batch_size, step, generator, "sampled evaluation")
    for lo, chunk, batch, completions, scores in chunks:
        for j in range(len(chunk)):
            rows = range(j * n, (j + 1) * n)
            correct = [bool(scores[r] >= CORRECT) for r in rows]
            answers = [_answer_of(completions[r], fallback) for r in rows]
            record = records[lo + j]
            record["samples_correct"] = correct
            record["sample_answers"] = answers
            for k in settings.ks:
                record[f"pass@{k}"] = pass_at_k(n, sum(correct), k)
                if not chunk[j].get("entry_point"):  # a program has no final answer to vote on
                    voted = majority_vote(answers[:k])
                    record[f"maj@{k}"] = voted is not None and correct[voted]
            lengths += [int(batch.sampled_mask[r].sum()) for r in rows]
            truncated += [bool(batch.truncated[r]) for r in rows]
            formatted += [is_well_formatted(completions[r]) for r in rows]
            runs += [code_runnable(completions[r], chunk[j]) for r in rows]
    count = max(len(records), 1)
    metrics = {}
    for k in settings.ks:
        metrics[f"eval/pass@{k}"] = sum(r[f"pass@{k}"] for r in records) / count
        if voters := [r[f"maj@{k}"] for r in records if f"maj@{k}" in r]:
            metrics[f"eval/maj@{k}"] = sum(voters) / len(voters)
    metrics["eval/sampled_format_rate"] = sum(formatted) / max(len(formatted), 1)
    metrics["eval/sampled_mean_length"] = sum(lengths) / max(len(lengths), 1)
    metrics["eval/sampled_truncated_frac"] = sum(truncated) / max(len(truncated), 1)
    if (rate := _share(runs)) is not None:
        metrics["eval/sampled_runnable_rate"] = rate
    return metrics


def evaluate_model(cfg: Config) -> dict:
    """Load `cfg.model.name` and score it on the held-out problems of `cfg.data`, as `rl-reasoning
    eval` does. Returns the result: model, task, settings, metrics (without the `eval/` prefix)
    and one record per problem."""
    quiet_library_progress_bars()
    configure_cpu(cfg.threads)
    problems = load_task(cfg.data, allow_empty_train=True).held_out  # e.g. all 164 HumanEval problems
    scorer = accuracy_runner(cfg)
    settings = EvalSettings.from_config(cfg)
    device = default_device()
    loaded = load_model(cfg.model.name, device, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.cache_dir)
    precision = run_precision(cfg.model.compute_dtype, device, loaded.model, cfg.model.cache_dir)
    cast_parameters(loaded.model, precision.compute)  # nothing is trained: the weights can live in the compute dtype
    eos = eos_token_ids(loaded.model, loaded.tokenizer)
    engine = RolloutEngine(loaded.model, loaded.tokenizer, eos, loaded.tokenizer.pad_token_id)
    toolbox = build_toolbox(cfg)
    engine = multi_turn(cfg, engine, loaded.tokenizer, eos, toolbox, build_environment(cfg, scorer))  # the recipe's tools and environment
    analyzer = Analyzer(cfg.traces.reflection_markers, list(cfg.traces.extra_reflection_markers)) if cfg.traces.analyze else None
    try:
        metrics, records = evaluate(engine, loaded.tokenizer, problems, prompt_with_tools(cfg.prompt, toolbox, cfg.rollout.describe_tools),
                                    scorer, settings, 0, analyzer=analyzer)
    finally:
        if toolbox is not None:
            toolbox.close()
    data = cfg.data
    task = data.task if data.source == "reasoning_gym" else (data.path or data.name or data.source)
    return {
        "model": cfg.model.name,
        "task": task,
        "settings": {"n": settings.sampled.num_generations if settings.sampled else 0, "k": list(settings.ks),
                     "temperature": cfg.eval.temperature, "top_p": cfg.rollout.top_p, "problems": len(problems),
                     "max_new_tokens": settings.greedy.max_new_tokens, "seed": cfg.seed, "compute_dtype": precision.name},
        "metrics": {k.removeprefix("eval/"): v for k, v in metrics.items()},
        "per_problem": records,
    }


REFLECTION_METRICS = ("reflection_rate", "reflections_per_1k_tokens", "revision_rate", "verification_rate")


def _reflection_metrics(records: list[dict], analyzer) -> dict:
    """Self-correction rates of the greedy completions (see rl_reasoning.traces); adds `reflections` to each record."""
    analyses = []
    for r in records:
        a = analyzer(r["completion"], str(r["answer"]), r["correct"], r["length"], r.get("turn_texts"), r.get("verdicts"))
        r["reflections"] = [span.label for span in a.reflections]
        r["revision"] = a.revision.kind if a.revision else None
        analyses.append(a)
    stats = step_statistics(analyses)
    return {f"eval/{k}": stats[f"traces/{k}"] for k in REFLECTION_METRICS}
