"""What a well-formed run record looks like, checked before any tool reads its fields.

The trace tools and the report read run folders that may have been hand-edited, truncated,
copied between versions, or crafted. Each reader passes one of these checks to
`jsonl.read_records`, which skips (and counts, and warns once about) a record the check
rejects, so a text `reward` or a `null` completion is one skipped line, never a traceback.

- `trace_problem`: `traces.jsonl` / `eval_traces.jsonl` records (schema: `run_files.trace_records`,
  `evaluation.evaluate`). Only the fields the tools read are checked; extra fields pass.
- `metrics_problem`: `metrics.jsonl` / `eval.jsonl` records: a whole `step` and numeric values
  (the `alarms` list of strings excepted).
- `clean_summary`: `summary.json`, with every field the report reads type-checked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..untrusted import is_text

MAX_EXACT = 2**53  # JSON allows integers of any length; past this they do not survive float()


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and abs(v) < MAX_EXACT


def is_number(v) -> bool:
    return is_int(v) or isinstance(v, float)


def _step_problem(record: dict) -> str | None:
    step = record.get("step")
    if not is_int(step) or step < 0:
        return f"'step' is {json.dumps(step)[:40]}, not a whole number >= 0"
    return None


def trace_problem(record: dict) -> str | None:
    """The reason a trace record cannot be shown, or None."""
    if problem := _step_problem(record):
        return problem
    if not is_text(record.get("completion")):
        return "'completion' is not text"
    for key in ("reward", "advantage"):
        value = record.get(key)
        if value is not None and (not is_number(value) or math.isnan(value)):
            return f"'{key}' is not a number"
    for key in ("length", "group_index"):
        if record.get(key) is not None and not is_int(record[key]):
            return f"'{key}' is not a whole number"
    if record.get("correct") not in (None, True, False, 0, 1):
        return "'correct' is not true/false"
    for key in ("prompt", "question"):
        if record.get(key) is not None and not is_text(record[key]):
            return f"'{key}' is not text"
    for key in ("prompt_id", "problem", "answer", "extracted_answer"):
        value = record.get(key)
        if isinstance(value, (dict, list)) or (isinstance(value, str) and not is_text(value)) or (isinstance(value, int) and not is_int(value)):
            return f"'{key}' is not a single value"
    if not isinstance(record.get("rewards", {}), dict):
        return "'rewards' is not an object"
    return None


def metrics_problem(record: dict) -> str | None:
    """The reason a metrics or evaluation record cannot be plotted, or None."""
    if problem := _step_problem(record):
        return problem
    for key, value in record.items():
        if key == "alarms":
            if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                return "'alarms' is not a list of text"
        elif value is not None and not is_number(value) and not isinstance(value, bool):
            return f"{key!r} is not a number"
    return None


SUMMARY_FIELDS = {"model_parameters": is_int, "trainable_parameters": is_int, "steps": is_int}


def clean_summary(path: Path) -> dict:
    """`summary.json` with only the fields the report reads, each of the right type ({} when unreadable)."""
    try:
        summary = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(summary, dict):
        return {}
    return {k: summary[k] for k, ok in SUMMARY_FIELDS.items() if k in summary and ok(summary[k])}


def tool_calls_of(record: dict) -> list[dict]:
    """The record's tool calls (multi-turn runs), each with text `name`, `arguments`, `output`,
    `error` (or None) and numeric `seconds`; malformed entries are left out, never raised on."""
    calls = record.get("tool_calls")
    if not isinstance(calls, list):
        return []
    clean = []
    for c in calls:
        if not isinstance(c, dict):
            continue
        text = {k: c.get(k) if is_text(c.get(k)) else "" for k in ("name", "arguments", "output")}
        error = c.get("error") if is_text(c.get("error")) and c.get("error") else None
        seconds = float(c["seconds"]) if is_number(c.get("seconds")) and math.isfinite(float(c["seconds"])) else None
        clean.append({**text, "error": error, "seconds": seconds})
    return clean
