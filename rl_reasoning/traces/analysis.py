"""Per-completion self-correction analysis and the per-step statistics built from it.

`analyze` runs every detector on one completion; `step_statistics` turns a step's analyses into
the `traces/*` metrics the trainer logs (and `rl-reasoning traces summary` recomputes from the
trace file, so old runs and runs with other marker lists can be re-analysed).

A multi-turn episode (an environment answered the model between turns) is analysed turn by
turn: the environment's feedback is not the model's text, and an answer changed *after*
feedback is the environment's fix (`env/second_turn_fix_rate`), not a revision inside one turn.
Spans are shifted back into the whole completion's text, so highlighting works on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from .detectors import (
    REVISION_CLASSES,
    Claim,
    Revision,
    Span,
    answers_match,
    compile_markers,
    find_reflections,
    find_revision,
    find_verifications,
    is_degenerate,
    stated_answers,
)


@dataclass
class TraceAnalysis:
    reflections: list[Span]
    revision: Revision | None
    verifications: list[Span]
    claims: list[Claim]
    degenerate: bool
    tokens: int
    correct: bool | None = None

    @property
    def reflected(self) -> bool:
        return bool(self.reflections)

    @property
    def aha(self) -> bool:
        """The headline event: the model changed its answer from wrong to right."""
        return self.revision is not None and self.revision.kind == "wrong_to_right"


@dataclass
class Analyzer:
    """Holds the (configurable) marker list; call it on one completion."""

    markers: list[str] | None = None  # plain phrases replacing the defaults; None = defaults
    extra_markers: list[str] = field(default_factory=list)
    is_correct: Callable[[str, str], bool] = answers_match

    def __post_init__(self):
        self._compiled = compile_markers(self.markers, self.extra_markers)

    def __call__(self, text: str, gold: str | None = None, correct: bool | None = None, tokens: int | None = None,
                 turn_texts: Sequence[str] | None = None, verdicts: Sequence[bool] | None = None) -> TraceAnalysis:
        """One completion's analysis; with `turn_texts` (an episode of several turns) each turn is
        analysed on its own, judged by its verdict, and the results merged."""
        offsets = turn_offsets(text, turn_texts) if turn_texts is not None and len(turn_texts) > 1 else None
        if offsets is None:
            return self._one(text, gold, correct, tokens)
        verdicts = list(verdicts or [])
        parts = []
        for k, (turn, start) in enumerate(zip(turn_texts, offsets)):
            verdict = verdicts[k] if k < len(verdicts) else (correct if k == len(turn_texts) - 1 else None)
            parts.append(_shifted(self._one(turn, gold, verdict, None), start))
        revisions = [a.revision for a in parts if a.revision is not None]
        return TraceAnalysis(
            reflections=[r for a in parts for r in a.reflections],
            revision=revisions[-1] if revisions else None,
            verifications=[v for a in parts for v in a.verifications],
            claims=[c for a in parts for c in a.claims],
            degenerate=any(a.degenerate for a in parts),
            tokens=tokens if tokens is not None else sum(a.tokens for a in parts),
            correct=correct,
        )

    def _one(self, text: str, gold: str | None, correct: bool | None, tokens: int | None) -> TraceAnalysis:
        reflections = find_reflections(text, self._compiled)
        claims = stated_answers(text, reflections)
        revision = find_revision(text, gold, correct, self.is_correct, reflections, claims)
        verifications = find_verifications(text)
        if revision is not None:  # a check that led to a changed answer found an error: it is the revision
            verifications = [v for v in verifications if not revision.before.end <= v.start < revision.after.start]
        return TraceAnalysis(
            reflections=reflections,
            revision=revision,
            verifications=verifications,
            claims=claims,
            degenerate=is_degenerate(text),
            tokens=tokens if tokens is not None else approximate_tokens(text),
            correct=correct,
        )


def turn_offsets(text: str, turn_texts: Sequence[str]) -> list[int] | None:
    """Where each turn's text starts in the whole completion (turns in order); None when one is not found."""
    offsets, pos = [], 0
    for turn in turn_texts:
        if not isinstance(turn, str):
            return None
        at = text.find(turn, pos)
        if at < 0:
            return None
        offsets.append(at)
        pos = at + len(turn)
    return offsets


def _shifted(a: TraceAnalysis, by: int) -> TraceAnalysis:
    """`a` with every span moved `by` characters (a turn's analysis placed in the whole completion)."""
    def move(x):
        return replace(x, start=x.start + by, end=x.end + by)

    revision = None
    if a.revision is not None:
        revision = replace(a.revision, before=move(a.revision.before), after=move(a.revision.after), point=move(a.revision.point))
    return replace(a, reflections=[move(r) for r in a.reflections], verifications=[move(v) for v in a.verifications],
                   claims=[move(c) for c in a.claims], revision=revision)


def approximate_tokens(text: str) -> int:
    """Word pieces, for traces that lack a token count (about 1.3 per English word)."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def step_statistics(analyses: Iterable[TraceAnalysis]) -> dict[str, float]:
    """traces/* metrics over one step's completions. Rates are fractions of completions; the
    accuracies with/without reflection are NaN when no completion falls in that group."""
    items = list(analyses)
    n = len(items)
    if n == 0:
        return {}
    reflected = [a for a in items if a.reflected]
    plain = [a for a in items if not a.reflected]
    tokens = sum(a.tokens for a in items)
    out = {
        "traces/reflection_rate": len(reflected) / n,
        "traces/reflections_per_1k_tokens": 1000.0 * sum(len(a.reflections) for a in items) / max(tokens, 1),
        "traces/revision_rate": sum(a.revision is not None for a in items) / n,
        "traces/verification_rate": sum(bool(a.verifications) for a in items) / n,
        "traces/accuracy_with_reflection": _accuracy(reflected),
        "traces/accuracy_without_reflection": _accuracy(plain),
        "traces/mean_length": tokens / n,
        "traces/aha_count": float(sum(a.aha for a in items)),
        "traces/degenerate_frac": sum(a.degenerate for a in items) / n,
    }
    for kind in REVISION_CLASSES:
        out[f"traces/revision/{kind}"] = sum(a.revision is not None and a.revision.kind == kind for a in items) / n
    return out


def _accuracy(items: list[TraceAnalysis]) -> float:
    judged = [a.correct for a in items if a.correct is not None]
    return sum(judged) / len(judged) if judged else float("nan")
