"""Multi-turn ("retry") episodes as a reader wants them: each turn's text and verdict, what the
environment said between turns, and what came of it.

A trace record of a run with `rollout.environment` carries `turns`, `verdicts` (the environment's
verdict per judged turn) and, in newer runs, `turn_texts` (what the model wrote in each turn,
prefill first) and `feedback` (what the environment answered after each finished turn).
`episode(record)` builds the view from whatever a record has:

- the turn texts: `turn_texts`, else the completion split at the chat scaffold that joins turns
  (`<|im_end|>\\n<|im_start|>user\\nFEEDBACK<|im_end|>\\n<|im_start|>assistant\\n`), else the whole
  completion as one block (`Episode.separated` is then false when it may hold several turns);
- the feedback: `feedback`, else what the split found between the turns, else None.

Records are untrusted: a field of the wrong type is ignored and lists of different lengths leave
a verdict or a feedback None, never an exception. The texts come back raw; the caller escapes
them for a terminal (`terminal_safe`) or a page (`html.escape`).

Outcomes: `right_first` (the first answer was right), `fixed` (wrong first, right at the last
judged turn), `not_fixed` (wrong first and never right: wrong again, or no second turn),
`unjudged` (no verdict, e.g. a truncated first turn or a single-turn run).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..untrusted import is_text
from .schema import is_int

OUTCOMES = ("right_first", "fixed", "not_fixed", "unjudged")
OUTCOME_LABELS = {"right_first": "right at once", "fixed": "wrong → fixed", "not_fixed": "wrong → not fixed", "unjudged": "not judged"}

# Between two turns of a chat-template episode: [<|im_end|>]\n<|im_start|>user\nFEEDBACK<|im_end|>\n<|im_start|>assistant\n
# (the first <|im_end|> is absent when the model's own end-of-turn token, decoded without special tokens, closed the turn).
CLOSE, USER, ASSISTANT = "<|im_end|>\n", "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class Turn:
    text: str
    verdict: bool | None  # None: not judged, or not known
    feedback: str | None  # what the environment answered after this turn; None: nothing, or not recorded


@dataclass(frozen=True)
class Episode:
    turns: tuple[Turn, ...]
    verdicts: tuple[bool, ...]
    outcome: str
    separated: bool  # false: turns[0] is the whole completion, which may hold several turns


def verdicts_of(record: dict) -> tuple[bool, ...]:
    """The record's verdicts; () when absent or not a list of true/false."""
    verdicts = record.get("verdicts")
    if isinstance(verdicts, list) and all(isinstance(v, bool) for v in verdicts):
        return tuple(verdicts)
    return ()


def outcome_of(record: dict) -> str:
    """`right_first`, `fixed`, `not_fixed` or `unjudged`, from the verdicts alone."""
    verdicts = verdicts_of(record)
    if not verdicts:
        return "unjudged"
    if verdicts[0]:
        return "right_first"
    return "fixed" if verdicts[-1] else "not_fixed"


def has_verdicts(record: dict) -> bool:
    """A record of a run with an environment or tools (it carries a verdicts list), judged or not."""
    return isinstance(record.get("verdicts"), list)


def is_multi_turn(record: dict) -> bool:
    """An environment episode: a judged turn, or more than one turn."""
    turns = record.get("turns")
    return bool(verdicts_of(record)) or (is_int(turns) and turns > 1)


def split_completion(completion: str) -> tuple[list[str], list[str]]:
    """(turn texts, feedback between them) of a chat-template completion; ([completion], []) without
    a scaffold. One pass with str.find, so a hostile text of many markers cannot make it slow."""
    texts, feedback, pos = [], [], 0
    while (start := completion.find(USER, pos)) >= 0 and (end := completion.find(ASSISTANT, start + len(USER))) >= 0:
        turn = completion[pos:start]
        texts.append(turn.removesuffix(CLOSE) if turn.endswith(CLOSE) else turn.removesuffix("\n"))
        feedback.append(completion[start + len(USER) : end])
        pos = end + len(ASSISTANT)
    return texts + [completion[pos:]], feedback


def _texts(value) -> list[str] | None:
    if isinstance(value, list) and value and all(is_text(t) for t in value):
        return value
    return None


def episode(record: dict) -> Episode:
    """The record as turns (text, verdict, feedback after it) and an outcome; see the module docstring."""
    verdicts = verdicts_of(record)
    completion = record.get("completion") if is_text(record.get("completion")) else ""
    split_texts, split_feedback = split_completion(completion)
    texts = _texts(record.get("turn_texts")) or (split_texts if len(split_texts) > 1 else None)
    separated = texts is not None
    if texts is None:
        texts = [completion]
        separated = len(verdicts) <= 1 and record.get("turns", 1) in (1, None)
    feedback = _texts(record.get("feedback"))
    if feedback is None and len(split_feedback) == len(texts) - 1:
        feedback = split_feedback
    feedback = feedback or []
    turns = tuple(
        Turn(text,
             verdicts[i] if separated and i < len(verdicts) else None,
             feedback[i] if i < len(feedback) and i < len(texts) - 1 else None)
        for i, text in enumerate(texts)
    )
    return Episode(turns, verdicts, outcome_of(record), separated)

