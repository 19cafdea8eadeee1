"""Showing untrusted text: model output and the contents of user files, in a terminal or a page.

Everything a model writes, and every file a user points the tools at, may hold bytes meant for
someone else's parser: terminal escape sequences (`ESC ]0;title BEL` retitles the window,
`ESC [2J` clears it), right-to-left overrides that reorder what is displayed, or simply a
megabyte on one line. Two helpers keep that text inert:

- `terminal_safe(text)`: every control character except newline and tab is shown visibly
  (ESC as `␛`, other C0/C1 controls as `\\xNN`, bidi and invisible direction marks and lone
  surrogates as `\\uNNNN`).
  Used on every line the `traces` commands, the trainer and the CLI's error path print.
- `shorten(text, max_chars, max_lines)`: head and tail kept, the middle replaced by a note
  saying how much was left out. The HTML report uses it so a page stays bounded in size.

HTML escaping itself is `html.escape`; the report also sets a Content-Security-Policy.
"""

from __future__ import annotations

import re

# C0 controls except \t and \n, DEL, C1 controls, the Unicode bidi/direction controls, and lone
# surrogates (a JSON "\\ud800" escape), which no terminal encoding can print.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _visible(match: re.Match) -> str:
    ch = match.group(0)
    if ch == "\x1b":
        return "␛"
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def terminal_safe(text) -> str:
    """`text` (anything; str() is applied) with control characters made visible; newlines and tabs kept.

    Example: terminal_safe("a\\x1b[2Jb\\u202e") -> "a␛[2Jb\\\\u202e"
    """
    return _CONTROL.sub(_visible, str(text))


def shorten(text: str, max_chars: int, max_lines: int) -> tuple[str, str]:
    """(shortened text, note) where the note is "" when nothing was cut, else says what was.

    Keeps roughly the first two thirds and the last third of the budget (the final answer is at
    the end of a completion), cutting at whichever of the two limits bites first.
    """
    lines = text.split("\n")
    if len(text) <= max_chars and len(lines) <= max_lines:
        return text, ""
    if len(lines) > max_lines:  # whole lines from both ends, then the character budget on top
        head = "\n".join(lines[: max(1, max_lines * 2 // 3)])
        tail = "\n".join(lines[len(lines) - max(1, max_lines // 3) :])
    else:
        head, tail = text, text
    head = head[: max_chars * 2 // 3]
    tail_budget = max_chars - len(head)
    tail = tail[len(tail) - tail_budget :] if tail_budget > 0 else ""
    omitted_chars = len(text) - len(head) - len(tail)
    omitted_lines = text.count("\n") - head.count("\n") - tail.count("\n")
    note = f"… {omitted_chars:,} characters ({omitted_lines:,} line breaks) left out …"
    return f"{head}\n{note}\n{tail}", note


def is_text(value) -> bool:
    """A str that can be encoded: a JSON "\\ud800" escape gives a lone surrogate, which cannot
    be written to a file or a terminal. Run-file schemas and data rows refuse such values."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
