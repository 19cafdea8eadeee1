"""Reading a run's traces without loading them all: streaming iterators, filters, a pandas view.

A run directory holds `traces.jsonl` (every training completion) and `eval_traces.jsonl` (every
held-out completion, one record per problem per evaluation). Both are append-only JSONL in step
order, so iterating is O(one record) in memory and a step filter can stop reading early.
Records that do not match the schema (`schema.trace_problem`: a text reward, a null completion,
a non-integer step, a line that is not UTF-8 or not JSON) are skipped, and counted in one warning.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError
from ..jsonl import read_records
from .schema import trace_problem

SPLIT_FILES = {"train": "traces.jsonl", "eval": "eval_traces.jsonl"}


def trace_path(run: str | Path, split: str = "train") -> Path:
    """The trace file of a run directory (or the file itself when `run` is a .jsonl path)."""
    run = Path(run)
    if run.is_file():
        return run
    if split not in SPLIT_FILES:
        raise UserError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    path = run / SPLIT_FILES[split]
    if not path.exists():
        raise UserError(f"{run}: no {SPLIT_FILES[split]} here (is this a run directory written by `rl-reasoning train`?)")
    return path


def load(
    run: str | Path,
    split: str = "train",
    steps: tuple[int | None, int | None] | None = None,
    prompt_id=None,
    correct: bool | None = None,
) -> Iterator[dict]:
    """Stream trace records, optionally only steps in [lo, hi], one prompt id, or (in)correct ones.

    Example: `for r in load("runs/quickstart-...", steps=(10, 12)): print(r["completion"])`.
    """
    lo, hi = steps if steps is not None else (None, None)
    for record in read_records(trace_path(run, split), check=trace_problem):
        step = record.get("step", 0)
        if lo is not None and step < lo:
            continue
        if hi is not None and step > hi:
            break  # files are in step order
        if prompt_id is not None and str(prompt_key(record)) != str(prompt_id):
            continue
        if correct is not None and bool(record.get("correct")) != correct:
            continue
        yield record


def iter_steps(run: str | Path, split: str = "train", **filters) -> Iterator[tuple[int, list[dict]]]:
    """(step, that step's records), one step in memory at a time."""
    current, batch = None, []
    for record in load(run, split, **filters):
        if record.get("step") != current and batch:
            yield current, batch
            batch = []
        current = record.get("step")
        batch.append(record)
    if batch:
        yield current, batch


def load_frame(run: str | Path, split: str = "train", columns: list[str] | None = None, **filters):
    """A pandas DataFrame of the traces; pass `columns` to keep memory small on 100k+ completion runs."""
    import pandas as pd

    if columns is None:
        return pd.DataFrame.from_records(load(run, split, **filters))
    return pd.DataFrame.from_records(({k: r.get(k) for k in columns} for r in load(run, split, **filters)), columns=columns)


def prompt_key(record: dict):
    """Training records carry the task's prompt_id; held-out records the problem index."""
    return record.get("prompt_id", record.get("problem"))

