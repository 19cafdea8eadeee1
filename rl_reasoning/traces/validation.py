"""The detectors measured against a reader: precision, recall and confusion tables on a labelled set.

The set (`tests/data/detector_labels.jsonl`, rules in docs/traces.md) holds real completions (and
turns of multi-turn episodes) labelled from their text alone for three yes/no labels. A detector
says yes when:
- reflection: `find_reflections` finds a marker;
- revision: the analysis finds an answer revision (any direction);
- verification: the analysis keeps a verification (a check that led to a changed answer is the
  revision's, as in the per-step metrics).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .analysis import Analyzer

LABELS = ("reflection", "revision", "verification")


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")


def load_labelled(path: str | Path) -> list[dict]:
    """The labelled items, each with text, gold and a true/false per label (a malformed line is an error:
    the set is ours, not user input)."""
    items = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        if not isinstance(item.get("text"), str) or not all(isinstance(item.get(k), bool) for k in LABELS):
            raise ValueError(f"{path}:{n}: needs a text and true/false {', '.join(LABELS)}")
        items.append(item)
    return items


def detect(item: dict, analyzer: Analyzer | None = None) -> dict[str, bool]:
    """What the detectors say about one item, per label."""
    a = (analyzer or Analyzer())(item["text"], item.get("gold") or None)
    return {"reflection": a.reflected, "revision": a.revision is not None, "verification": bool(a.verifications)}


def confusions(items: Iterable[dict], analyzer: Analyzer | None = None) -> tuple[dict[str, Confusion], list[dict]]:
    """Per label, the confusion against the reader's labels; and the disagreements (id, label, reader, detector)."""
    analyzer = analyzer or Analyzer()  # one marker compilation for the whole set
    counts = {label: {"tp": 0, "fp": 0, "fn": 0, "tn": 0} for label in LABELS}
    misses = []
    for item in items:
        said = detect(item, analyzer)
        for label in LABELS:
            truth, guess = item[label], said[label]
            counts[label][("tp" if truth else "fp") if guess else ("fn" if truth else "tn")] += 1
            if truth != guess:
                misses.append({"id": item.get("id"), "label": label, "reader": truth, "detector": guess})
    return {label: Confusion(**c) for label, c in counts.items()}, misses


def confusion_table(table: dict[str, Confusion]) -> str:
    """Markdown: per label, the four counts, precision and recall."""
    lines = ["| label | reader yes | detector yes | both yes (TP) | detector only (FP) | reader only (FN) | both no (TN) | precision | recall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, c in table.items():
        lines.append(f"| {label} | {c.tp + c.fn} | {c.tp + c.fp} | {c.tp} | {c.fp} | {c.fn} | {c.tn} | {c.precision:.1%} | {c.recall:.1%} |")
    return "\n".join(lines)
