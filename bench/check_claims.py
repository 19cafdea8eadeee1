"""Check that every measured figure in README.md and docs/*.md names its source (issue #32).

    python bench/check_claims.py            # exit 0: every tagged figure is backed; 1: one line per figure that is not

The convention. Text is read in blocks: a paragraph, a list item, a table; code blocks are skipped.
A block is a *claim* when
- it is a list item of the README's "## Results so far" section (each one must link a file under
  `bench/results/` or name a `python bench/X.py` / `bash bench/X.sh` command in backticks), or
- it links a file under `bench/results/` (a markdown link, or the path in backticks), or is a
  table whose caption (the paragraph right before it, ending in ":") does.
A figure is a number followed by `%`, `×`, `min` or `minutes` (ranges and lists such as
`87.5, 84.0 %` or `1.64–2.15×` count every number), and in a claim's table every decimal number in
a column headed by a step number, "accuracy" or "min". Code spans, settings (`T 0.7`, `ρ = 0.2`)
and thresholds (`≥ 95 %`, `passing 90 %`) are not figures.
In a claim that links result files, every figure must appear in one of them (`98.5 %` matches
`98.5%`, `98.5` or `0.985`), unless its sentence (its row, in a table) says the output was
"not kept": a figure from a run whose files are gone is marked, in plain words, where it stands.
A claim that links no result file is backed by the bench command it names (figures that command
printed, when nothing was kept). Every `bench/results/` link and every named bench script must exist.
Blocks that are not claims are not checked: link a measured figure's file to have it checked.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOST = re.compile(r"not kept", re.I)
_NUM = r"(?<![\w.])\d+(?:\.\d+)?"
FIGURE = re.compile(rf"((?:{_NUM}\s*(?:,|/|–|-|→)\s*)*{_NUM})\s*(%|×(?!\s*\d)|(?:CPU )?min(?:utes)?\b)")
# not figures: code spans, settings (T 0.7, top-p 0.9, ρ = 0.2, lr 2e-5) and thresholds (≥ 95 %, passing 90 %)
NOT_FIGURES = re.compile(r"`[^`]*`|\b(?:T|top-p|lr|ε|ρ|β|μ|G|B)\s*=?\s*[\d.e-]+\b|(?:[≥<>]|passing)\s*\d+(?:\.\d+)?\s*%")
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
MD_LINK = re.compile(r"\]\(([^)\s]*bench/results/[^)\s#]+)")
TICK_PATH = re.compile(r"`(bench/results/[^`\s]+)`")
COMMAND = re.compile(r"`(?:python3?|bash) (bench/[\w/]+\.(?:py|sh))\b")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z*(\[`])")


def blocks(text: str):
    """(first line number, kind, lines) of each heading, paragraph, list item and table; code skipped."""
    kind, start, lines, fenced = None, 0, [], False
    for number, line in enumerate(text.splitlines() + [""], 1):
        stripped = line.strip()
        fenced ^= stripped.startswith("```")
        new = (None if fenced or not stripped or stripped.startswith("```") else "heading" if stripped.startswith("#")
               else "table" if stripped.startswith("|") else "item" if re.match(r"\s*(?:[-*]|\d+\.)\s", line) else "para")
        if kind and (new in (None, "item", "heading") or kind == "heading" or (new == "table") != (kind == "table")):
            yield start, kind, lines
            kind = None
        if new and not kind:
            kind, start, lines = new, number, []
        if kind:
            lines.append(line)


def sources(text: str, doc: Path, root: Path) -> list[Path]:
    """Files under bench/results/ that a block links: markdown links (relative to the page) and
    backticked paths (relative to the repository, `{md,png}` expanded)."""
    found = [(doc.parent / link).resolve() for link in MD_LINK.findall(text)]
    for path in TICK_PATH.findall(text):
        stem, _, rest = path.partition("{")
        found += [root / (stem + ext + rest.partition("}")[2]) for ext in rest.partition("}")[0].split(",")] if rest else [root / path]
    return found


def numbers_in(paths: list[Path]) -> set[float]:
    numbers = set()
    for path in paths:
        if path.suffix in (".md", ".json", ".txt", ".csv") and path.is_file():
            numbers |= {round(float(n), 4) for n in re.findall(r"\d+(?:\.\d+)?", path.read_text())}
    return numbers


def figures(unit: str, columns: list[bool] | None = None):
    """(text as written, value, unit) of each figure in a sentence, or in a table row whose
    `columns` say which cells hold bare figures (held-out accuracy at a step, minutes)."""
    unit = NOT_FIGURES.sub(" ", unit.replace("**", ""))
    for match in FIGURE.finditer(unit):
        for number in re.findall(r"\d+(?:\.\d+)?", match[1]):
            yield f"{number} {match[2]}", float(number), match[2]
    for cell, bare in zip(unit.strip().strip("|").split("|"), columns or []):
        if bare and not FIGURE.search(cell):
            yield from ((n, float(n), "") for n in DECIMAL.findall(cell))


def figure_columns(header: str) -> list[bool]:
    """A table's columns of bare figures: headed by a step number, or by accuracy or minutes."""
    return [bool(re.fullmatch(r"\d+", c.strip()) or re.search(r"accuracy|\bmin\b", c))
            for c in header.strip().strip("|").split("|")]


def check(files: list[Path], root: Path = ROOT) -> list[str]:
    problems = []
    for doc in files:
        text, section, caption = doc.read_text(), "", None
        name = doc.relative_to(root) if doc.is_relative_to(root) else doc
        for line, kind, lines in blocks(text):
            block = "\n".join(lines)
            if kind == "heading":
                section = block.strip("# \n") if block.startswith("## ") else section
                continue
            for script in COMMAND.findall(block):
                if not (root / script).is_file():
                    problems.append(f"{name}:{line}: names `{script}`, which does not exist")
            linked = sources(block, doc, root) + (sources(caption, doc, root) if kind == "table" and caption else [])
            caption = block if kind != "table" and block.rstrip().endswith(":") else None
            for path in linked:
                if not path.exists():
                    problems.append(f"{name}:{line}: links {path.name}, which does not exist")
            forced = doc.name == "README.md" and section == "Results so far" and kind == "item"
            if forced and not linked and not COMMAND.search(block):
                problems.append(f"{name}:{line}: a results bullet that links no bench/results file and names no bench command")
            if not linked:
                continue
            known = numbers_in(linked)
            columns = figure_columns(lines[0]) if kind == "table" else None
            units = [(line + i, row) for i, row in enumerate(lines) if i and not set(row) <= set("|-: ")] \
                if kind == "table" else [(line, s) for s in SENTENCE_END.split(" ".join(x.strip() for x in lines))]
            for at, unit in units:
                if LOST.search(unit):
                    continue
                for written, value, sign in figures(unit, columns):
                    if round(value, 4) not in known and not (sign == "%" and round(value / 100, 4) in known):
                        files_named = ", ".join(sorted({p.name for p in linked}))
                        problems.append(f"{name}:{at}: {written} is in none of {files_named} "
                                        "(link the file it comes from, or say in its sentence that the output was not kept)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="default: README.md and docs/*.md")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (bench/ and backticked paths)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    files = [f.resolve() for f in args.files] or [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    problems = check(files, root)
    print("\n".join(problems) if problems else f"every tagged figure in {len(files)} files has its source")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
