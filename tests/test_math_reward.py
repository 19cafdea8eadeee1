"""The hardened math reward against a corpus of equivalent, non-equivalent and hostile cases.

`expected` in tests/data/math_cases.jsonl is the true verdict. A case the reward knowingly gets
wrong carries `"known_miss": true` (always a false negative: expected 1, scored 0); every other
case must score exactly its `expected`.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import rewards.extract
from rewards.extract import clean_answer, final_answer_with_source, final_boxes, gold_answer
from rewards.math import math_reward
from rewards.math_verifier import MathVerifierPool, refuse_reason
from tests.timing import assert_scales_linearly, hang_guard

CORPUS = Path(__file__).parent / "data" / "math_cases.jsonl"
# Hostile shapes by size n: every reading must stay linear in the text (test_the_readings_are_linear_on_hostile_text);
# the corpus uses some of them at fixed sizes (GENERATED).
SCALED_READINGS = {
    "unbalanced_braces": lambda n: "\\boxed{" * n + "{" * (4 * n),
    "nested_boxes": lambda n: "\\boxed{" * n + "1" + "}" * n,
    "same_box": lambda n: "\\boxed{4}, " * n,
    "distinct_boxes": lambda n: ", ".join(f"\\boxed{{{i}}}" for i in range(n)),
    "spaces_after_box": lambda n: "\\boxed{1}" + " " * n,
    "spaces_in_box": lambda n: "\\boxed{" + " " * n + "1}",
    "phrases": lambda n: "Final answer: 3\n" * n + "Final answer: 7",
    "spaces_after_phrase": lambda n: "The final answer is" + " " * n,
    "long_gaps": lambda n: ("\\boxed{1}" + " " * 39 + "!") * n,
    "gap_of_connectors": lambda n: "\\boxed{1}" + " and or , $ x = " * n + "?\\boxed{2}",
    "unclosed_dollars_after_phrase": lambda n: "Final answer: $" + "\\$" * n,
    "bold_markers": lambda n: "<answer>" + "**" * n + "</answer>",
    "spaces_before_dollars": lambda n: "<answer>1" + " " * n + "x</answer>",
}
GENERATED = {  # the corpus's `completion_generator` names
    "unbalanced_braces_10mb": lambda: SCALED_READINGS["unbalanced_braces"](1_000_000),
    "nested_boxes_3000": lambda: SCALED_READINGS["nested_boxes"](3000),
    "same_box_5000": lambda: SCALED_READINGS["same_box"](5000),
    "distinct_boxes_5000": lambda: SCALED_READINGS["distinct_boxes"](5000),
    "spaces_after_box": lambda: SCALED_READINGS["spaces_after_box"](19990),
    "spaces_in_box": lambda: SCALED_READINGS["spaces_in_box"](19000),
    "phrases_1000": lambda: SCALED_READINGS["phrases"](1000),
    "spaces_after_phrase": lambda: SCALED_READINGS["spaces_after_phrase"](19000),
}
# The classes added for item 9 of the accuracy issue (right answers written differently), by note prefix.
NEW_CLASSES = (
    "worked-solution gold", "infinity", "currency", "units", "degrees", "percent", "thousands", "final-answer phrase",
    "multiple boxes", "text", "mixed numbers", "juxtaposed numbers", "hostile reading", "gluing",
)
MIN_AGREEMENT = 0.97


def load_cases():
    cases = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
    for c in cases:
        if c.get("completion_generator"):
            c["completion"] = GENERATED[c["completion_generator"]]()
    return cases


CASES = load_cases()


def completion_of(case) -> str:
    return case["completion"] if case.get("completion") is not None else f"<think>working</think> <answer>{case['pred']}</answer>"


def case_class(case) -> str:
    return case["note"].split(":")[0]


def test_corpus_is_large_and_balanced():
    expected = [c["expected"] for c in CASES]
    assert len(CASES) >= 350
    assert expected.count(1) >= 50 and expected.count(0) >= 50 and expected.count(None) >= 3
    new = [c["expected"] for c in CASES if case_class(c) in NEW_CLASSES]
    assert len(new) >= 150 and new.count(1) >= 60 and new.count(0) >= 60
    for cls in NEW_CLASSES:
        verdicts = [c["expected"] for c in CASES if case_class(c) == cls]
        assert verdicts.count(0) >= 2, f"{cls}: needs negative cases"
    known = [c for c in CASES if c.get("known_miss")]
    assert all(c["expected"] == 1 for c in known), "a known miss is a false negative, never a tolerated false positive"
    assert len(known) <= 6


def corpus_agreement(cases, scores) -> tuple[float, list, list]:
    """(share of cases scored as expected, false positives, unexpected disagreements)."""
    agree = sum(s == c["expected"] for c, s in zip(cases, scores))
    false_positives = [(c["note"], c["gold"][:80], c["pred"][:80]) for c, s in zip(cases, scores) if c["expected"] == 0 and s == 1]
    wrong = [(c["note"], c["gold"][:80], c["pred"][:80], c["expected"], s) for c, s in zip(cases, scores) if s != c["expected"] and not c.get("known_miss")]
    return agree / len(cases), false_positives, wrong


def test_corpus_verdicts():
    start = time.perf_counter()
    scores = math_reward([completion_of(c) for c in CASES], answer=[c["gold"] for c in CASES])
    agreement, false_positives, wrong = corpus_agreement(CASES, scores)
    assert not false_positives, "\n".join(map(repr, false_positives))
    assert not wrong, "\n".join(map(repr, wrong))
    assert agreement >= MIN_AGREEMENT
    new = [(c, s) for c, s in zip(CASES, scores) if case_class(c) in NEW_CLASSES]
    assert corpus_agreement(*zip(*new))[0] >= MIN_AGREEMENT
    print(f"{len(CASES)} math cases in {time.perf_counter() - start:.1f} s, agreement {agreement:.1%}")


@pytest.mark.parametrize("pred, verdict", [
    ("5^{5^{5^{5^5}}}", "refused"),  # never parsed
    ("9**9**9**9", "pred_unparseable"),  # "999**9" after markdown bold is removed: the LaTeX grammar has no **
    ("__import__('os').system('id')", "pred_unparseable"),  # LaTeX only: never eval'ed
])
def test_hostile_answers_score_zero_without_running_to_the_deadline(pred, verdict, tmp_path):
    marker = tmp_path / "pwned"
    # hang guard: 0.2 ms / 11 ms / 83 ms measured, 1.3 s with the pool's start in a fresh process
    with hang_guard(30, "scoring a hostile answer"):
        out = math_reward([f"<answer>{pred.replace('id', 'touch ' + str(marker))}</answer>"], answer=["5"])
    assert out == [0.0] and out.metrics[f"{verdict}_frac"] == 1.0 and out.metrics["timeout_frac"] == 0.0
    assert not marker.exists()


def test_ten_megabytes_of_braces_scores_zero_and_only_the_tail_is_read(monkeypatch):
    seen = []
    for name in ("final_boxes", "last_answer_tag", "answer_phrase"):
        scan = getattr(rewards.extract, name)
        monkeypatch.setattr(rewards.extract, name, lambda text, _scan=scan: seen.append(len(text)) or _scan(text))
    text = GENERATED["unbalanced_braces_10mb"]()
    with hang_guard(30, "scoring 10 MB of braces"):  # hang guard: 2 ms measured
        out = math_reward([text], answer=["2"])
    assert out == [0.0] and out.metrics["no_answer_frac"] == 1.0  # the last box is never closed
    assert seen and max(seen) <= rewards.extract.MAX_SCAN_CHARS < len(text) // 100


def test_refusal_rules():
    assert refuse_reason("5^{5^{5^{5^5}}}") == "exponent tower"
    assert refuse_reason("2^{10}") is None and refuse_reason("x^2+y^2") is None
    assert refuse_reason("100000000!") == "huge factorial" and refuse_reason("2004!") is None
    assert refuse_reason("1" * 600).startswith("longer than")


def test_a_hanging_comparison_is_killed_and_the_pool_recovers():
    pool = MathVerifierPool(workers=1, timeout_s=1.0)
    try:
        # sympy expands both 2000th powers: far longer than the 1 s deadline
        with hang_guard(60, "a comparison past its 1 s deadline"):  # hang guard: 2.6 s measured (deadline + restart)
            verdicts = pool.compare_many([("(x+2)^{2000}", "(x+1)^{2000}"), ("1", "1.0")])
        assert verdicts == ["timeout", "equal"]  # killed at its deadline, and the next pair still answered
        assert pool.restarts == 1
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


def test_a_ctrl_c_in_the_terminal_does_not_kill_the_checker_mid_step():
    """Ctrl-C reaches the whole process group; the trainer finishes its step on it, so the
    checker workers must survive it and keep answering (docs/resume.md)."""
    import signal

    pool = MathVerifierPool(workers=1, timeout_s=30.0)
    try:
        pool.compare_many([("1", "1")])
        worker = pool._workers[0].process
        worker.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert worker.poll() is None, "the worker died on SIGINT"
        assert pool.compare_many([("\\frac{1}{2}", "0.5")]) == ["equal"] and pool.restarts == 0
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
    assert compare("\\infty", "\\infty") == "equal" and compare("28\\%", "28") == "equal"
    assert seen, "the spy saw nothing: the patch did not reach math-verify"
    assert all(re.fullmatch(r"[A-Za-z0-9.]+", t) for t in seen if isinstance(t, str)), [t for t in seen if not re.fullmatch(r"[A-Za-z0-9.]+", str(t))]


# ----------------------------------------------------------------------------- right answers written differently

SOLUTION = "Of the 8 marbles 6 are red, so the probability is $\\frac{6}{8}$; the answer is $\\boxed{\\frac{3}{4}}$."
# open-r1's `solution` column: a whole worked solution, usually longer than the 512 characters a CAS may see
LONG_SOLUTION = "Let $n$ be the number of students. " * 20 + "Then $3n + 2 = 2n + 9$, so $n = 7$, and the class has $\\boxed{7}$ students."
TWO_BOX_SOLUTION = "First $3 \\cdot 4 = \\boxed{12}$ apples. He eats 5 and buys 8, so he ends with $12 - 5 + 8 = \\boxed{15}$."


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("n = \\boxed{7}", LONG_SOLUTION),  # a worked solution as the gold: its last box
        ("She sold \\boxed{72} clips.", "48/2 = <<48/2=24>>24 clips in May.\n#### 72"),  # GSM8K's answer column
        ("\\boxed{\\frac{3}{4}}", SOLUTION),
        ("so \\boxed{0.75}", SOLUTION),
        ("He ends with \\boxed{15} apples.", TWO_BOX_SOLUTION),
        ("The limit is \\boxed{\\infty}", "\\infty"),
        ("It costs \\boxed{\\$15}.", "15"),
        ("About \\boxed{28} pct of them.", "28\\%"),
        ("The final answer is 28 percent.", "28\\%"),
        ("The final answer is $10,455$", "10455"),
        ("x = \\boxed{3} or x = \\boxed{5}", "3, 5"),
        ("\\boxed{3} and \\boxed{5}", "x=3 \\text{ or } x=5"),
        ("\\boxed{10{,}455}", "10455"),
        ("\\boxed{10\\,455}", "10455"),
        ("\\boxed{30°}", "30"),
        ("\\boxed{2 1/2}", "\\frac{5}{2}"),
    ],
)
def test_right_answers_written_differently_score_one(completion, gold):
    assert math_reward([completion], answer=[gold]) == [1.0]


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("\\boxed{-\\infty}", "\\infty"),
        ("\\boxed{15}", "\\$150"),
        ("\\boxed{\\$150}", "15"),
        ("\\boxed{\\frac{4}{3}}", SOLUTION),
        ("n = \\boxed{23}", LONG_SOLUTION),
        ("He has \\boxed{12} apples.", TWO_BOX_SOLUTION),  # the solution's earlier box is not its answer
        ("I first get 12, then remove 3. The final answer is 9.", "12"),  # a non-final number is never read
        ("\\boxed{3} and \\boxed{6}", "3, 5"),
        ("x = \\boxed{3}", "3, 5"),
        ("\\boxed{1}, \\boxed{2}, \\boxed{3}, \\boxed{4}, \\boxed{5}", "4"),  # candidates for a single-valued gold
        ("\\boxed{1}\n\\boxed{2}\n\\boxed{3}\n\\boxed{4}", "4"),
        ("The final answer is $12$ or $15$.", "12"),
        ("\\boxed{10\\,455}", "465"),  # latex2sympy alone reads 10 + 455
        ("\\boxed{2 1/2}", "\\frac{3}{2}"),  # latex2sympy alone reads (2 + 1)/2
        ("\\boxed{2 3}", "5"),  # latex2sympy alone reads 2 + 3
        ("\\boxed{28\\%}", "28"),
    ],
)
def test_wrong_answers_in_the_new_shapes_score_zero(completion, gold):
    assert math_reward([completion], answer=[gold]) == [0.0]


def test_open_r1_solution_column_is_the_gold_when_there_is_no_answer_column():
    """TRL passes every dataset column by name; open-r1's math sets carry the worked solution as `solution`."""
    completions = [[{"role": "assistant", "content": "<think>6/8</think> \\boxed{0.75}"}], [{"role": "assistant", "content": "\\boxed{\\frac{4}{3}}"}]]
    prompts = [[{"role": "user", "content": "p"}]] * 2
    out = math_reward(prompts=prompts, completions=completions, completion_ids=[[1], [2]], solution=[SOLUTION] * 2, problem=["p"] * 2)
    assert out == [1.0, 0.0]
    assert math_reward(["\\boxed{0.75}"], answer=["3/4"], solution=["\\boxed{7}"]) == [1.0]  # `answer` wins when both exist
    with pytest.raises(TypeError, match="answer"):
        math_reward(["\\boxed{1}"], problem=["p"])


def test_answer_phrase_metric():
    out = math_reward(["Final Answer: 7", "\\boxed{7}", "nothing"], answer=["7"] * 3)
    assert out == [1.0, 1.0, 0.0] and out.metrics["answer_phrase_frac"] == pytest.approx(1 / 3)


def test_the_math_reward_reading():
    assert final_answer_with_source("\\boxed{3} or \\boxed{5}.") == ("3, 5", "boxed")
    assert final_answer_with_source("x = \\boxed{3} or x = \\boxed{5}.") == ("x=3, x=5", "boxed")  # labels stay in a run
    assert final_answer_with_source("$x_1 = \\boxed{-1}$ and $x_2 = \\boxed{4}$") == ("x_1=-1, x_2=4", "boxed")
    assert final_answer_with_source("x = \\boxed{5}, y = \\boxed{3}") == ("x=5, y=3", "boxed")
    assert final_answer_with_source("\\boxed{3}. Checking again, it is \\boxed{5}") == ("5", "boxed")
    assert final_answer_with_source("\\boxed{\\boxed{5}}") == ("5", "boxed")
    assert final_answer_with_source("\\boxed{28} pct") == ("28", "boxed")  # text after a box is not read (a unit)
    assert final_answer_with_source("\\boxed{3} then \\boxed{4") == (None, None)  # the last box is unclosed
    assert final_answer_with_source("<answer>\\boxed{8}") == ("8", "boxed")
    assert final_answer_with_source("<answer>The final answer is 7</answer>") == ("7", "answer_tag")
    assert final_answer_with_source("The final answer is $10,455$. I hope it is correct.") == ("10,455", "answer_phrase")
    assert final_answer_with_source("So 3 boxes.\n**Answer:** 12 apples") == ("12 apples", "answer_phrase")
    assert final_answer_with_source("The final answer is $3$ and $5$.") == ("3, 5", "answer_phrase")
    assert final_answer_with_source("the answer is 12") == (None, None)  # a passing phrase is the fallback's job
    assert final_answer_with_source("the answer is 12", fallback="last_number") == ("12", "last_number")
    assert final_boxes("no box") is None


def test_gold_reading_and_cleaning():
    assert gold_answer(SOLUTION) == "\\frac{3}{4}" and gold_answer(LONG_SOLUTION) == "7" and len(LONG_SOLUTION) > 512
    assert gold_answer(TWO_BOX_SOLUTION) == "15"
    assert gold_answer("Factoring, the roots are $x = \\boxed{2}$ and $x = \\boxed{-3}$.") == "x=2, x=-3"
    assert gold_answer("48/2 = <<48/2=24>>24 clips.\n#### 72") == "72"
    assert gold_answer("x=3 \\text{ or } x=5") == "x=3 \\text{ or } x=5"
    assert gold_answer(42) == "42"
    assert clean_answer("\\$10,455") == "10455" and clean_answer("10{,}455") == "10455" and clean_answer("10\\,455") == "10455"
    assert clean_answer("10,45") == "10,45" and clean_answer("1,234 567") == "1,234 567"  # not one grouping: left alone
    assert clean_answer("15 \\text{ dollars}") == "15" and clean_answer("€20") == "20"
    assert clean_answer("30°") == "30" and clean_answer("30^{\\circ}") == "30" and clean_answer("100^\\circ C") == "100"
    assert clean_answer("28 percent") == "28\\%" and clean_answer("28%") == "28\\%" and clean_answer("28\\%") == "28\\%"
    assert clean_answer("2 1/2") == "2\\frac{1}{2}" and clean_answer("-2 1/3") == "-2\\frac{1}{3}"
    assert clean_answer("2 3") == "2, 3" and clean_answer("∞") == "\\infty"


def read_everything(text: str) -> None:
    """What the reward does with a completion or a gold: extract, then clean."""
    answer, _ = final_answer_with_source(text)
    gold = gold_answer(text)
    for s in (answer, gold, text):
        if s is not None:
            clean_answer(s)


@pytest.mark.parametrize("name", sorted(SCALED_READINGS))
def test_the_readings_are_linear_on_hostile_text(name, monkeypatch):
    """With the length cut-offs lifted (they bound the work; this checks the scanners and regexes under
    them on the whole text), x10 the text takes less than x30 the time: a quadratic scan takes about x100."""
    for cut_off in ("MAX_SCAN_CHARS", "MAX_CLEAN_CHARS", "MAX_GAP_CHARS", "MAX_PHRASE_CHARS"):
        monkeypatch.setattr(rewards.extract, cut_off, 10**9)
    make = SCALED_READINGS[name]
    n = assert_scales_linearly(read_everything, make, n=100)
    assert final_answer_with_source(make(n))[1] == final_answer_with_source(make(10 * n))[1]  # the same reading at both sizes


def test_last_answer_tag_equals_the_regex_and_is_linear():
    import random

    from rewards.extract import ANSWER_TAG, last_answer_tag

    rng = random.Random(0)
    parts = ["<answer>", "</answer>", "a", "b ", "<answer", "answer>", "</answer", "\n"]
    for _ in range(5000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 12)))
        found = ANSWER_TAG.findall(text)
        assert last_answer_tag(text) == (found[-1] if found else None), text
    assert last_answer_tag("<answer>" * 100_000) is None
    assert_scales_linearly(last_answer_tag, lambda n: "<answer>" * n, n=1000)
    with pytest.raises(AssertionError, match="not linear"):  # the control: the regex is quadratic on this
        assert_scales_linearly(lambda text: ANSWER_TAG.findall(text)[-1:], lambda n: "<answer>" * n, n=100)
