"""Pull the final answer out of a completion: the last \\boxed{...}, else the last <answer>...</answer>.

A fallback to the last number in the text exists for tasks where a weak model must first
get *some* signal; it is off unless a reward asks for it.
"""

from __future__ import annotations

import re

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def completion_text(completion) -> str:
    """TRL passes either a string or a list of chat messages; we read the last message's content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if absent or unclosed."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def last_answer_tag(text: str) -> str | None:
    matches = ANSWER_TAG.findall(text)
    return matches[-1] if matches else None


def last_number(text: str) -> str | None:
    matches = NUMBER.findall(text)
    return matches[-1].replace(",", "") if matches else None


def extract_answer(text: str, fallback: str = "none") -> str | None:
    """The final answer as a stripped string, or None. fallback: 'none' or 'last_number'."""
    for found in (last_boxed(text), last_answer_tag(text)):
        if found is not None:
            inner = last_boxed(found)  # <answer>\boxed{5}</answer>
            return (inner if inner is not None else found).strip()
    if fallback == "last_number":
        return last_number(text)
    if fallback != "none":
        raise ValueError(f"fallback must be 'none' or 'last_number', got {fallback!r}")
    return None
