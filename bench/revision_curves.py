"""In-turn answer revisions per training step, by direction: how often one completion (or one turn
of a multi-turn episode) changes its own answer, and whether wrong -> right or right -> wrong.

    python bench/revision_curves.py RUN [RUN ...] --out bench/results/revision_curves.md [--bucket 5]

Re-analyses each run's `traces.jsonl` with the current detectors (episodes turn by turn, the
environment's feedback left out: rl_reasoning/traces/analysis.py), and writes counts, not only
rates, because the events are rare: per bucket of steps, completions, reflections, revisions and
their directions, and verifications. A PNG of the rates per bucket is written next to the table.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from rl_reasoning.traces.analysis import Analyzer
from rl_reasoning.traces.cli import analyze_record
from rl_reasoning.traces.store import load

KINDS = ("wrong_to_right", "right_to_wrong", "wrong_to_wrong", "changed")


def curves(run: Path, bucket: int) -> list[dict]:
    analyzer = Analyzer()
    rows: dict[int, Counter] = {}
    for record in load(run):
        step = record.get("step")
        if not isinstance(step, int):
            continue
        a = analyze_record(analyzer, record)
        c = rows.setdefault((step - 1) // bucket, Counter())
        c["n"] += 1
        c["reflect"] += a.reflected
        c["verify"] += bool(a.verifications)
        c["correct"] += bool(record.get("correct"))
        if a.revision is not None:
            c["revise"] += 1
            c[a.revision.kind] += 1
    keys = ("n", "reflect", "verify", "correct", "revise", *KINDS)
    return [{"steps": f"{b * bucket + 1}–{(b + 1) * bucket}", **{k: c[k] for k in keys}} for b, c in sorted(rows.items())]


def table(name: str, rows: list[dict]) -> str:
    lines = [f"### {name}", "", "| steps | completions | accuracy | reflection | revision | wrong→right | right→wrong | wrong→wrong | verification |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["n"]
        lines.append(f"| {r['steps']} | {n} | {r['correct'] / n:.1%} | {r['reflect']} ({r['reflect'] / n:.1%}) | {r['revise']} ({r['revise'] / n:.1%}) | "
                     f"{r['wrong_to_right']} | {r['right_to_wrong']} | {r['wrong_to_wrong']} | {r['verify']} ({r['verify'] / n:.1%}) |")
    return "\n".join(lines)


def plot(named: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(named), figsize=(5 * len(named), 3.5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], named.items()):
        x = range(1, len(rows) + 1)
        for key, label in (("revise", "any revision"), ("wrong_to_right", "wrong → right"), ("right_to_wrong", "right → wrong"), ("reflect", "reflection")):
            ax.plot(x, [100 * r[key] / r["n"] for r in rows], marker="o", ms=3, label=label)
        ax.set_xticks(list(x), [r["steps"] for r in rows], rotation=45, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("% of completions")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders, each NAME=PATH or PATH")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bucket", type=int, default=5)
    args = ap.parse_args()
    named = {}
    for spec in args.runs:
        name, _, path = spec.rpartition("=")
        named[name or Path(path).name] = curves(Path(path), args.bucket)
    text = "# In-turn answer revisions per step\n\n" + "\n\n".join(table(n, r) for n, r in named.items()) + "\n"
    out = Path(args.out)
    out.write_text(text)
    plot(named, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
