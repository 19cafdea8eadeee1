"""Length shaping rewards.

`cosine` (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning"; as in open-r1):
    r = lo + (hi - lo) * (1 + cos(pi * L / max_len)) / 2, L clipped to max_len,
    with (hi, lo) = (max_correct, min_correct) for correct completions -> short beats long,
    and (hi, lo) = (min_wrong, max_wrong) for wrong ones -> long beats short (keep thinking).
`overlong` (DAPO's soft overlong punishment): 0 up to max_len - cache_len, then a linear ramp
down to -1 at max_len, and -1 beyond.

L is the completion length in tokens when `completion_ids` is passed (our trainer and TRL pass
it), else in whitespace-separated words. Correctness comes from another reward
(`correct_reward`, default `math`) called on the same completions and columns: >= 1 is correct.
"""

from __future__ import annotations

import math

from .extract import completion_text


def _lengths(completions, completion_ids) -> list[int]:
    if completion_ids is not None:
        return [len(ids) for ids in completion_ids]
    return [len(completion_text(c).split()) for c in completions]


def cosine_scaled(length: int, correct: bool, max_len: int, min_correct=0.5, max_correct=1.0, min_wrong=-1.0, max_wrong=-0.5) -> float:
    progress = min(length, max_len) / max_len
    cosine = math.cos(progress * math.pi)
    hi, lo = (max_correct, min_correct) if correct else (min_wrong, max_wrong)
    return lo + 0.5 * (hi - lo) * (1.0 + cosine)


def overlong_penalty(length: int, max_len: int, cache_len: int) -> float:
    if length <= max_len - cache_len:
        return 0.0
    if length <= max_len:
        return ((max_len - cache_len) - length) / cache_len
    return -1.0


def length_reward(
    completions,
    mode: str = "cosine",
    max_len: int = 512,
    cache_len: int = 128,
    correct_reward: str = "math",
    min_correct: float = 0.5,
    max_correct: float = 1.0,
    min_wrong: float = -1.0,
    max_wrong: float = -0.5,
    completion_ids=None,
    **columns,
) -> list[float | None]:
    """Example (cosine, max_len=100): correct at 10 tokens -> ~0.99, correct at 90 -> ~0.51, wrong at 10 -> ~-0.99, wrong at 90 -> ~-0.51."""
    lengths = _lengths(completions, completion_ids)
    if mode == "overlong":
        if not 0 < cache_len < max_len:
            raise ValueError("length reward: need 0 < cache_len < max_len")
        return [overlong_penalty(L, max_len, cache_len) for L in lengths]
    if mode != "cosine":
        raise ValueError(f"length reward: mode must be 'cosine' or 'overlong', got {mode!r}")
    from .registry import get_reward

    correctness = get_reward(correct_reward)(completions, **columns)
    return [
        None if ok is None else cosine_scaled(L, ok >= 1.0, max_len, min_correct, max_correct, min_wrong, max_wrong)
        for L, ok in zip(lengths, correctness)
    ]
