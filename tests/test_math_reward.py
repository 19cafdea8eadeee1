"""The hardened math reward against a corpus of equivalent, non-equivalent and hostile cases."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from rewards.math import math_reward
from rewards.math_verifier import MathVerifierPool, refuse_reason

CORPUS = Path(__file__).parent / "data" / "math_cases.jsonl"
GENERATED = {"unbalanced_braces_10mb": lambda: "\\boxed{" * 1_000_000 + "{" * 4_000_000}


def load_cases():
    cases = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    for c in cases:
        if c.get("completion_generator"):
            c["completion"] = GENERATED[c["completion_generator"]]()
    return cases


CASES = load_cases()


def completion_of(case) -> str:
    return case["completion"] if case.get("completion") is not None else f"<think>working</think> <answer>{case['pred']}</answer>"


def test_corpus_is_large_and_balanced():
    expected = [c["expected"] for c in CASES]
    assert len(CASES) >= 150
    assert expected.count(1) >= 50 and expected.count(0) >= 50 and expected.count(None) >= 3


def test_corpus_verdicts():
    start = time.perf_counter()
    scores = math_reward([completion_of(c) for c in CASES], answer=[c["gold"] for c in CASES])
    wrong = [(c["note"], c["gold"], c["pred"], c["expected"], s) for c, s in zip(CASES, scores) if s != c["expected"]]
    assert not wrong, "\n".join(map(repr, wrong))
    print(f"{len(CASES)} math cases in {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize(
    "pred, budget_s",
    [("5^{5^{5^{5^5}}}", 5.0), ("9**9**9**9", 5.0), ("__import__('os').system('id')", 5.0)],
)
def test_hostile_answers_score_zero_quickly(pred, budget_s, tmp_path):
    marker = tmp_path / "pwned"
    start = time.perf_counter()
    out = math_reward([f"<answer>{pred.replace('id', 'touch ' + str(marker))}</answer>"], answer=["5"])
    assert out == [0.0] and time.perf_counter() - start < budget_s
    assert not marker.exists()


def test_ten_megabytes_of_braces_scores_zero_within_two_seconds():
    text = GENERATED["unbalanced_braces_10mb"]()
    start = time.perf_counter()
    assert math_reward([text], answer=["2"]) == [0.0]
    assert time.perf_counter() - start < 2.0


def test_refusal_rules():
    assert refuse_reason("5^{5^{5^{5^5}}}") == "exponent tower"
    assert refuse_reason("2^{10}") is None and refuse_reason("x^2+y^2") is None
    assert refuse_reason("100000000!") == "huge factorial" and refuse_reason("2004!") is None
    assert refuse_reason("1" * 600).startswith("longer than")


def test_a_hanging_comparison_is_killed_and_the_pool_recovers():
    pool = MathVerifierPool(workers=1, timeout_s=1.0)
    try:
        # sympy expands both 2000th powers: far longer than the 1 s deadline
        start = time.perf_counter()
        verdicts = pool.compare_many([("(x+2)^{2000}", "(x+1)^{2000}"), ("1", "1.0")])
        assert verdicts == ["timeout", "equal"]
        assert pool.restarts == 1
        assert time.perf_counter() - start < 15  # 1 s deadline + one worker restart
    finally:
        pool.close()


def test_workers_run_under_the_memory_cap():
    cap = 700 * 1024**2
    pool = MathVerifierPool(workers=1, timeout_s=5.0, memory_bytes=cap)
    try:
        assert pool.compare_many([("2", "2")]) == ["equal"]
        pid = pool._workers[0].process.pid
        limits = Path(f"/proc/{pid}/limits").read_text()
        line = next(row for row in limits.splitlines() if row.startswith("Max address space"))
        assert line.split()[3] == str(cap)
    finally:
        pool.close()


def test_a_worker_that_dies_mid_task_is_a_verdict_and_is_replaced():
    """What the OOM killer or the address-space cap does to a worker: it vanishes mid-task."""
    pool = MathVerifierPool(workers=1, timeout_s=30.0)
    try:
        pool.compare_many([("1", "1")])
        victim = pool._workers[0].process
        threading.Timer(0.5, victim.kill).start()
        verdicts = pool.compare_many([("(x+2)^{2000}", "(x+1)^{2000}"), ("3", "3")])
        assert verdicts == ["memory", "equal"] and pool.restarts == 1
    finally:
        pool.close()


def test_works_off_the_main_thread():
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", math_reward(["<answer>0.5</answer>"], answer=["\\frac12"])))
    thread.start()
    thread.join(30)
    assert result["r"] == [1.0]


def test_metrics_count_parse_failures_and_fallback():
    out = math_reward(["<answer>@@</answer>", "no answer", "the answer is 3", "<answer>3</answer>"], answer=["3", "3", "3", "???"], fallback="last_number")
    assert out == [0.0, 0.0, 1.0, None]
    assert out.metrics["pred_unparseable_frac"] == 0.25
    assert out.metrics["gold_unparseable_frac"] == 0.25
    assert out.metrics["fallback_frac"] == 0.25
    assert out.metrics["no_answer_frac"] == 0.25


def test_model_text_never_reaches_sympy_parse_expr(monkeypatch):
    """sympy's parse_expr is an eval: only grammar tokens (numbers, unit names) may reach it, never model text."""
    import re

    import sympy.parsing.sympy_parser as sp

    from rewards.math_verifier import compare

    original, seen = sp.parse_expr, []

    def spy(text, *args, **kwargs):
        seen.append(text)
        return original(text, *args, **kwargs)

    import sys

    import math_verify  # noqa: F401 - import everything that may hold its own reference first

    for name, module in list(sys.modules.items()):
        if name.startswith(("sympy", "latex2sympy2_extended", "math_verify")) and getattr(module, "parse_expr", None) is original:
            monkeypatch.setattr(module, "parse_expr", spy)
    assert compare("\\frac{1}{2}", "0.5") == "equal"
    assert compare("5", "__import__('os').system('id')") in ("pred_unparseable", "different")
    assert compare("5", "(lambda: 5)()") in ("pred_unparseable", "different")
    assert compare("x^2+2x+1", "(x+1)^2") == "equal"
    assert seen, "the spy saw nothing: the patch did not reach math-verify"
    assert all(re.fullmatch(r"[A-Za-z0-9.]+", t) for t in seen if isinstance(t, str)), [t for t in seen if not re.fullmatch(r"[A-Za-z0-9.]+", str(t))]
