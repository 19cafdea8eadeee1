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


MAX_SCAN_CHARS = 20_000  # answers sit at the end; a 10 MB completion is only scanned here


def extract_answer_with_source(text: str, fallback: str = "none") -> tuple[str | None, str | None]:
    """(answer, where it came from: 'boxed' | 'answer_tag' | 'last_number' | None)."""
    if fallback not in ("none", "last_number"):
        raise ValueError(f"fallback must be 'none' or 'last_number', got {fallback!r}")
    text = text[-MAX_SCAN_CHARS:]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip(), "boxed"
    tagged = last_answer_tag(text)
    if tagged is not None:
        inner = last_boxed(tagged)  # <answer>\boxed{5}</answer>
        return (inner if inner is not None else tagged).strip(), "answer_tag"
    if fallback == "last_number":
        number = last_number(text)
        return number, ("last_number" if number is not None else None)
    return None, None


def extract_answer(text: str, fallback: str = "none") -> str | None:
    """The final answer as a stripped string, or None. fallback: 'none' or 'last_number'."""
    return extract_answer_with_source(text, fallback)[0]


_BOLD = re.compile(r"\*\*(.+?)\*\*|__(.+?)__", re.DOTALL)
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\{(.*)\}$", re.DOTALL)
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")  # the whole answer is one number


def normalize_answer(answer: str) -> str:
    """Strip presentation: **bold**, $...$ / \\(...\\), a whole-answer \\text{}, a trailing period, 1,000 separators."""
    s = answer.strip()
    s = _BOLD.sub(lambda m: m.group(1) or m.group(2), s)
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    m = _TEXT_WRAP.match(s)
    if m and "{" not in m.group(1):
        s = m.group(1).strip()
    s = s.rstrip().rstrip(".").rstrip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s
