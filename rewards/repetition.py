"""N-gram repetition penalty (as in open-r1, after Yeo et al. 2025).

penalty = max_penalty * (1 - distinct n-grams / total n-grams) over whitespace words, so a
completion that loops ("!!!!", the same sentence again and again) approaches `max_penalty`
and varied text scores ~0. Completions shorter than n words score 0.
"""

from __future__ import annotations

from .extract import completion_text


def repetition_reward(completions, ngram_size: int = 3, max_penalty: float = -1.0, **_) -> list[float]:
    """Example: 'a b c a b c a b c a b c' -> -0.7 (3 distinct of 10 trigrams); 'the cat sat on the mat' -> 0.0."""
    if max_penalty > 0:
        raise ValueError("repetition reward: max_penalty must be <= 0")
    out = []
    for completion in completions:
        words = completion_text(completion).lower().split()
        grams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
        out.append(0.0 if not grams else max_penalty * (1 - len(set(grams)) / len(grams)))
    return out
