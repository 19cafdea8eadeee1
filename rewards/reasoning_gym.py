"""Score with a reasoning-gym task's own verifier (`score_answer`) on the extracted answer.

Needs the dataset columns our reasoning-gym loader provides: `answer`, `question`,
`metadata` (with `source_dataset`), or `task`. Scores may be partial (task-defined).
"""

from __future__ import annotations

from functools import cache

from .extract import completion_text, extract_answer


@cache
def _scorer(task: str):
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)


def reasoning_gym_reward(completions, answer, metadata=None, question=None, task=None, fallback: str = "none", **_) -> list[float]:
    """Example: for task basic_arithmetic with answer '7', '<answer>7</answer>' -> 1.0, '<answer>8</answer>' -> 0.0."""
    n = len(completions)
    metadata = metadata if metadata is not None else [{}] * n
    question = question if question is not None else [""] * n
    task = task if task is not None else [None] * n
    out = []
    for completion, gold, meta, q, name in zip(completions, answer, metadata, question, task):
        name = name or (meta or {}).get("source_dataset")
        if not name:
            raise ValueError("reasoning_gym reward needs a 'task' column or metadata['source_dataset']")
        predicted = extract_answer(completion_text(completion), fallback=fallback)
        entry = {"question": q, "answer": gold, "metadata": meta or {}}
        out.append(float(_scorer(name)(predicted, entry)) if predicted is not None else 0.0)
    return out
