"""Are two training runs the same, timings aside? For refactors that must not change behaviour.

    python bench/same_run.py RUN_A RUN_B

Compares metrics.jsonl, traces.jsonl, eval.jsonl and eval_traces.jsonl record by record, with
every timing field removed at any depth (keys starting with time/ or throughput/, or ending in
seconds), and every checkpoint's model weights bit for bit. Prints one line per file and the
first differing record; exits 0 when everything is identical, 1 otherwise, 2 on a bad argument.
Two runs of the same recipe and seed are identical only on the same CPU kernels (the same
machine and torch build): run both sides on one machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RECORD_FILES = ("metrics.jsonl", "traces.jsonl", "eval.jsonl", "eval_traces.jsonl")


def is_timing(key: str) -> bool:
    return key.startswith(("time/", "throughput/")) or key.endswith("seconds")


def without_timings(value):
    """`value` with every timing key removed, inside dicts and lists alike."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not is_timing(k)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def records(path: Path) -> list | None:
    if not path.exists():
        return None
    return [without_timings(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k)) if isinstance(x, dict) and isinstance(y, dict) else []
            return f"record {i} differs in {', '.join(keys) or 'its value'}"
    return f"{len(a)} vs {len(b)} records"


def compare(a: Path, b: Path) -> list[tuple[str, bool, str]]:
    """(what, identical, detail) for each record file and each checkpoint of `a`."""
    import torch
    from safetensors.torch import load_file

    out = []
    for name in RECORD_FILES:
        ra, rb = records(a / name), records(b / name)
        same = ra == rb
        detail = f"{0 if ra is None else len(ra)} records" if same else first_difference(ra or [], rb or [])
        out.append((name, same, detail))
    for checkpoint in sorted((a / "checkpoints").glob("step-*")):
        other = b / "checkpoints" / checkpoint.name / "model.safetensors"
        if not other.exists():
            out.append((f"{checkpoint.name} weights", False, "missing in the second run"))
            continue
        wa, wb = load_file(str(checkpoint / "model.safetensors")), load_file(str(other))
        same = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        out.append((f"{checkpoint.name} weights", same, f"{len(wa)} tensors"))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not all(Path(p).is_dir() for p in argv):
        print("usage: python bench/same_run.py RUN_A RUN_B (two run directories)", file=sys.stderr)
        return 2
    results = compare(Path(argv[0]), Path(argv[1]))
    for what, same, detail in results:
        print(f"{what:22s} {'identical' if same else 'DIFFERENT'}  ({detail})")
    identical = all(same for _, same, _ in results)
    print("identical, timings aside" if identical else "the runs differ")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
