"""Pull the final answer out of a completion (and out of a gold answer), and strip its presentation.

Two layers:

- `extract_answer` / `extract_answer_with_source` / `normalize_answer` / `last_boxed`: the plain
  reading used by evaluation, traces and user recipes: the last `\\boxed{...}`, else the last
  `<answer>...</answer>`, else (only with `fallback="last_number"`) the last number; then markdown
  bold, `$...$`, a whole-answer `\\text{...}`, a trailing period and `1,000` separators go.
- `final_answer_with_source` / `gold_answer` / `clean_answer`: what the `math` reward reads. In
  order of precedence:

  1. The final *run* of boxes: the last `\\boxed{}` (or `\\fbox{}`, innermost when nested) together
     with the boxes right before it that are separated from it only by connectors (`,` `;` `and`
     `or` `\\text{ or }` `\\quad` `$`, an `x =` / `x_1 =`; at most 40 characters), joined as
     `a, b`: "\\boxed{3} or \\boxed{5}" reads `3, 5`, which only matches a gold with the same set of
     values, so boxing several candidates for a single-valued gold scores 0. In a run, a box's
     label stays (`x = \\boxed{5}, y = \\boxed{3}` reads `x=5, y=3`). Text after a box is never read:
     `\\boxed{28} pct` and `\\boxed{28}\\%` read `28`, as `\\boxed{5} cm` reads 5 (a `28\\%` gold
     accepts 28; a `%` inside the box makes the answer 0.28). A last box left unclosed means no
     answer (an `<answer>` tag may still give one, as before; a final-answer phrase may not).
  2. The last `<answer>...</answer>` (a box or a final-answer phrase inside it wins).
  3. A final-answer phrase, only when there is no box: the last "final answer is X", "Final
     Answer: X", "**Final Answer:** X", a "Final Answer" heading line, or a line "Answer: X"; X is
     the `$...$`/`$$...$$`/`\\(...\\)`/`\\[...\\]`/`**...**` right after it (several joined by
     `,`/and/or are one multi-valued answer), else the rest of its sentence. Nothing before the
     phrase is read, and "the answer is 12" in passing is not a phrase (that is `fallback`'s job).
  4. With `fallback="last_number"` only: the last number.

  A gold answer (`gold_answer`) is read the way math-verify reads a worked solution: when it
  holds a `\\boxed{}`, its final run of boxes (so open-r1-style `solution` columns work as they
  are, however long); else the text after the last `####` (GSM8K); else, for golds over 40
  characters, a final-answer phrase; else the text as given.

  `clean_answer` (both sides, same rules; answers over 1000 characters are left alone, to be
  refused as too long): besides `normalize_answer`'s presentation it removes currency (`$`, `\\$`,
  €, £, ¥, ₹, "dollars", "USD"...), degree signs (`^\\circ`, `^{\\circ}`, °, `\\degree`, a following
  C/F; degrees are never converted to radians), a `\\text{unit}` right after a quantity, and the
  separators of one grouped number (`10,455`, `10{,}455`, `10\\,455`: one separator kind, groups of
  three; a plain space is not one, as "100 200" may be two values); a removed unit, currency or
  degree sign leaves a space, so "1 \\text{ hr } 5 \\text{ min}" is the list 1, 5, never 15; it
  writes percent markers (`%`, "percent", "pct", `\\text{percent}`) as `\\%` and ∞ as `\\infty`.
  "2 1/2" (an integer, a space, a fraction) is the mixed number `2\\frac{1}{2}` = 5/2, the way
  LaTeX's `2\\frac{1}{2}` is read (so "2 3/2" is 7/2); other numbers separated only by spaces
  ("2 3") are a list `2, 3`. Unit words outside `\\text{}` (cm, hours...) are left to
  math-verify's own unit stripping.

Where this departs from math-verify / open-r1 (whose accuracy reward takes the gold from the
`solution` column parsed with math-verify's defaults, and the completion with boxed-first LaTeX
extraction, no anchor-free matches): math-verify reads the rightmost match of its
highest-priority pattern and, without a box, also accepts "answer" followed within 50
characters by any LaTeX span (and, with its defaults, any LaTeX span or number at all); here a
box always wins, a run of boxes is one multi-valued answer, and only the explicit phrases above
are read.
latex2sympy alone reads "10\\,455" as 10 + 455, "2 1/2" as (2 + 1)/2, "2 3" as 5, and its unit
stripping turns "12 \\text{ cm} \\text{ and } 5 \\text{ cm}" into 12; here they are 10455, 5/2,
the list {2, 3} and the list {12, 5}. Gold and prediction are read by the same rules.
All scanning is linear in the text and limited to its last `MAX_SCAN_CHARS` characters.
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
    """The last of ANSWER_TAG.findall(text), found with str.find: the regex retries every
    "<answer>" against the rest of the text, quadratic on "<answer>" * 12,500 (0.2 s a completion)."""
    last, pos = None, 0
    while (start := text.find("<answer>", pos)) != -1:
        end = text.find("</answer>", start + 8)
        if end == -1:
            break  # no later "<answer>" can close either
        last, pos = text[start + 8 : end], end + 9
    return last


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


# ----------------------------------------------------------------------------- the math reward's reading

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_OR_BRACE = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")
# What may stand between two boxes of one answer: "x = \boxed{3} or x = \boxed{5}", "$\boxed{1}$, $\boxed{2}$"
_GAP_TOKEN = (
    r"\s|[$,;&~]|\\[()\[\],;:! ]|\\\\|\\q?quad\b|\b(?:and|or)\b|\\?%|\b(?:percent|pct)\b"
    r"|\\(?:text|textrm|mathrm|mbox)\s*\{\s*(?:and|or|,)?\s*\}"
    r"|[A-Za-z](?:_\{?[A-Za-z0-9]{1,3}\}?)?\s*="
)
_GAP = re.compile(rf"(?:{_GAP_TOKEN})*")
MAX_GAP_CHARS = 40
_LABEL = re.compile(r"(?<![A-Za-z\\])([A-Za-z](?:_\{?[A-Za-z0-9]{1,3}\}?)?)\s*=\s*\$?\s*$")


def final_boxes(text: str) -> list[str] | None:
    """Contents of the final run of boxes (see the module docstring), in order; None when there is
    no closed box or the last box opened is never closed. Linear in len(text)."""
    stack: list[tuple[bool, int, int]] = []  # (opens a box, start, content start)
    closed: list[tuple[int, int, int, int]] = []  # (start, content start, content end, end)
    for m in _BOX_OR_BRACE.finditer(text):
        token = m.group()
        if token == "}":
            if stack:
                is_box, start, content_start = stack.pop()
                if is_box:
                    closed.append((start, content_start, m.start(), m.end()))
        else:
            stack.append((token != "{", m.start(), m.end()))
    if not closed:
        return None
    closed.sort()
    tops: list[list] = []  # [start, end, content start, content end]: outermost boxes, innermost-last content
    for start, content_start, content_end, end in closed:
        if tops and start < tops[-1][1]:  # nested: like last_boxed, the innermost last box speaks
            tops[-1][2:] = [content_start, content_end]
        else:
            tops.append([start, end, content_start, content_end])
    if any(is_box and start > tops[-1][1] for is_box, start, _ in stack):
        return None  # the last box is unclosed: a truncated answer
    run = [tops[-1]]
    for prev in reversed(tops[:-1]):
        gap = text[prev[1] : run[0][0]]
        if len(gap) > MAX_GAP_CHARS or not _GAP.fullmatch(gap):
            break
        run.insert(0, prev)
    values = []
    for start, _, content_start, content_end in run:
        value = text[content_start:content_end].strip()
        label = _LABEL.search(text, max(0, start - 16), start) if len(run) > 1 else None
        if value and label and "=" not in value:  # "x = \boxed{5}, y = \boxed{3}" is x=5, y=3, not the set {3, 5}
            value = f"{label.group(1)}={value}"
        values.append(value)
    return [v for v in values if v] or [""]  # an empty box in a run adds nothing


# "final answer is X", "Final Answer: X", "**Final Answer:** X", a "## Final Answer" heading line, a line "Answer: X";
# not "before the final answer, ..." nor "the answer is" in passing.
_PHRASE = re.compile(
    r"(?:\bfinal\s+answer\b(?:[ \t]*\*\*)?(?:\s+is\b[ \t]*:?|[ \t]*:|[ \t]*(?=\n))|^[ \t>#*_]*answer\b(?:[ \t]*\*\*)?[ \t]*:)"
    r"[ \t]*(?:\*\*)?\s*",
    re.IGNORECASE | re.MULTILINE,
)
_MATH_SPANS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"), ("**", "**"))
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n| I hope")
MAX_PHRASE_CHARS = 300


MAX_PHRASE_SPANS = 6
_SPAN_LINK = re.compile(r"[ \t]*(?:,[ \t]*)?(?:(?:and|or)[ \t]+)?(?=[$\\*])")


def _math_span(text: str, at: int) -> tuple[str, int] | None:
    """(content, end) of the `$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]` or `**...**` starting at `at`."""
    for left, right in _MATH_SPANS:
        if text.startswith(left, at):
            close = text.find(right, at + len(left))
            while close > 0 and text[close - 1] == "\\" and right == "$":  # \$ inside $...$ is a dollar sign
                close = text.find(right, close + 1)
            if close > 0:
                return text[at + len(left) : close].strip(), close + len(right)
            return None
    return None


def answer_phrase(text: str) -> str | None:
    """X of the last "final answer is X" / "Final Answer: X" / line "Answer: X"; None without one."""
    last = None
    for last in _PHRASE.finditer(text):  # noqa: B007 - the last match is the one we want
        pass
    if last is None:
        return None
    rest = text[last.end() : last.end() + MAX_PHRASE_CHARS]
    spans, at = [], 0
    while len(spans) < MAX_PHRASE_SPANS:  # "$3$ or $5$": one answer with two values, as math-verify reads it
        span = _math_span(rest, at)
        if span is None:
            break
        spans.append(span[0])
        link = _SPAN_LINK.match(rest, span[1])
        if not link:
            break
        at = link.end()
    if spans:
        return ", ".join(spans) if all(spans) else None
    end = _SENTENCE_END.search(rest)
    answer = (rest[: end.start()] if end else rest).strip()
    return answer or None


def _joined(values: list[str]) -> str:
    return ", ".join(values)


def final_answer_with_source(text: str, fallback: str = "none") -> tuple[str | None, str | None]:
    """The math reward's reading: (answer, 'boxed' | 'answer_tag' | 'answer_phrase' | 'last_number' | None)."""
    if fallback not in ("none", "last_number"):
        raise ValueError(f"fallback must be 'none' or 'last_number', got {fallback!r}")
    text = text[-MAX_SCAN_CHARS:]
    has_box = _BOX_OPEN.search(text) is not None
    if has_box:
        boxes = final_boxes(text)
        if boxes is not None:
            return _joined(boxes), "boxed"
    tagged = last_answer_tag(text)
    if tagged is not None:
        inner = final_boxes(tagged)
        if inner is None:
            inner = [answer_phrase(tagged) or tagged]
        return _joined(inner).strip(), "answer_tag"
    if has_box:
        return None, None  # the last box is unclosed (a truncated answer): an earlier phrase does not stand in
    phrase = answer_phrase(text)
    if phrase is not None:
        return phrase, "answer_phrase"
    if fallback == "last_number":
        number = last_number(text)
        return number, ("last_number" if number is not None else None)
    return None, None


def gold_answer(gold) -> str:
    """The answer in a gold column: a worked solution's final boxes, a GSM8K `#### 42` tail, a
    final-answer phrase, else the text as given (see the module docstring)."""
    text = str(gold)
    tail = text[-MAX_SCAN_CHARS:]
    if "\\boxed" in tail or "\\fbox" in tail:
        boxes = final_boxes(tail)
        if boxes is not None:
            return _joined(boxes)
    if "####" in tail:
        return tail.rsplit("####", 1)[1].strip()
    if len(text) > 40:  # a short gold is an answer, not a solution: "final answer" inside it is left alone
        phrase = answer_phrase(tail)
        if phrase is not None:
            return phrase
    return text


_CURRENCY = re.compile(
    r"\\\$|\$|\\text\s*\{\s*\\?\$\s*\}|US\$|\bUSD\b|\bEUR\b|\bGBP\b|[€£¥₹]|\\euro\b|\\pounds\b|\\(?:text)?yen\b"
    r"|\s*(?:\\(?:text|mbox|mathrm)\s*\{\s*)?(?<![A-Za-z])(?:dollars?|euros?|yuan|rupees?)\b\s*\}?"
)
# A unit in \text{} right after a quantity: "12 \text{ cm}". math-verify strips only a trailing one, and its
# pattern runs from the first \text{ to the end: "12 \text{ cm} \text{ and } 5 \text{ cm}" would read 12.
_UNIT_TEXT = re.compile(r"(?<=[\d}])\s*\\(?:text|textrm|mbox|mathrm)\s*\{(?!\s*(?:and|or)\s*\})\s*[A-Za-z~][A-Za-z./~ ]{0,30}\}(?:\^\{?\d\}?)?")
_DEGREES = re.compile(r"\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree\b|\\textdegree\b)(?:\s*(?:\\text\s*\{\s*)?[CF](?![A-Za-z])\}?)?")
_PERCENT_WORD = re.compile(r"\s*(?:\\(?:text|mbox|mathrm)\s*\{\s*(?:per\s?cent|pct|\\?%)\s*\}|\b(?:per\s?cent|pct)\b\.?)", re.IGNORECASE)
_BARE_PERCENT = re.compile(r"(?<!\\)%")
# A plain space is not a separator here: "100 200" may as well be two values (see _JUXTAPOSED).
_GROUPED = re.compile(r"^(-?)(\d{1,3}(?:(,|\{,\}|\\,|\\ |\\;)\d{3})(?:(?:,|\{,\}|\\,|\\ |\\;)\d{3})*)(\.\d+)?(\s*\\%)?$")
_JUXTAPOSED = re.compile(r"^-?\d+(?:\.\d+)?(?:\s+-?\d+(?:\.\d+)?)+$")
MAX_CLEAN_CHARS = 1_000
_SPACES = re.compile(r"\s+")
_MIXED = re.compile(r"^(-?)\s*(\d{1,9})\s+(\d{1,9})\s*/\s*(\d{1,9})$")


def _ungroup(s: str) -> str:
    """10,455 / 10{,}455 / 10\\,455 -> 10455, when the whole answer is that one number (one separator kind)."""
    m = _GROUPED.match(s)
    if not m:
        return s
    sign, digits, sep, decimals, percent = m.groups()
    groups = digits.split(sep)
    if any(len(g) != 3 or not g.isdigit() for g in groups[1:]):
        return s  # mixed separators: leave it to the parser
    return f"{sign}{''.join(groups)}{decimals or ''}{percent or ''}"


def clean_answer(answer: str) -> str:
    """`normalize_answer`, then currency, degree signs, percent words, digit-group separators and
    "2 1/2" mixed numbers (see the module docstring). Used on gold and prediction alike."""
    if len(answer.strip()) > MAX_CLEAN_CHARS:
        return answer.strip()  # refused as too long by the verifier anyway: no regex runs on long text
    s = normalize_answer(_SPACES.sub(" ", answer))  # one space per run: the patterns below stay linear
    s = s.replace("∞", "\\infty").replace("−", "-")
    s = _PERCENT_WORD.sub("\\%", s)  # before units: "28 \\text{ percent}" is 28\\%, not 28
    s = _BARE_PERCENT.sub("\\%", s)
    # Removed units and currency leave a space, never nothing: "1 \\text{ hr } 5 \\text{ min}" must not
    # become "15", nor "5 dollars 50" become "550"; what is left apart reads as a list, not one number.
    s = _DEGREES.sub(" ", s)
    s = _UNIT_TEXT.sub(" ", s)
    s = _SPACES.sub(" ", _CURRENCY.sub(" ", s)).strip()
    s = normalize_answer(s)  # "\$1,250." -> "1,250." -> "1250"
    s = _ungroup(s)
    m = _MIXED.match(s)
    if m:
        sign, whole, numerator, denominator = m.groups()
        s = f"{sign}{whole}\\frac{{{numerator}}}{{{denominator}}}"
    elif _JUXTAPOSED.match(s):
        s = ", ".join(s.split())  # "2 3" is a list (latex2sympy would add: 5)
    return s
