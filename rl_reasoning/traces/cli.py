"""`rl-reasoning traces summary|show|grep|diff RUN ...`: look at a run's completions from a terminal.

Every command streams the trace file (one step or one bucket in memory), so it works on runs
of 100k+ completions. Analyses are recomputed from the text, so old runs and other marker lists
(`--marker`) work too. Highlighting uses ANSI colours on a terminal and ⟦brackets⟧ otherwise.
Multi-turn ("retry") records are shown turn by turn, with the environment's feedback between
the turns and the outcome (`episodes.py`); `--outcome` keeps the episodes of one outcome.

Model text is untrusted: every text field of a record is passed through `terminal_safe` before
anything is printed (escape sequences, other control characters and bidi overrides are shown
as visible escapes; newlines and tabs are kept), and only then are our own colours added.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import shutil
import sys
import textwrap
from collections import Counter
from pathlib import Path

from ..errors import UserError
from ..jsonl import read_records
from ..untrusted import terminal_safe
from .alarms import alarms_from_metrics
from .analysis import Analyzer, TraceAnalysis, step_statistics
from .detectors import mark_revision
from .episodes import OUTCOME_LABELS, OUTCOMES, episode, is_multi_turn, outcome_of
from .schema import metrics_problem, tool_calls_of
from .store import iter_steps, load, prompt_key

# --------------------------------------------------------------------------- helpers


def analyzer_from_args(args) -> Analyzer:
    markers = (args.markers or []) + (args.extra_marker or [])
    if any(not m.strip() for m in markers):
        raise UserError("--marker / --extra-marker: a reflection phrase must not be empty")
    for name in ("width", "bucket", "context", "limit"):
        if getattr(args, name, 0) is not None and getattr(args, name, 0) < 0:
            raise UserError(f"--{name}: must be >= 0")
    return Analyzer(args.markers or None, list(args.extra_marker or []))


def analyze_record(analyzer: Analyzer, record: dict) -> TraceAnalysis:
    turns, verdicts = record.get("turn_texts"), record.get("verdicts")
    return analyzer(record.get("completion") or "", _gold(record), record.get("correct"), record.get("length"),
                    turns if isinstance(turns, list) else None,
                    verdicts if isinstance(verdicts, list) and all(isinstance(v, bool) for v in verdicts) else None)


def _gold(record: dict) -> str | None:
    answer = record.get("answer")
    return None if answer is None else str(answer)


def printable(records):
    """The records with every text field made safe to print (see the module docstring)."""
    for record in records:
        yield {k: terminal_safe(v) if isinstance(v, str) else v for k, v in record.items()}


def _fmt(v, rate: bool = True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.0%}" if rate else f"{v:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class Highlighter:
    def __init__(self, color: bool):
        self.color = color

    def mark(self, text: str, kind: str) -> str:
        if self.color:
            code = {"wrong": "1;31", "right": "1;32", "point": "1;33;4", "match": "1;35"}[kind]
            return f"\x1b[{code}m{text}\x1b[0m"
        return {"wrong": "⟦✗ ", "right": "⟦✓ ", "point": "⟦", "match": "⟦"}[kind] + text + "⟧"


def highlight_revision(text: str, analysis: TraceAnalysis, hl: Highlighter) -> str:
    """The completion with the abandoned answer, the revision point and the final answer marked."""
    return mark_revision(text, analysis.revision, lambda span, kind: hl.mark(span, kind))


def _parse_outcome(value: str | None) -> str | None:
    """An `--outcome` value checked (not-fixed spelt with a hyphen is accepted too); None when not given."""
    if value is None:
        return None
    outcome = value.strip().replace("-", "_")
    if outcome not in OUTCOMES:
        raise UserError(f"--outcome: expected one of {', '.join(OUTCOMES)}, got {value!r}")
    return outcome


def _parse_steps(value: str | None) -> tuple[int | None, int | None] | None:
    if not value:
        return None
    m = re.fullmatch(r"(\d*)(?::|-|\.\.)(\d*)|(\d+)", value.strip())
    if not m:
        raise UserError(f"--steps: expected A:B, A: or :B (e.g. 10:20), got {value!r}")
    if m.group(3):
        return int(m.group(3)), int(m.group(3))
    lo, hi = m.group(1), m.group(2)
    return (int(lo) if lo else None, int(hi) if hi else None)


# --------------------------------------------------------------------------- summary


def summary_rows(run, split: str, bucket: int, analyzer: Analyzer) -> list[dict]:
    """One dict per bucket of `bucket` steps: reward, accuracy, length and the traces/* rates."""
    rows, pending, lo = [], [], None

    def flush():
        if not pending:
            return
        records, analyses = zip(*pending)
        stats = step_statistics(analyses)
        rewards = [r["reward"] for r in records if r.get("reward") is not None]
        fmt = [bool(r["formatted"]) for r in records if r.get("formatted") is not None]
        rows.append({
            "first_step": lo,
            "steps": f"{lo}" if bucket == 1 else f"{lo}–{records[-1].get('step', lo)}",
            "completions": len(records),
            "reward": sum(rewards) / len(rewards) if rewards else None,
            "accuracy": sum(bool(r.get("correct")) for r in records) / len(records),
            **({"format": sum(fmt) / len(fmt)} if fmt else {}),
            **stats,
        })
        pending.clear()

    for step, records in iter_steps(run, split):
        if lo is None or step >= lo + bucket:
            flush()
            lo = step
        pending.extend((r, analyze_record(analyzer, r)) for r in records)
    flush()
    return rows


def _auto_bucket(run, split: str) -> int:
    path = Path(run) / "metrics.jsonl"
    steps = sum(1 for _ in read_records(path, check=metrics_problem, warn=False)) if split == "train" and path.exists() else 0
    return max(1, math.ceil(steps / 20)) if steps else 1


def cmd_summary(args) -> int:
    bucket = args.bucket or _auto_bucket(args.run, args.split)
    rows = summary_rows(args.run, args.split, bucket, analyzer_from_args(args))
    if not rows:
        raise UserError(f"{args.run}: no {args.split} traces yet")
    header = ["steps", "n", "reward", "accuracy", "length", "reflect", "refl/1k tok", "revise", "w→r", "r→w", "w→w", "verify", "aha",
              "acc/reflect", "acc/no reflect", "degenerate"]
    body = [
        [
            r["steps"], str(r["completions"]), _fmt(r["reward"], rate=False) if r["reward"] is not None else "–", _fmt(r["accuracy"]),
            _fmt(r["traces/mean_length"], rate=False), _fmt(r["traces/reflection_rate"]), _fmt(r["traces/reflections_per_1k_tokens"], rate=False),
            _fmt(r["traces/revision_rate"]), _fmt(r["traces/revision/wrong_to_right"]), _fmt(r["traces/revision/right_to_wrong"]),
            _fmt(r["traces/revision/wrong_to_wrong"]), _fmt(r["traces/verification_rate"]), str(int(r["traces/aha_count"])),
            _fmt(r["traces/accuracy_with_reflection"]), _fmt(r["traces/accuracy_without_reflection"]), _fmt(r["traces/degenerate_frac"]),
        ]
        for r in rows
    ]
    print(_table(header, body))
    metrics = Path(args.run) / "metrics.jsonl"
    if args.split == "train" and metrics.exists():
        alarms = alarms_from_metrics(read_records(metrics, check=metrics_problem))
        print("\nalarms: " + ("none" if not alarms else ""))
        for a in alarms:
            print(f"  step {a.step}: {a.name}: {a.message}")
    return 0


# --------------------------------------------------------------------------- show


def _panel(record: dict, analysis: TraceAnalysis, index: int, hl: Highlighter, width: int) -> list[str]:
    mark = "✓" if record.get("correct") else "✗"
    adv = record.get("advantage")
    head = f"#{record.get('group_index', index)} {mark} reward {_fmt(record.get('reward'), rate=False) if record.get('reward') is not None else '–'}"
    head += f" adv {adv:+.2f}" if adv is not None else ""
    head += f" len {record.get('length', '?')}"
    if analysis.reflections:
        head += " refl:" + ",".join(s.label for s in analysis.reflections)
    if analysis.revision:
        head += f" rev:{analysis.revision.kind}"
    if isinstance(record.get("turns"), int) and record["turns"] > 1:
        head += f" turns {record['turns']}"
    if is_multi_turn(record):
        paragraphs = episode_lines(record, hl)
    else:
        body = highlight_revision((record.get("completion") or ""), analysis, hl) if analysis.revision else (record.get("completion") or "")
        paragraphs = body.splitlines() or [""]
    lines = textwrap.wrap(head, width) + ["-" * width]
    for paragraph in paragraphs:
        lines += textwrap.wrap(paragraph, width, replace_whitespace=False, drop_whitespace=True) if not hl.color else _wrap_ansi(paragraph, width)
    for line in tool_call_lines(record):
        lines += textwrap.wrap(line, width) or [""]
    return lines


def _verdict_mark(verdict: bool | None, hl: Highlighter) -> str:
    if verdict is None:
        return "– (not judged)"
    symbol = "✓" if verdict else "✗"
    return f"\x1b[{'1;32' if verdict else '1;31'}m{symbol}\x1b[0m" if hl.color else symbol


def episode_lines(record: dict, hl: Highlighter) -> list[str]:
    """A multi-turn record turn by turn, terminal-safe: "turn 1 ✗", its text, "feedback: ...",
    "turn 2 ✓", its text, ..., then the outcome ("outcome: wrong → fixed")."""
    ep = episode(record)
    lines = [] if ep.separated else ["(turns not recorded separately: the whole completion)"]
    for k, turn in enumerate(ep.turns, 1):
        lines.append(f"turn {k} {_verdict_mark(turn.verdict, hl)}" if ep.separated else "completion")
        lines += terminal_safe(turn.text).splitlines() or [""]
        if turn.feedback is not None:
            lines.append("feedback: " + terminal_safe(" ".join(turn.feedback.split())))
        elif k < len(ep.turns):
            lines.append("feedback: (not recorded)")
    verdicts = " → ".join("✓" if v else "✗" for v in ep.verdicts) or "none"
    lines.append(f"outcome: {OUTCOME_LABELS[ep.outcome]} (verdicts {verdicts})")
    return lines


def tool_call_lines(record: dict) -> list[str]:
    """One terminal-safe line per tool call of a record, in order: tool(input) -> output or error, seconds."""
    out = []
    for k, call in enumerate(tool_calls_of(record), 1):
        result = f"error: {call['error']}" if call["error"] else call["output"]
        secs = f" ({call['seconds']:.2f} s)" if call["seconds"] is not None else ""
        out.append(terminal_safe(f"[tool {k}] {call['name']}({_one_line(call['arguments'], 120)}) -> {_one_line(result, 120)}{secs}"))
    return out


def _wrap_ansi(text: str, width: int) -> list[str]:
    """textwrap counts escape codes as characters; wrap the visible text instead (approximately)."""
    return textwrap.wrap(text, width + text.count("\x1b[") * 4) or [""]


def _side_by_side(panels: list[list[str]], width: int, columns: int) -> str:
    out = []
    for i in range(0, len(panels), columns):
        row = panels[i : i + columns]
        height = max(len(p) for p in row)
        for k in range(height):
            cells = [(p[k] if k < len(p) else "") for p in row]
            out.append("  │  ".join(c + " " * max(0, width - _visible_len(c)) for c in cells).rstrip())
        out.append("")
    return "\n".join(out)


def _visible_len(s: str) -> int:
    return len(re.sub(r"\x1b\[[0-9;]*m", "", s))


def cmd_show(args) -> int:
    hl = Highlighter(color=args.color == "always" or (args.color == "auto" and sys.stdout.isatty()))
    analyzer = analyzer_from_args(args)
    outcome = _parse_outcome(args.outcome)
    steps = (args.step, args.step) if args.step is not None else None
    if args.aha:
        return _show_aha(args, analyzer, hl, steps, outcome)
    if outcome is not None and args.prompt is None:
        return _show_episodes(args, hl, steps, outcome)
    if args.step is None:
        raise UserError("show: pass --step S (and --prompt P), --aha, or --outcome O")
    records = list(printable(load(args.run, args.split, steps=steps)))
    if not records:
        raise UserError(f"{args.run}: no {args.split} traces at step {args.step}")
    if args.prompt is None:
        ids = Counter(str(prompt_key(r)) for r in records)
        print(f"step {args.step}: {len(ids)} prompts; pick one with --prompt")
        for pid, count in ids.items():
            question = next(r.get("question") or r.get("prompt", "") for r in records if str(prompt_key(r)) == pid)
            print(f"  {pid}  ({count} completions)  {_one_line(question, 80)}")
        return 0
    group = [r for r in records if str(prompt_key(r)) == str(args.prompt)]
    if not group:
        raise UserError(f"prompt {args.prompt!r} has no completions at step {args.step}; prompts there: {sorted({str(prompt_key(r)) for r in records})[:20]}")
    first = group[0]
    print(f"step {args.step}  prompt {args.prompt}  gold answer: {first.get('answer')!r}")
    print(_one_line(first.get("question") or _question_of(first.get("prompt", "")), 400))
    print()
    if outcome is not None:
        group = [r for r in group if outcome_of(r) == outcome]
        if not group:
            print(f"no completion of this group has the outcome {outcome} ({OUTCOME_LABELS[outcome]})")
            return 0
    term = shutil.get_terminal_size((160, 40)).columns
    width = args.width or max(40, min(72, (term - 5 * 2) // 3))
    columns = max(1, min(len(group), (term + 5) // (width + 5)))
    panels = [_panel(r, analyze_record(analyzer, r), i, hl, width) for i, r in enumerate(group)]
    print(_side_by_side(panels, width, columns))
    return 0


def _show_aha(args, analyzer: Analyzer, hl: Highlighter, steps, outcome: str | None) -> int:
    """Completions that revise a wrong answer into the right one (of one outcome, when given)."""
    shown = 0
    for record in printable(load(args.run, args.split, steps=steps, prompt_id=args.prompt)):
        if outcome is not None and outcome_of(record) != outcome:
            continue
        a = analyze_record(analyzer, record)
        if a.aha:
            shown += 1
            print(f"step {record.get('step')}  prompt {prompt_key(record)}  gold {record.get('answer')!r}  "
                  f"'{a.revision.before.value}' → '{a.revision.after.value}' at “{a.revision.point.label}”")
            print(highlight_revision((record.get("completion") or ""), a, hl))
            print()
            if shown >= args.limit:
                break
    print(f"{shown} wrong→right revision(s) shown" + (f" (limit {args.limit})" if shown >= args.limit else ""))
    return 0


def _show_episodes(args, hl: Highlighter, steps, outcome: str) -> int:
    """Multi-turn episodes of one outcome, one after another, turn by turn (at most --limit)."""
    shown = 0
    for record in printable(load(args.run, args.split, steps=steps)):
        if outcome_of(record) != outcome:
            continue
        shown += 1
        print(f"step {record.get('step')}  prompt {prompt_key(record)}  #{record.get('group_index', 0)}  gold {record.get('answer')!r}")
        print("\n".join(episode_lines(record, hl)) if is_multi_turn(record) else (record.get("completion") or ""))
        print()
        if shown >= args.limit:
            break
    print(f"{shown} episode(s) {OUTCOME_LABELS[outcome]} shown" + (f" (limit {args.limit})" if shown >= args.limit else ""))
    return 0


def _one_line(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _question_of(prompt: str) -> str:
    """The user turn of a rendered chat prompt (best effort), else the whole prompt."""
    m = re.search(r"<\|im_start\|>user\s*(.*?)<\|im_end\|>", prompt, re.DOTALL)
    return m.group(1) if m else prompt


# --------------------------------------------------------------------------- grep


def cmd_grep(args) -> int:
    try:
        pattern = re.compile(args.pattern, re.IGNORECASE if args.ignore_case else 0)
    except re.error as e:
        raise UserError(f"grep: bad pattern {args.pattern!r}: {e}") from None
    hl = Highlighter(color=args.color == "always" or (args.color == "auto" and sys.stdout.isatty()))
    correct = True if args.correct else False if args.incorrect else None
    found = 0
    outcome = _parse_outcome(args.outcome)
    for record in printable(load(args.run, args.split, steps=_parse_steps(args.steps), correct=correct)):
        if outcome is not None and outcome_of(record) != outcome:
            continue
        reward = record.get("reward")
        if args.min_reward is not None and (reward is None or reward < args.min_reward):
            continue
        if args.max_reward is not None and (reward is None or reward > args.max_reward):
            continue
        text = (record.get("completion") or "")
        m = pattern.search(text)
        if not m:
            continue
        found += 1
        if found <= args.limit:
            lo, hi = max(0, m.start() - args.context), min(len(text), m.end() + args.context)
            snippet = text[lo : m.start()] + hl.mark(m.group(0), "match") + text[m.end() : hi]
            mark = "✓" if record.get("correct") else "✗"
            print(f"step {record.get('step')} prompt {prompt_key(record)} #{record.get('group_index', 0)} {mark} "
                  f"reward {reward if reward is None else round(reward, 3)}: {'…' if lo else ''}{' '.join(snippet.split())}{'…' if hi < len(text) else ''}")
    print(f"{found} matching completion(s)" + (f", first {args.limit} shown" if found > args.limit else ""))
    return 0


# --------------------------------------------------------------------------- diff


def cmd_diff(args) -> int:
    analyzer = analyzer_from_args(args)
    a_step, b_step = args.steps
    groups = {}
    for step in (a_step, b_step):
        groups[step] = list(printable(load(args.run, args.split, steps=(step, step), prompt_id=args.prompt)))
        if not groups[step]:
            seen = sorted({r["step"] for r in load(args.run, args.split, prompt_id=args.prompt)})
            raise UserError(f"prompt {args.prompt!r} has no {args.split} completions at step {step}; it appears at steps {seen[:30] or 'none'}"
                            + ("" if seen or args.split == "eval" else " (training prompts rarely recur; try --split eval)"))
    first = groups[a_step][0]
    print(f"prompt {args.prompt}  gold answer: {first.get('answer')!r}")
    print(_one_line(first.get("question") or _question_of(first.get("prompt", "")), 300))
    print()
    rows = []
    for step in (a_step, b_step):
        recs = groups[step]
        analyses = [analyze_record(analyzer, r) for r in recs]
        stats = step_statistics(analyses)
        answers = Counter(r.get("extracted_answer") if "extracted_answer" in r else (a.claims[-1].value if a.claims else None) for r, a in zip(recs, analyses))
        rows.append([
            str(step), str(len(recs)), _fmt(sum(bool(r.get("correct")) for r in recs) / len(recs)),
            _fmt(stats["traces/mean_length"], rate=False), _fmt(stats["traces/reflection_rate"]), _fmt(stats["traces/revision_rate"]),
            ", ".join(f"{ans!r}×{n}" for ans, n in answers.most_common(5)),
        ])
    print(_table(["step", "n", "accuracy", "length", "reflect", "revise", "answers (most common)"], rows))
    print()
    before, after = groups[a_step][0].get("completion", ""), groups[b_step][0].get("completion", "")
    print(f"first completion, step {a_step} → step {b_step}:")
    diff = difflib.unified_diff(_words(before), _words(after), f"step {a_step}", f"step {b_step}", lineterm="", n=3)
    print("\n".join(diff) or "(identical)")
    return 0


def _words(text: str) -> list[str]:
    return [line for line in re.split(r"(?<=[.\n])\s*", text) if line]


# --------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser, split: bool = True) -> None:
    p.add_argument("run", help="run directory (or a traces .jsonl file)")
    if split:
        p.add_argument("--split", choices=("train", "eval"), default="train", help="training traces or held-out evaluation traces")
    p.add_argument("--marker", dest="markers", action="append", help="reflection phrase replacing the default markers (repeatable)")
    p.add_argument("--extra-marker", action="append", help="reflection phrase added to the default markers (repeatable)")


def add_parser(sub) -> None:
    traces = sub.add_parser("traces", help="inspect a run's reasoning traces (summary, show, grep, diff)")
    tsub = traces.add_subparsers(dest="traces_command", required=True)

    p = tsub.add_parser("summary", help="per-step-bucket reward, accuracy, length, reflection and revision rates")
    _common(p)
    p.add_argument("--bucket", type=int, default=0, help="steps per row (default: about 20 rows)")
    p.set_defaults(func=cmd_summary)

    p = tsub.add_parser("show", help="the G completions of one prompt side by side; --aha for wrong→right revisions; "
                       "--outcome for multi-turn episodes turn by turn")
    _common(p)
    p.add_argument("--step", type=int)
    p.add_argument("--prompt", help="prompt id (training) or problem index (eval)")
    p.add_argument("--aha", action="store_true", help="show completions that revise a wrong answer into a right one")
    p.add_argument("--outcome", help="only multi-turn episodes with this outcome: right_first, fixed (wrong → right), not_fixed, "
                   "unjudged; without --prompt they are listed turn by turn")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--width", type=int, default=0, help="column width (default: fit the terminal)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.set_defaults(func=cmd_show)

    p = tsub.add_parser("grep", help="search completions with filters")
    _common(p)
    p.add_argument("pattern", help="a Python regular expression")
    p.add_argument("--steps", help="step range A:B (inclusive), A: or :B")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--correct", action="store_true")
    g.add_argument("--incorrect", action="store_true")
    p.add_argument("--min-reward", type=float)
    p.add_argument("--max-reward", type=float)
    p.add_argument("--outcome", help="only multi-turn episodes with this outcome: right_first, fixed, not_fixed, unjudged")
    p.add_argument("-i", "--ignore-case", action="store_true")
    p.add_argument("--context", type=int, default=60, help="characters shown around the match")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.set_defaults(func=cmd_grep)

    p = tsub.add_parser("diff", help="how the answers to one prompt changed between two steps")
    _common(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--steps", type=int, nargs=2, required=True, metavar=("A", "B"))
    p.set_defaults(func=cmd_diff)
