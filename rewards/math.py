"""Math answer reward: the extracted final answer against the `answer` column, via math-verify.

First version (issue #2): extraction from \\boxed{} / <answer>, comparison with math-verify's
`parse` + `verify`. Gold answers math-verify cannot parse give None (sample skipped).
Issue #3 adds process isolation, hard timeouts and the hostile-input corpus.
"""

from __future__ import annotations

from .extract import completion_text, extract_answer


def _parse(text: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    wrapped = text if "$" in text or "\\boxed" in text else f"${text}$"
    return parse(wrapped, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=5)


def math_reward(completions, answer, fallback: str = "none", **_) -> list[float | None]:
    """1.0 if the final answer equals the gold answer symbolically, 0.0 if not, None if the gold is unparseable.

    Example: math_reward(["<think>..</think><answer>\\frac{1}{2}</answer>"], answer=["0.5"]) -> [1.0]
    """
    from math_verify import verify

    out: list[float | None] = []
    for completion, gold in zip(completions, answer):
        gold_parsed = _parse(str(gold))
        if not any(not isinstance(x, str) for x in gold_parsed):  # only the raw string came back
            out.append(None)
            continue
        predicted = extract_answer(completion_text(completion), fallback=fallback)
        if predicted is None:
            out.append(0.0)
            continue
        pred_parsed = _parse(predicted)
        out.append(1.0 if pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=5) else 0.0)
    return out
