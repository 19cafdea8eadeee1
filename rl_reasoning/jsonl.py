"""Append-only, crash-safe JSONL files (metrics, traces, evaluations).

Each batch of records is written with one `write` of whole lines, then flushed and fsync'ed,
so a killed run leaves every earlier line intact; at worst the last line is cut short, and
`read_records` skips such a line. On resume, `truncate_after_step` drops the records of steps
after the checkpoint (they would be produced again), keeping a copy of them in `<file>.dropped`.

Reading policy (run files are untrusted: hand-edited, copied, or written by another version):
a line that is not valid UTF-8, not JSON, not a JSON object, or that the caller's `check`
rejects is skipped and counted, and one warning per file says how many and why the first one
was; a torn last line (a killed run) is skipped silently. Nothing here raises on content.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import UserError
from .untrusted import terminal_safe

RecordCheck = Callable[[dict], "str | None"]  # the reason a record is malformed, or None
_WARNED: set[str] = set()


class JsonlWriter:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # backslashreplace: a lone surrogate in model text becomes a JSON escape, not a crash mid-run
        self._file = self.path.open("a", encoding="utf-8", errors="backslashreplace")

    def write(self, records: Iterable[dict]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not text:
            return
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_records(path: Path, check: RecordCheck | None = None, warn: bool = True) -> Iterator[dict]:
    """Yield every complete, well-formed JSON object line; skip and count the others (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_file():  # a directory, or a FIFO that would block forever
        raise UserError(f"{path}: not a regular file")
    skipped, first, complete = 0, "", False
    try:
        with _open_for_reading(path) as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    break  # the run was killed mid-line
                reason = None
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    reason = "invalid UTF-8"
                except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested beyond the parser's stack
                    reason = "not JSON"
                else:
                    if not isinstance(record, dict):
                        reason = f"a JSON {type(record).__name__}, not an object"
                    elif check is not None:
                        reason = check(record)
                if reason is None:
                    yield record
                elif raw.strip():
                    skipped += 1
                    first = first or f"line {lineno}: {reason}"
            complete = True
    finally:
        if skipped and warn and str(path) not in _WARNED:  # a file read several times (or partly) warns once
            _WARNED.add(str(path))
            count = f"{skipped}" if complete else f"at least {skipped}"
            print(terminal_safe(f"warning: {path}: skipped {count} malformed line(s) (first at {first})"), file=sys.stderr)


def _open_for_reading(path: Path):
    try:
        return path.open("rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def truncate_after_step(path: Path, step: int) -> int:
    """Keep records with record['step'] <= step; move the others to `<path>.dropped`. Returns how many moved."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], []
    with path.open("rb") as f:
        for line in f:
            try:
                record = json.loads(line.decode("utf-8"))
                step_of = record.get("step", 0) if isinstance(record, dict) else None
                keep = line.endswith(b"\n") and isinstance(step_of, int) and step_of <= step
            except (ValueError, RecursionError):  # not JSON, or not UTF-8
                keep = False
            (kept if keep else dropped).append(line if line.endswith(b"\n") else line + b"\n")
    if dropped:
        with path.with_name(path.name + ".dropped").open("ab") as f:
            f.writelines(dropped)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(kept))
        os.replace(tmp, path)
    return len(dropped)
