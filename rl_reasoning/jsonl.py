"""Append-only, crash-safe JSONL files (metrics, traces, evaluations).

Each batch of records is written with one `write` of whole lines, then flushed and fsync'ed,
so a killed run leaves every earlier line intact; at worst the last line is cut short, and
`read_records` skips such a line. On resume, `truncate_after_step` drops the records of steps
after the checkpoint (they would be produced again), keeping a copy of them in `<file>.dropped`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


class JsonlWriter:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

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


def read_records(path: Path) -> Iterator[dict]:
    """Yield every complete JSON line; a torn or corrupt line is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # the run was killed mid-line
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def truncate_after_step(path: Path, step: int) -> int:
    """Keep records with record['step'] <= step; move the others to `<path>.dropped`. Returns how many moved."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
                (kept if line.endswith("\n") and record.get("step", 0) <= step else dropped).append(line)
            except json.JSONDecodeError:
                dropped.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        with path.with_name(path.name + ".dropped").open("a", encoding="utf-8") as f:
            f.writelines(dropped)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return len(dropped)
