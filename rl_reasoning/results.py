"""Evaluation results: the JSON file `rl-reasoning eval --out` writes, its markdown table, and
the paired comparison of two results (`rl-reasoning eval --compare A B`).

A result is `evaluation.evaluate_model`'s dict: model, task, settings, metrics and one record
per problem. The comparison pairs problems by question and reports, for greedy pass@1, pass@k and
maj@k, the mean difference with a 95 % percentile-bootstrap interval over problems.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import UserError
from .traces.schema import is_number
from .untrusted import is_text

BOOTSTRAP_SAMPLES = 2000


def write_result(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))


METRIC_ORDER = ("accuracy", "pass@", "maj@", "format_rate", "sampled_format_rate", "runnable_rate", "sampled_runnable_rate",
                "mean_length", "think_words", "sampled_mean_length",
                "truncated_frac", "sampled_truncated_frac", "num_problems", "greedy_seconds", "sampled_seconds", "seconds")


def _metric_names(results: list[dict]) -> list[str]:
    names = {k for r in results for k in r["metrics"]}
    return sorted(names, key=lambda m: (next((i for i, p in enumerate(METRIC_ORDER) if m.startswith(p)), 99), m))


def markdown_table(results: list[dict]) -> str:
    header = "| metric | " + " | ".join(f"{r['model']} on {r['task']}" for r in results) + " |"
    lines = [header, "|---|" + "---|" * len(results)]
    for name in _metric_names(results):
        cells = []
        for r in results:
            v = r["metrics"].get(name)
            cells.append("" if v is None else f"{v:.1%}" if _is_rate(name) else f"{v:.1f}" if isinstance(v, float) else str(v))
        label = "greedy pass@1" if name == "accuracy" else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _is_rate(name: str) -> bool:
    return name == "accuracy" or name.startswith(("pass@", "maj@")) or name.endswith(("_rate", "_frac"))


def _per_problem(record: dict, metric: str) -> float | None:
    key = "correct" if metric == "accuracy" else metric
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) else None  # bool counts as 0/1 (checked by _result_problem)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a and its 95 % percentile-bootstrap interval (resampling problems)."""
    diff = b - a
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(BOOTSTRAP_SAMPLES, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _result_problem(result) -> str | None:
    """Why a result file cannot be compared, or None (files given to --compare are untrusted)."""
    if not isinstance(result, dict):
        return "not a JSON object"
    if not isinstance(result.get("metrics"), dict) or not all(is_number(v) or v is None or isinstance(v, bool) for v in result["metrics"].values()):
        return "'metrics' is not an object of numbers"
    if not is_text(result.get("model")) or not is_text(result.get("task")):
        return "'model' or 'task' is not text"
    rows = result.get("per_problem")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and is_text(r.get("question")) for r in rows):
        return "'per_problem' is not a list of objects with a 'question'"
    if any(not (is_number(v) or v is None or isinstance(v, bool)) for r in rows for k, v in r.items() if k == "correct" or k.startswith(("pass@", "maj@"))):
        return "a per-problem 'correct', 'pass@k' or 'maj@k' is not a number"
    return None


def compare(path_a: str, path_b: str) -> str:
    results = []
    for p in (path_a, path_b):
        try:
            result = json.loads(Path(p).read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as e:  # ValueError: not UTF-8, not JSON
            raise UserError(f"--compare: cannot read {p}: {e}") from None
        if problem := _result_problem(result):
            raise UserError(f"--compare: {p} is not a result written by `rl-reasoning eval` ({problem})")
        results.append(result)
    a, b = results
    by_question = {r["question"]: r for r in a["per_problem"]}
    pairs = [(by_question[r["question"]], r) for r in b["per_problem"] if r["question"] in by_question]
    if not pairs:
        raise UserError("--compare: the two results share no problems")
    lines = [markdown_table(results), "", f"paired over {len(pairs)} shared problems; 95 % CI from {BOOTSTRAP_SAMPLES} bootstrap resamples", "",
             "| metric | A | B | B − A | 95 % CI |", "|---|---|---|---|---|"]
    for name in _metric_names(results):
        if not (name == "accuracy" or name.startswith(("pass@", "maj@"))):
            continue
        values = [(_per_problem(x, name), _per_problem(y, name)) for x, y in pairs]
        values = [(x, y) for x, y in values if x is not None and y is not None]
        if not values:
            continue
        xa, xb = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        mean, lo, hi = paired_bootstrap(xa, xb)
        label = "greedy pass@1" if name == "accuracy" else name
        lines.append(f"| {label} | {xa.mean():.1%} | {xb.mean():.1%} | {mean:+.1%} | [{lo:+.1%}, {hi:+.1%}] |")
    return "\n".join(lines)
