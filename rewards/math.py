"""Math answer reward: the completion's final answer against the gold answer column.

Gold: the `answer` column, or open-r1's `solution` column when there is no `answer` (TRL passes
every dataset column by name). A gold given as a worked solution is read the way math-verify
reads it: its final `\\boxed{}` (run of boxes); a GSM8K `... #### 42` gold reads 42.
Extraction (`rewards.extract.final_answer_with_source`): the final run of `\\boxed{}`s (several
boxes separated only by connectors are one multi-valued answer), else the last
`<answer>...</answer>`, else an explicit final-answer phrase ("The final answer is $10,455$"),
else (only with `fallback="last_number"`) the last number. Both sides then go through
`rewards.extract.clean_answer`: markdown bold, `$...$`, `\\text{}` wrappers, a trailing period,
currency signs, degree signs and digit-group separators are removed, percent words become `\\%`,
"2 1/2" is the mixed number 5/2. Where this departs from math-verify/open-r1 is listed in
`rewards/extract.py`'s docstring.
Comparison: `rewards.math_verifier` — math-verify in killable worker processes with a memory
cap, hostile shapes refused before parsing, exact comparison of exact numbers, whole-set
comparison of multi-valued answers.

Scores: 1.0 equal; 0.0 different, no answer, unparseable/refused/timed-out prediction;
None when the gold answer cannot be parsed (the sample is skipped, and counted).
Metrics (see `ScoredList`): `no_answer_frac`, `pred_unparseable_frac`, `gold_unparseable_frac`,
`timeout_frac`, `refused_frac`, `fallback_frac`, `answer_phrase_frac` (answers read from a
final-answer phrase, no box or tag).
"""

from __future__ import annotations

from .extract import clean_answer, completion_text, final_answer_with_source, gold_answer
from .math_verifier import shared_pool
from .scored import ScoredList


def math_reward(completions, answer=None, fallback: str = "none", solution=None, **_) -> ScoredList:
    """Example: math_reward(["<think>..</think><answer>\\frac{1}{2}</answer>"], answer=["0.5"]) -> [1.0]

    `solution` (open-r1's column name) is the gold when `answer` is not given; `answer` wins when both are.
    """
    golds = answer if answer is not None else solution
    if golds is None:
        raise TypeError("math_reward needs the gold answers: an `answer` column (or open-r1's `solution`)")
    n = len(completions)
    predictions, sources = [], []
    for completion in completions:
        pred, source = final_answer_with_source(completion_text(completion), fallback=fallback)
        predictions.append(None if pred is None else clean_answer(pred))
        sources.append(source)
    pairs = [(clean_answer(gold_answer(g)) if g is not None else "", p) for g, p in zip(golds, predictions) if p is not None]
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
    metrics["answer_phrase_frac"] = sources.count("answer_phrase") / max(n, 1)
    return ScoredList(scores, metrics)
