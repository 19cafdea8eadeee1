"""Several learning curves in one plot and one table, from the `learning.md` files that
`bench/learning.py` writes (and that `bench/results/` keeps).

    python bench/curves.py --out bench/results/r1zero_cpu_2digit_options \
        "the recipe=bench/results/r1zero_cpu_2digit_learning.md" \
        "+ dynamic_sampling=bench/results/r1zero_cpu_2digit_ds_learning.md"

Writes OUT.png (held-out accuracy against step, one line per run, the base level dashed) and
OUT.md (a row per run: accuracy at every evaluation step, the change from step 0 at the best and
the last point, and the training wall time), and prints the table.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import NoReturn

_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*([\d.]+)%\s*\|")
_MINUTES = re.compile(r"training wall time:\s*([\d.]+)\s*min")


def read_curve(path: Path) -> tuple[list[tuple[int, float]], float | None]:
    """(step, held-out accuracy in %) pairs from the first table of a `learning.md`, and its
    training minutes (None when the file does not say)."""
    text = path.read_text()
    points = []
    for line in text.splitlines():
        match = _ROW.match(line)
        if match:
            points.append((int(match[1]), float(match[2])))
        elif points:
            break  # the first table has ended
    if not points:
        fail(f"{path}: no learning-curve table (| step | accuracy | ...) found")
    minutes = _MINUTES.search(text)
    return points, float(minutes[1]) if minutes else None


def fail(message: str) -> NoReturn:
    """A bad input: one line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def table(curves: dict[str, tuple[list[tuple[int, float]], float | None]]) -> str:
    """A markdown table: one row per run, one column per evaluation step seen in any run."""
    steps = sorted({step for points, _ in curves.values() for step, _ in points})
    lines = ["| run | " + " | ".join(str(s) for s in steps) + " | best − step 0 | last − step 0 | training |",
             "|---|" + "---|" * (len(steps) + 3)]
    for label, (points, minutes) in curves.items():
        by_step = dict(points)
        base, last = points[0][1], points[-1][1]
        best = max(acc for _, acc in points)
        cells = [f"{by_step[s]:.1f}" if s in by_step else "" for s in steps]
        wall = f"{minutes:.1f} min" if minutes is not None else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {best - base:+.1f} | {last - base:+.1f} | {wall} |")
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, tuple[list[tuple[int, float]], float | None]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, (points, _) in curves.items():
        ax.plot([s for s, _ in points], [a for _, a in points], marker="o", label=label)
    first = next(iter(curves.values()))[0][0]
    ax.axhline(first[1], color="grey", linestyle="--", linewidth=1, label=f"step {first[0]} ({first[1]:.1f} %)")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out greedy accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output path without extension: OUT.png and OUT.md are written")
    parser.add_argument("--title", default="held-out accuracy")
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/learning.md")
    args = parser.parse_args(argv)
    curves = {}
    for spec in args.runs:
        label, sep, path = spec.rpartition("=")
        if not sep or not label:
            fail(f"{spec!r}: expected LABEL=path/to/learning.md")
        if not Path(path).is_file():
            fail(f"{path}: no such file")
        curves[label] = read_curve(Path(path))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = table(curves)
    out.with_suffix(".md").write_text(text)
    plot(curves, out.with_suffix(".png"), args.title)
    print(text, end="")
    print(f"written: {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
