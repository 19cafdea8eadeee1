"""The self-correction detectors against the reader's labels (tests/data/detector_labels.jsonl).

    python bench/detector_labels.py [--out bench/results/detector_labels.md] [--misses]

Prints per-label confusion tables, precision and recall for the whole set, for its `dev` part
(the items whose detector output was read while the detectors were being fixed) and its `test`
part (labelled at the same time, never inspected against the detectors before the final
measurement), and for the real completions alone (hand-written items left out).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from rl_reasoning.traces.validation import LABELS, confusion_table, confusions, load_labelled

SET = Path(__file__).resolve().parent.parent / "tests" / "data" / "detector_labels.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--misses", action="store_true", help="list every disagreement (id, label, reader, detector)")
    args = ap.parse_args()
    items = load_labelled(SET)
    sources = Counter(":".join(i["source"].split(":")[:2]) for i in items)  # "run:retry_2digit:turn1" counts as "run:retry_2digit"
    parts = [("whole set", items), ("dev (read while fixing the detectors)", [i for i in items if i.get("split") == "dev"]),
             ("test (not read before this measurement)", [i for i in items if i.get("split") == "test"]),
             ("real completions only (hand-written left out)", [i for i in items if not i.get("handwritten")])]
    real = [i for i in items if not i.get("handwritten")]
    positives = ", ".join(f"{k} {sum(i[k] for i in items)} ({sum(i[k] for i in real)} real)" for k in LABELS)
    lines = ["# Self-correction detectors against a reader", "",
             f"{len(items)} labelled items ({len(real)} real, {len(items) - len(real)} hand-written); positives per label: {positives}.",
             "", "Sources: " + ", ".join(f"{s} {n}" for s, n in sorted(sources.items())) + ".", ""]
    for name, part in parts:
        table, misses = confusions(part)
        lines += [f"## {name}: {len(part)} items", "", confusion_table(table), ""]
        if args.misses and name == "whole set":
            lines += ["Disagreements:", ""] + [f"- {m['id']} {m['label']}: reader {m['reader']}, detector {m['detector']}" for m in misses] + [""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
