"""Per-completion self-correction analysis and the per-step statistics built from it.

`analyze` runs every detector on one completion; `step_statistics` turns a step's analyses into
the `traces/*` metrics the trainer logs (and `rl-reasoning traces summary` recomputes from the
trace file, so old runs and runs with other marker lists can be re-analysed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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

    def __call__(self, text: str, gold: str | None = None, correct: bool | None = None, tokens: int | None = None) -> TraceAnalysis:
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
