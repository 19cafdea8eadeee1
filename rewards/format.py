"""Format rewards for the think/answer structure used by DeepSeek-R1-Zero.

`strict`: 1 when the whole completion is `<think>...</think>` followed by `<answer>...</answer>`
(whitespace allowed between and around), else 0. `soft`: 1 when such a pair appears anywhere
(text before or after allowed). `tag_count`: 0.25 for each of the four
tags that appears exactly once, in order-insensitive fashion (open-r1's tag_count idea), so a
model that has never produced the format still gets a gradient towards it.
"""

from __future__ import annotations

import re

from .extract import completion_text

STRICT = re.compile(r"^\s*<think>(?:(?!<think>|</think>).)*</think>\s*<answer>(?:(?!<answer>|</answer>).)*</answer>\s*$", re.DOTALL)
SOFT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def is_well_formatted(text: str) -> bool:
    return STRICT.match(text) is not None


def reasoning_section(text: str) -> str:
    """The text of the reasoning section: from the first <think> to the first </think> (or to
    <answer> / the end when </think> is missing); "" without a <think> tag."""
    start = text.find("<think>")
    if start < 0:
        return ""
    body = text[start + len("<think>") :]
    end = min((i for i in (body.find("</think>"), body.find("<answer>")) if i >= 0), default=len(body))
    return body[:end].strip()


def tag_count_score(text: str) -> float:
    return sum(0.25 for tag in TAGS if text.count(tag) == 1)


def format_reward(completions, mode: str = "strict", turn_texts=None, **_) -> list[float]:
    """Examples: '<think>1+1=2</think><answer>2</answer>' -> 1.0; 'The answer is 2' -> 0.0 (strict) / 0.0 (tag_count).
    In a multi-turn episode (`turn_texts`, from an environment) each turn is scored on its own
    and the episode gets the mean, so a second turn is not penalised for repeating the tags."""
    if mode not in ("strict", "soft", "tag_count"):
        raise ValueError(f"format reward: mode must be 'strict', 'soft' or 'tag_count', got {mode!r}")
    if turn_texts is not None:
        return [sum(format_reward([t], mode)[0] for t in turns) / len(turns) if turns else format_reward([c], mode)[0]
                for c, turns in zip(completions, turn_texts)]
    texts = [completion_text(c) for c in completions]
    if mode == "strict":
        return [1.0 if is_well_formatted(t) else 0.0 for t in texts]
    if mode == "soft":
        return [1.0 if SOFT.search(t) else 0.0 for t in texts]
    return [1.0 if is_well_formatted(t) else tag_count_score(t) for t in texts]
