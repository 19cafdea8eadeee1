"""Self-correction detectors: reflection markers, answer revisions, verifications, degenerate text.

Each detector is a pure function of one completion's text (plus the gold answer where
correctness matters). They are heuristics over surface text, tuned to be *conservative*: a
word-problem sentence such as "the wait time is 5 minutes" or "actually 3 apples" must not
count as reflection, so "wait" only counts as a discourse marker ("Wait,", "but wait", "wait a
moment"). Departure from the R1 paper: the paper counts reflective *words* per 1k tokens over
training (Fig. 9 of the R1 tech report uses "wait", "mistake", "however", "but", "retry", "error",
"verify", "wrong", "evaluate", "check"); we count reflective *phrases* (one per occurrence,
overlaps merged), because bare "but"/"however"/"check" fire on ordinary arithmetic prose.
"""

from __future__ import annotations

import bisect
import math
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from rewards.extract import extract_answer_with_source, normalize_answer

# --------------------------------------------------------------------------- reflection markers

_SENTENCE_START = r"(?:^|(?<=[.!?:;>\n])|(?<=[.!?:;>\n] ))"
DEFAULT_MARKERS: dict[str, str] = {
    # "Wait," / "But wait." / "wait a moment" at a sentence start -- not "the wait time", "Customers wait."
    "wait": _SENTENCE_START + r"wait\b(?=\s*[,.!\u2026\u2014-]|\s+(?:a\s+(?:moment|minute|second|sec)\b|no\b|that\b|i\b|actually\b|let\b))"
    r"|\b(?:but|oh|hmm|no|ok|okay)[,!]?\s+wait\b(?=\s*[,.!\u2026\u2014-])",
    "let me check": r"\blet(?:\s+me|'s|\s+us)\s+(?:re-?check|check|verify|double[- ]check|re-?verify|re-?calculate|re-?compute|re-?evaluate|re-?examine|reconsider|re-?think|think\s+again|try\s+again|go\s+back|look\s+again|see\s+again"
                    r"|re-?count|re-?do|re-?add|make\s+sure|confirm)\b",
    # a check announced as such: "Sanity check:", "To confirm, ...", "Plugging it back in" -- not "a check for $20"
    "check": r"\b(?:sanity|quick)\s+check\b|\bcross[- ]check\w*|\bcheck(?:ing)?(?:\s+my\s+work)?\s*:|\bchecking\s+my\s+work\b|\bas\s+a\s+check\b"
             r"|\bto\s+(?:confirm|verify|be\s+(?:sure|safe)|double[- ]check)\b|\bplugg?(?:ing|ed)?\s+(?:it\s+|this\s+|that\s+)?back\b|\bworking\s+backwards?\b",
    "hold on": r"\bhold\s+on\b(?!\s+to\b)|\boops\b|\bscratch\s+that\b|\bon\s+reflection\b",
    # doubt about its own work: "I'm not sure", "this might be off", "that doesn't look right", "is that right?"
    "doubt": r"\b(?:i'?m|i\s+am)\s+not\s+(?:\w+\s+)?sure\b|\bnot\s+(?:\w+\s+)?sure\s+(?:about|if|whether|i)\b"
             r"|\b(?:this|that|it|mine)\s+(?:might|may|could)\s+be\s+(?:off|wrong|incorrect)\b|\bi\s+(?:might|may)\s+have\s+made\s+a\s+mistake\b"
             r"|\bi\s+think\s+(?:i\s+)?(?:got|made|have)\s+(?:that|this|it|a\s+mistake)\b|\b(?:that|this|it)\s+(?:doesn't|does\s+not|didn't)\s+(?:look|seem|feel|sound)\s+right\b"
             r"|\bis\s+(?:that|this|it)\s+(?:right|correct)\s*\?|\bi\s+should\s+(?:be\s+careful|verify|check|double[- ]check|make\s+sure)\b"
             r"|\bi\s+(?:forgot|miscounted|misread|miscalculated|mixed\s+up)\b|\b(?:that'?s|that\s+is|this\s+is|it'?s)\s+off\b",
    "double-check": r"\b(?:double[- ]check(?:ing|ed)?|re-?check(?:ing|ed)?|re-?verif(?:y|ying|ied))\b",
    "actually": _SENTENCE_START + r"actually\b|\bactually\s*,",  # not "He actually has 3 apples"
    "mistake": r"\b(?:i|we)\s+(?:made|make|have\s+made)\s+(?:a|an|one)\s+(?:mistake|error|miscalculation)\b|\bmy\s+(?:mistake|error|bad)\b|\b(?:that|this|it)(?:\s+is|'s|\s+was)\s+(?:wrong|incorrect|not\s+(?:right|correct))\b"
               r"|\b(?:the|my)\s+(?:answer|result)\s+(?:is|was)\s+(?:wrong|incorrect|not\s+(?:right|correct))\b|\bwhich\s+is\s+not\s+correct\b|"
               + _SENTENCE_START + r"(?:well,?\s+)?no[,.!]\s+(?=i\b|that\b|it\b|wait\b|the\s+answer\b)",
    "hmm": _SENTENCE_START + r"hm+\b|\bhm{2,}\b",  # not "5 hm long"
    "on second thought": r"\bon\s+(?:second|further)\s+thought\b",
}


def phrase_pattern(phrase: str) -> str:
    """A plain marker phrase as a case-insensitive, word-boundary-aware regex ('let me see' -> \\blet\\s+me\\s+see\\b)."""
    words = [re.escape(w) for w in phrase.split()]
    if not words:
        raise ValueError("a reflection marker must not be empty")
    left = r"\b" if re.match(r"\w", phrase.strip()[0]) else ""
    right = r"\b" if re.match(r"\w", phrase.strip()[-1]) else ""
    return left + r"\s+".join(words) + right


def compile_markers(markers: dict[str, str] | Sequence[str] | None = None, extra: Iterable[str] = ()) -> list[tuple[str, re.Pattern]]:
    """Markers as (name, compiled regex). A dict maps names to regexes; a list holds plain phrases."""
    if markers is None:
        markers = DEFAULT_MARKERS
    if isinstance(markers, dict):
        items = list(markers.items())
    else:
        items = [(m, phrase_pattern(m)) for m in markers]
    items += [(m, phrase_pattern(m)) for m in extra]
    return [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in items]


_DEFAULT_COMPILED = compile_markers()


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    label: str  # the marker name, the claimed answer, ...


def find_reflections(text: str, markers: list[tuple[str, re.Pattern]] | None = None) -> list[Span]:
    """Reflection markers in reading order; overlapping hits ('let me double-check') count once."""
    hits = []
    for name, regex in markers or _DEFAULT_COMPILED:
        hits += [Span(m.start(), m.end(), name) for m in regex.finditer(text)]
    hits.sort(key=lambda s: (s.start, -s.end))
    merged: list[Span] = []
    for span in hits:
        if merged and span.start < merged[-1].end:
            continue
        merged.append(span)
    return merged


def reflections_per_1k_tokens(count: int, tokens: int) -> float:
    """The R1 paper's measure for one completion (or summed over a step)."""
    return 1000.0 * count / tokens if tokens > 0 else 0.0


# --------------------------------------------------------------------------- stated answers

_NUM = r"(?>-?\d++(?:,\d++)*+(?:\.\d++)?+(?:/\d++)?+)"  # "1,000" and "56, because": a comma belongs to a number only between digits
_CLAUSE_END = r"(?=\s*+(?:[.,;!?)]|</|\*|$)|\s++[a-z]++(?:\s++[a-z]++)?\s*+(?:[.!]|$))"  # "so 12." / "is 8</answer>" / "So 64 passengers." -- not "so 3 boxes are", "is 3x + 4"
_CLAIM_PHRASES = re.compile(
    r"\b(?:(?:the\s++)?(?:final\s++|correct\s++|right\s++)?(?:answer|result|total|sum|difference|product)\s*+(?:is|=|:|would\s+be|will\s+be|should\s+be|must\s+be)"
    r"|(?:so|therefore|thus|hence)(?:\s*+,)?(?:\s++(?:it\s+is|it's|we\s+get|the\s+answer\s+is|that's|that\s+is))?"
    r"|i\s+think\s+(?:it'?s|it\s+is)|(?:it\s+)?must\s+be)\s*+(?:\*++\s*+)?(?P<value>" + _NUM + r")" + _CLAUSE_END,
    re.IGNORECASE,
)
_ANSWER_TAG = re.compile(r"<answer>(?P<value>(?:(?!<answer>).)*?)</answer>", re.DOTALL)  # linear on unclosed tags
_EQUATION_RESULT = re.compile(r"=\s*+(?P<value>" + _NUM + r")")
_EQUATION = re.compile(r"(?P<lhs>(?<![\d.])-?\d++(?:\s*+[-+*/×x]\s*+-?\d++)++)\s*+=\s*+(?P<value>" + _NUM + r")")
_LOOKAHEAD_FOR_MARKER = 60  # an equation result followed this closely by a reflection marker is a claim


@dataclass(frozen=True)
class Claim:
    value: str  # normalised
    start: int
    end: int
    kind: str  # 'phrase' | 'answer_tag' | 'boxed' | 'equation_before_reflection' | 'restated_equation'


def stated_answers(text: str, reflections: list[Span] | None = None) -> list[Claim]:
    """Answers the completion commits to, in reading order.

    A claim is an explicit phrase ("the answer is 7", "so 7"), an <answer> tag, a \\boxed{}, or
    the result of an equation that a reflection marker follows closely ("3 + 5 = 9. Wait, ...").
    Plain intermediate equations ("3 + 5 = 8, 8 * 2 = 16") are steps, not claims.
    """
    reflections = find_reflections(text) if reflections is None else reflections
    claims = [Claim(canonical_answer(m["value"]), m.start("value"), m.end("value"), "phrase") for m in _CLAIM_PHRASES.finditer(text)]
    boxed = []
    for m in re.finditer(r"\\boxed\{", text):
        end = _closing_brace(text, m.end())
        if end is not None:
            boxed.append(Claim(canonical_answer(text[m.end() : end]), m.end(), end, "boxed"))
    for m in _ANSWER_TAG.finditer(text):
        if not any(m.start() <= b.start < m.end() for b in boxed):  # <answer>\boxed{8}</answer> is one claim
            claims.append(Claim(canonical_answer(m["value"]), m.start("value"), m.end("value"), "answer_tag"))
    claims += boxed
    claims += _equation_claims(text, reflections)
    claims.sort(key=lambda c: c.start)
    out: list[Claim] = []
    for c in claims:  # a value inside an <answer> tag may also match a phrase; keep the first
        if out and c.start < out[-1].end:
            continue
        out.append(c)
    return [c for c in out if c.value]


def _equation_claims(text: str, reflections: list[Span]) -> list[Claim]:
    """Equation results that are claims: the last one before a reflection marker that follows it
    closely ("3 + 5 = 9. Wait, ..."), unless the next step reuses it ("= 43, 43 + 31 = 74. Hmm" is a
    chain); and an expression stated twice with different results ("8 - 3 = 5 ... 8 - 3 = 4")."""
    claims = []
    results = list(_EQUATION_RESULT.finditer(text))
    ends = [m.end() for m in results]
    for r in reflections:
        k = bisect.bisect_right(ends, r.start) - 1  # the last equation result before the marker
        if k >= 0 and r.start - ends[k] <= _LOOKAHEAD_FOR_MARKER and not _CLAIM_PHRASES.search(text, ends[k], r.start):  # "= 8. So 83. Hmm": the phrase is the claim
            m = results[k]
            reused = re.match(r"\s*+[,.;]?\s*+(?:and\s+|then\s+)?" + re.escape(m["value"]) + r"\s*+[-+*/×x]", text[m.end() : m.end() + 40])
            if not reused:
                claims.append(Claim(canonical_answer(m["value"]), m.start("value"), m.end("value"), "equation_before_reflection"))
    equations = list(_EQUATION.finditer(text))
    if equations:  # the first equation is an answer that a later recomputation of the same problem replaces,
        # when nothing builds on its result ("29 + 33 + 14 = 66. 29 + 33 = 62, and 62 + 14 = 76."; not "4 + 8 = 12, 12 + 3 = 15")
        m = equations[0]
        value = m["value"]
        lead = re.match(r"-?\d+", m["lhs"])[0]
        ends_sentence = re.match(r"\s*+(?:[a-z]++\s*+)?(?:[.\n]|$)", text[m.start("value") + len(value) :])
        recomputed = any(lead in re.findall(r"\d+", later["lhs"]) for later in equations[1:])
        if ends_sentence and recomputed and value not in re.findall(r"(?<![\d.])-?\d++(?:\.\d++)?", text[m.end() :]):
            claims.append(Claim(canonical_answer(value), m.start("value"), m.end("value"), "first_equation"))
    by_lhs: dict[str, list[re.Match]] = {}
    for m in equations:
        by_lhs.setdefault(re.sub(r"\s+", "", m["lhs"]), []).append(m)
    for same in by_lhs.values():
        if len({canonical_answer(m["value"]) for m in same}) > 1:
            claims += [Claim(canonical_answer(m["value"]), m.start("value"), m.end("value"), "restated_equation") for m in same]
    return claims


def _closing_brace(text: str, i: int) -> int | None:
    depth = 1
    for j in range(i, min(len(text), i + 2000)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return j
    return None


_LEADING_VAR = re.compile(r"^[a-z]\s*=\s*", re.IGNORECASE)
_NUMBER_WITH_UNIT = re.compile(r"^(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)\s*[%a-z][a-z ]*$", re.IGNORECASE)


def canonical_answer(value: str) -> str:
    """A claim's value without presentation: \\boxed{}, $...$, bold, 'x =', units ('8 apples' -> '8')."""
    s = value.strip()
    if s.startswith("\\boxed{") and s.endswith("}"):
        s = s[7:-1]
    s = normalize_answer(s)
    s = _LEADING_VAR.sub("", s)
    m = _NUMBER_WITH_UNIT.match(s)
    return m.group(1).replace(",", "") if m and not s.endswith("%") else s


def _as_number(s: str) -> Fraction | None:
    t = s.replace(",", "").replace(" ", "").rstrip(".")
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        try:
            f = float(t)
        except ValueError:
            return None
        return Fraction(f) if math.isfinite(f) else None


def answers_match(a: str | None, b: str | None) -> bool:
    """Same answer: equal as numbers (7 == 7.0 == 14/2), else equal after normalisation, case-insensitive."""
    if a is None or b is None:
        return False
    a, b = normalize_answer(str(a)), normalize_answer(str(b))
    x, y = _as_number(a), _as_number(b)
    if x is not None and y is not None:
        return x == y
    return a.casefold() == b.casefold()


# --------------------------------------------------------------------------- revisions

REVISION_CLASSES = ("wrong_to_right", "right_to_wrong", "wrong_to_wrong", "changed")


@dataclass(frozen=True)
class Revision:
    kind: str  # one of REVISION_CLASSES ('changed' when there is no gold answer to judge by)
    before: Claim  # the last earlier claim that differs from the final answer
    after: Claim  # the final answer
    point: Span  # where the model changes its mind: the first reflection marker after `before`, else `after`


def final_claim(text: str, claims: list[Claim], fallback: str = "last_number") -> Claim | None:
    """The answer the completion ends on: its <answer>/\\boxed{} (as the rewards extract it), else the last claim."""
    value, source = extract_answer_with_source(text, "none")
    if value is not None:
        tagged = [c for c in claims if c.kind in ("answer_tag", "boxed")]
        if tagged:
            return tagged[-1]
    return claims[-1] if claims else None


def find_revision(
    text: str,
    gold: str | None = None,
    final_correct: bool | None = None,
    is_correct: Callable[[str, str], bool] = answers_match,
    reflections: list[Span] | None = None,
    claims: list[Claim] | None = None,
) -> Revision | None:
    """The completion states an answer, then ends on a different one. None when it never changes its answer.

    `final_correct` (e.g. the accuracy reward's verdict) overrides judging the final claim by `is_correct`.
    """
    reflections = find_reflections(text) if reflections is None else reflections
    claims = stated_answers(text, reflections) if claims is None else claims
    final = final_claim(text, claims)
    if final is None:
        return None
    earlier = [c for c in claims if c.end <= final.start and not answers_match(c.value, final.value)]
    if not earlier:
        return None
    before = earlier[-1]
    point = next((r for r in reflections if before.end <= r.start < final.start), Span(final.start, final.end, "(no marker)"))
    if gold is None:
        kind = "changed"  # nothing to judge the earlier answer by
    else:
        after_ok = final_correct if final_correct is not None else is_correct(final.value, gold)
        before_ok = is_correct(before.value, gold) if gold is not None else False
        if after_ok and not before_ok:
            kind = "wrong_to_right"
        elif before_ok and not after_ok:
            kind = "right_to_wrong"
        elif not before_ok and not after_ok:
            kind = "wrong_to_wrong"
        else:
            kind = "changed"  # two different answers both judged right (e.g. equivalent forms)
    return Revision(kind, before, final, point)


def mark_revision(text: str, revision: Revision | None, mark: Callable[[str, str], str], plain: Callable[[str], str] = str) -> str:
    """`text` with the abandoned answer, the revision point and the final answer wrapped by
    mark(span_text, kind), kind in 'wrong' | 'right' | 'point'; the rest passed through `plain`."""
    if revision is None:
        return plain(text)
    spans = sorted({
        (revision.before.start, revision.before.end, "right" if revision.kind == "right_to_wrong" else "wrong"),
        (revision.point.start, revision.point.end, "point"),
        (revision.after.start, revision.after.end, "right" if revision.kind == "wrong_to_right" else "wrong"),
    })
    out, pos = [], 0
    for start, end, kind in spans:
        if start < pos:
            continue
        out += [plain(text[pos:start]), mark(text[start:end], kind)]
        pos = end
    out.append(plain(text[pos:]))
    return "".join(out)


# --------------------------------------------------------------------------- verification

_CHECK_CUE = re.compile(
    r"\b(?:let(?:\s+me|'s|\s+us)\s+(?:double[- ]check|re-?check|check|verify|confirm|make\s+sure|re-?add|re-?count)|double[- ]check(?:ing)?|re-?check(?:ing)?|to\s+verify|to\s+check"
    r"|to\s+(?:confirm|be\s+(?:sure|safe))|verif(?:y|ying|ication)|plugg?(?:ing|ed)?\s+(?:it\s+|this\s+|that\s+)?back|substitut(?:e|ing)\s+back|(?:sanity|quick)\s+check"
    r"|cross[- ]check\w*|as\s+a\s+check|working\s+backwards?|checking\s+my\s+work|is\s+(?:that|this|it)\s+right)\b"
    r"|\bcheck(?:ing)?\s*:",
    re.IGNORECASE,
)
_CONFIRMATION = re.compile(
    r"\b(?:correct|that'?s\s+right|that\s+is\s+right|is\s+right|yes|confirmed|confirms|checks\s+out|matches|consistent|indeed|holds|agrees|good"
    r"|same\s+(?:result|answer|value)|the\s+same|sure\s+enough)\b|✓|✔",
    re.IGNORECASE,
)
_DENIAL = re.compile(r"\b(?:not|isn't|incorrect|wrong|doesn't|does\s+not|mistake|error|too\s+(?:big|small|large|high|low|much|many|few))\b|≠", re.IGNORECASE)
_RECHECK_WINDOW = 50  # a confirmation this close after a recomputation is a check even without a cue word
_VERIFY_WINDOW = 160


def find_verifications(text: str) -> list[Span]:
    """Checks that confirm a result: a check cue ("let me verify", "check:") followed within a short
    window by a confirmation ("correct", "yes", "checks out", "✓") or by a recomputed equation, with no
    denial ("wrong", "not correct", "mistake") in that window. A check that finds an error is a revision."""
    out = []
    stated = _Stated(text)
    for cue in _CHECK_CUE.finditer(text):
        window = text[cue.end() : cue.end() + _VERIFY_WINDOW]
        denial = _DENIAL.search(window)
        if re.match(r"\s*(?:if|whether)\b", window, re.IGNORECASE):  # "let me check if this is correct": a question
            window = window[window.find(".") + 1 :] if "." in window else ""
        confirm = _CONFIRMATION.search(window) or _recomputation(stated, cue.end(), window)
        if confirm and denial is None:
            out.append(Span(cue.start(), cue.end() + confirm.end(), "verification"))
    covered_end = 0  # the cue-found checks, in order, never overlap a cue-free one
    spans = iter(out)
    span = next(spans, None)
    for m in _EQUATION.finditer(text):  # no cue: a recomputation that a confirmation follows ("48 + 19 = 57 ✓", "..., which matches")
        while span is not None and span.start <= m.start():
            covered_end = max(covered_end, span.end)
            span = next(spans, None)
        if m.start() < covered_end or not _recomputation(stated, m.start(), text[m.start() : m.end()]):
            continue
        after = text[m.end() : m.end() + _RECHECK_WINDOW]
        confirm = _CONFIRMATION.search(after)
        if confirm and _DENIAL.search(after[: confirm.start()]) is None:
            out.append(Span(m.start(), m.end() + confirm.end(), "verification"))
    return sorted(out, key=lambda v: v.start)


class _Stated:
    """Where a text first states each number and each equation's expression, so "stated before
    position p" is one lookup (linear in the text overall, however many checks it holds)."""

    def __init__(self, text: str):
        self.number_at: dict[str, int] = {}
        for m in re.finditer(_NUM, text):
            self.number_at.setdefault(canonical_answer(m.group(0)), m.end())
        self.expression_at: dict[str, int] = {}
        for m in _EQUATION.finditer(text):
            self.expression_at.setdefault(re.sub(r"\s+", "", m["lhs"]), m.end("lhs"))

    def number_before(self, value: str, at: int) -> bool:
        return self.number_at.get(value, at + 1) <= at

    def expression_before(self, lhs: str, at: int) -> bool:
        return self.expression_at.get(lhs, at + 1) <= at


def _recomputation(stated: _Stated, at: int, window: str) -> re.Match | None:
    """The first equation in `window` (text from `at` on) that recomputes an earlier result: a new
    expression whose result is a number the text stated before `at` (the same value again, or an
    inverse operation giving back an operand)."""
    for m in _EQUATION.finditer(window):
        if stated.number_before(canonical_answer(m["value"]), at) and not stated.expression_before(re.sub(r"\s+", "", m["lhs"]), at):
            return m
    return None


# --------------------------------------------------------------------------- degenerate text

_CHAR_RUN = re.compile(r"([^\d\s=_.\-*#])\1{19,}")  # "!!!!..."; not digit strings or ---- rules
_ARITHMETIC = re.compile(r"^[\d.,+\-*/×÷=()]+$")


def is_degenerate(text: str, min_repeats: int = 8) -> bool:
    """Collapsed output: a character repeated 20+ times, a word n-gram (n <= 4) repeated `min_repeats`+
    times in a row, or long text that compresses below 10 % of its size."""
    if _CHAR_RUN.search(text):
        return True
    words = text.split()
    for n in range(1, 5):
        for offset in range(n):
            run = 1
            for i in range(offset + n, len(words) - n + 1, n):
                gram = words[i : i + n]
                same = gram == words[i - n : i] and not all(_ARITHMETIC.match(w) for w in gram)  # "3 + 3 + 3 + ..." is arithmetic
                run = run + 1 if same else 1
                if run >= min_repeats:
                    return True
    data = text.encode("utf-8", "replace")
    return len(data) >= 400 and len(zlib.compress(data, 9)) < 0.1 * len(data)
