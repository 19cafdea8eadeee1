"""Math answer reward: the completion's final answer against the `answer` column.

Extraction (`rewards.extract`): the last `\\boxed{...}`, else the last `<answer>...</answer>`,
else (only with `fallback="last_number"`) the last number; then markdown bold, `$...$`,
`\\text{...}` wrappers, a trailing period and thousands separators are removed.
Comparison: `rewards.math_verifier` — math-verify in killable worker processes with a memory
cap, hostile shapes refused before parsing, exact comparison of exact numbers, whole-set
comparison of multi-valued answers.

Scores: 1.0 equal; 0.0 different, no answer, unparseable/refused/timed-out prediction;
None when the gold answer cannot be parsed (the sample is skipped, and counted).
Metrics (see `ScoredList`): `no_answer_frac`, `pred_unparseable_frac`, `gold_unparseable_frac`,
`timeout_frac`, `refused_frac`, `fallback_frac`.
"""

from __future__ import annotations

from .extract import completion_text, extract_answer_with_source, normalize_answer
from .math_verifier import shared_pool
from .scored import ScoredList


def math_reward(completions, answer, fallback: str = "none", **_) -> ScoredList:
    """Example: math_reward(["<think>..</think><answer>\\frac{1}{2}</answer>"], answer=["0.5"]) -> [1.0]"""
    n = len(completions)
    predictions, sources = [], []
    for completion in completions:
        pred, source = extract_answer_with_source(completion_text(completion), fallback=fallback)
        predictions.append(None if pred is None else normalize_answer(pred))
        sources.append(source)
    pairs = [(normalize_answer(str(g)), p) for g, p in zip(answer, predictions) if p is not None]
    verdicts = iter(shared_pool().compare_many(pairs))
    scores, counts = [], {"no_answer": 0, "pred_unparseable": 0, "gold_unparseable": 0, "timeout": 0, "refused": 0}
    for pred in predictions:
        if pred is None:
            counts["no_answer"] += 1
            scores.append(0.0)
            continue
        verdict = next(verdicts)
        if verdict == "gold_unparseable":
            scores.append(None)
        else:
            scores.append(1.0 if verdict == "equal" else 0.0)
        if verdict in counts:
            counts[verdict] += 1
        elif verdict in ("memory", "error"):
            counts["pred_unparseable"] += 1
    metrics = {f"{k}_frac": v / max(n, 1) for k, v in counts.items()}
    metrics["fallback_frac"] = sources.count("last_number") / max(n, 1)
    return ScoredList(scores, metrics)
