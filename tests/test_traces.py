"""Trace tools: detectors on hand-written completions, alarms, the reader, the CLI and the report."""

from __future__ import annotations

import json
import math
import tracemalloc

import pytest

from rl_reasoning import cli, traces
from rl_reasoning.traces import AlarmConfig, AlarmMonitor, Analyzer, step_statistics
from rl_reasoning.traces.detectors import find_verifications, is_degenerate, stated_answers
from rl_reasoning.traces.episodes import OUTCOMES, episode, is_multi_turn, outcome_of, split_completion
from rl_reasoning.traces.report import build_report
from tests.trace_fixture import AHA, retry_record, write_fixture_run, write_retry_fixture_run


def labels(text, **kw):
    return [s.label for s in traces.find_reflections(text, **kw)]


# --------------------------------------------------------------------------- reflection markers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 + 5 = 9. Wait, that is not right.", ["wait", "mistake"]),
        ("But wait. Let me re-check the sum.", ["wait", "let me check"]),
        ("WAIT a moment, 7 - 2 = 5", ["wait"]),
        ("Hmm, so 4 it is.", ["hmm"]),
        ("Let's double-check: 6 * 7 = 42", ["let me check"]),
        ("I made a mistake above; on second thought it is 12.", ["mistake", "on second thought"]),
        ("Actually, the answer is 3.", ["actually"]),
        ("double-checking gives the same.", ["double-check"]),
    ],
)
def test_reflection_markers_are_found(text, expected):
    assert labels(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The wait time at the bus stop is 5 minutes.",  # a word problem, not reflection
        "She had to wait for 3 hours, then 3 + 2 = 5.",
        "They will wait, then leave.",
        "The waiter brought 4 plates; awaiting 2 more.",  # word boundaries
        "Checkmate in 3 moves. Verification code 1234 is printed.",
        "The hummingbird ate 4 seeds.",
        "How long do they wait? Customers wait. Please wait.",
        "He actually has 3 apples.",
        "The rope is 5 hm long.",
    ],
)
def test_word_problem_sentences_are_not_reflection(text):
    assert labels(text) == []


def test_markers_are_configurable_and_word_boundary_aware():
    a = Analyzer(markers=["let me think", "oops"])
    assert [s.label for s in a("Oops. Let me   think again. Wait, no.").reflections] == ["oops", "let me think"]
    assert a("whoopsie").reflections == []
    extra = Analyzer(extra_markers=["retry"])
    assert [s.label for s in extra("Wait, retry: 2 + 2 = 4").reflections] == ["wait", "retry"]


def test_overlapping_markers_count_once():
    assert labels("Let me double-check this.") == ["let me check"]


def test_reflections_per_1k_tokens():
    assert traces.reflections_per_1k_tokens(3, 600) == pytest.approx(5.0)
    assert traces.reflections_per_1k_tokens(2, 0) == 0.0


# --------------------------------------------------------------------------- answers and revisions


def test_stated_answers_are_claims_not_intermediate_steps():
    assert [c.value for c in stated_answers("3 + 5 = 8, 8 * 2 = 16. <answer>16</answer>")] == ["16"]
    assert [c.value for c in stated_answers("So the answer is 12. Wait, the answer is 13.")] == ["12", "13"]
    assert [c.value for c in stated_answers("3 + 5 = 9. Wait, 3 + 5 = 8. \\boxed{8}")] == ["9", "8", "8"]  # the restated "3 + 5 = 8" is a claim too
    assert [c.value for c in stated_answers("The sum is 3 + 4 = 7")] == []  # "sum is 3" is the start of an expression
    assert [c.value for c in stated_answers("3 boxes with 4 pens, so 3 boxes × 4 = 12 pens. <answer>12</answer>")] == ["12"]
    assert [c.value for c in stated_answers("the answer is 3x + 4. hence 2x = 10")] == []
    assert [c.value for c in stated_answers("The answer is \\boxed{8}. Hmm, actually \\boxed{9}.")] == ["8", "9"]
    assert [c.value for c in stated_answers("So the answer is 8.</think> <answer>\\boxed{8}</answer>")] == ["8", "8"]
    assert [c.value for c in stated_answers("x = 5 so the answer is x = 5. <answer>5 apples</answer>")] == ["5"]


def test_hostile_text_does_not_hang_the_detectors():
    """A hang guard, not a speed test: before the fix, the first input backtracked as ~N^4 (hours);
    now each takes milliseconds. SIGALRM only fires on a catastrophic regression."""
    import signal

    def hung(*_):
        raise AssertionError("a detector regex backtracks catastrophically")

    previous = signal.signal(signal.SIGALRM, hung)
    try:
        for text in ("so" + " " * 20_000 + "x", "The answer is " + "8" * 50_000 + " + 8", "<answer>" * 10_000, "1=1 wait, " * 5_000):
            signal.alarm(60)
            a = traces.analyze(text)
            signal.alarm(0)
            assert a.revision is None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    "text, gold, kind",
    [
        (AHA, "8", "wrong_to_right"),
        ("<think>9 - 4 = 5. Hmm, actually the answer is 6.</think> <answer>6</answer>", "5", "right_to_wrong"),
        ("<think>9 - 4 = 3. Wait, 9 - 4 = 6.</think> <answer>6</answer>", "5", "wrong_to_wrong"),
        ("The answer is 1/2. Wait, the answer is 0.5. <answer>0.5</answer>", "0.5", None),  # same value, not a revision
        ("<think>3 + 5 = 8</think> <answer>8</answer>", "8", None),
        ("The answer is 12. On second thought the answer is 13.", None, "changed"),  # no gold to judge by
        ("So the answer is 8.</think> <answer>\\boxed{8}</answer>", "8", None),  # same answer, other presentation
    ],
)
def test_revision_classes(text, gold, kind):
    rev = traces.find_revision(text, gold)
    assert (rev.kind if rev else None) == kind


def test_revision_point_is_the_marker_between_the_two_answers():
    rev = traces.find_revision(AHA, "8")
    assert (rev.before.value, rev.after.value, rev.point.label) == ("9", "8", "wait")
    assert AHA[rev.point.start : rev.point.end] == "Wait"
    assert AHA[rev.before.start : rev.before.end] == "9"


def test_final_correctness_can_come_from_the_reward():
    # the gold answer "eight" does not match "8" textually, but the accuracy reward said correct
    rev = traces.find_revision(AHA, "eight", final_correct=True)
    assert rev.kind == "wrong_to_right"


def test_answers_match():
    assert traces.answers_match("7", "7.0") and traces.answers_match("14/2", "7") and traces.answers_match("1,000", "1000")
    assert traces.answers_match("Yes", "yes") and not traces.answers_match("7", "8") and not traces.answers_match(None, "8")


@pytest.mark.parametrize(
    "text, verified",
    [
        ("8 - 3 = 5. Let me verify: 5 + 3 = 8. Correct.", True),
        ("6 * 7 = 42. Check: 42 / 7 = 6 ✓", True),
        ("Let me check: 5 + 3 = 9, that is wrong, so 8.", False),  # the check found an error: a revision, not a verification
        ("3 + 5 = 8. So 8.", False),  # no check at all
        ("Let me check if this is correct. 3 * 4 = 13, which is not 12.", False),
        ("To check, 12 / 3 = 4, which is not 5", False),
    ],
)
def test_verification(text, verified):
    assert bool(find_verifications(text)) is verified


@pytest.mark.parametrize(
    "text, degenerate",
    [
        ("!" * 30, True),
        ("the answer the answer the answer the answer the answer the answer the answer the answer", True),
        ("ok 1 ok 1 ok 1 ok 1 ok 1 ok 1 ok 1 ok 1 ok 1", True),
        ("3 + 3 + 3 + 3 + 3 + 3 + 3 + 3 + 3 + 3 = 30", False),  # arithmetic, not a loop
        ("100000000000000000000000 and a rule: ------------------------", False),
        ("<think>3 + 5 = 8 and 8 - 1 = 7</think> <answer>7</answer>", False),
        ("a b c d e f g h i j k l m n o p", False),
    ],
)
def test_degenerate_text(text, degenerate):
    assert is_degenerate(text) is degenerate


def test_step_statistics_by_hand():
    a = Analyzer()
    items = [a(AHA, "8", True, 20), a("<think>8</think> <answer>8</answer>", "8", True, 10),
             a("Wait, 1. <answer>1</answer>", "8", False, 10), a("<answer>2</answer>", "8", False, 10)]
    s = step_statistics(items)
    assert s["traces/reflection_rate"] == 0.5
    assert s["traces/reflections_per_1k_tokens"] == pytest.approx(1000 * 3 / 50)  # "Wait" + "let me re-check" + "Wait"
    assert s["traces/revision/wrong_to_right"] == 0.25 and s["traces/aha_count"] == 1
    assert s["traces/accuracy_with_reflection"] == 0.5 and s["traces/accuracy_without_reflection"] == 0.5
    assert s["traces/mean_length"] == 12.5
    assert math.isnan(step_statistics([items[1]])["traces/accuracy_with_reflection"])


# --------------------------------------------------------------------------- alarms


def feed(monitor, rows):
    fired = []
    for step, row in enumerate(rows, 1):
        fired += monitor.update({"step": step, **row})
    return fired


def test_reward_hacking_alarm_fires_once_when_format_rises_and_accuracy_falls():
    rows = [{"format_rate": 0.1 * i, "accuracy": 0.6 - 0.03 * i} for i in range(10)]
    fired = feed(AlarmMonitor(AlarmConfig(window=6)), rows)
    assert [a.name for a in fired] == ["reward_hacking"]
    healthy = [{"format_rate": 0.1 * i, "accuracy": 0.3 + 0.03 * i} for i in range(10)]
    assert feed(AlarmMonitor(AlarmConfig(window=6)), healthy) == []


def test_code_runs_alarm_on_runnable_rate_and_on_fitting_the_shown_examples():
    # with a code reward, "format" is the runnable rate (the think/answer format rate stays 0)
    gaming = [{"format_rate": 0.0, "rewards/code/runnable_frac": 0.5 + 0.05 * i, "accuracy": 0.6 - 0.03 * i} for i in range(10)]
    assert [a.name for a in feed(AlarmMonitor(AlarmConfig(window=6)), gaming)] == ["reward_hacking"]
    fitting = [{"format_rate": 0.0, "rewards/code/examples_only_frac": 0.1 + 0.05 * i, "accuracy": 0.3} for i in range(10)]
    fired = feed(AlarmMonitor(AlarmConfig(window=6)), fitting)
    assert [a.name for a in fired] == ["examples_special_casing"] and "shown examples" in fired[0].message
    learning = [{"format_rate": 0.0, "rewards/code/examples_only_frac": 0.2, "rewards/code/runnable_frac": 0.9, "accuracy": 0.3 + 0.05 * i}
                for i in range(10)]
    assert feed(AlarmMonitor(AlarmConfig(window=6)), learning) == []


def test_collapse_alarms():
    rows = [{"entropy": 1.0, "groups/zero_std_frac": 0.2, "traces/degenerate_frac": 0.0}] * 3
    rows += [{"entropy": 0.05, "groups/zero_std_frac": 1.0, "traces/degenerate_frac": 0.8}] * 5
    names = [a.name for a in feed(AlarmMonitor(AlarmConfig(patience=5)), rows)]
    assert sorted(names) == ["all_equal_rewards", "entropy_collapse", "repetition_collapse"]
    assert names.count("repetition_collapse") == 1  # not re-fired every step


def test_alarms_rearm_after_clearing():
    rows = [{"traces/degenerate_frac": 0.9}, {"traces/degenerate_frac": 0.0}, {"traces/degenerate_frac": 0.9}]
    assert [a.step for a in feed(AlarmMonitor(), rows)] == [1, 3]


# --------------------------------------------------------------------------- reader


@pytest.fixture()
def run(tmp_path):
    return write_fixture_run(tmp_path / "run")


def test_load_filters_and_frame(run):
    assert sum(1 for _ in traces.load(run)) == 6 * 2 * 4
    assert {r["step"] for r in traces.load(run, steps=(2, 3))} == {2, 3}
    assert {r["step"] for r in traces.load(run, prompt_id="q-add")} == {1, 3, 5}
    assert all(r["correct"] for r in traces.load(run, correct=True))
    assert [s for s, _ in traces.iter_steps(run)] == [1, 2, 3, 4, 5, 6]
    assert len(list(traces.load(run, "eval"))) == 4
    frame = traces.load_frame(run, columns=["step", "reward"])
    assert list(frame.columns) == ["step", "reward"] and len(frame) == 48


def test_a_torn_last_line_is_skipped(run):
    with (run / "traces.jsonl").open("a") as f:
        f.write('{"step": 7, "completion": "cut sh')
    assert max(r["step"] for r in traces.load(run)) == 6


def test_reading_a_large_run_streams(tmp_path):
    run = tmp_path / "big"
    run.mkdir()
    record = {"prompt_id": "p", "completion": "<think>" + "x " * 200 + "</think> <answer>1</answer>", "answer": "1", "correct": True, "length": 210}
    with (run / "traces.jsonl").open("w") as f:
        for i in range(100_000):
            f.write(json.dumps({"step": i // 64 + 1, "group_index": i % 8, **record}) + "\n")
    size = (run / "traces.jsonl").stat().st_size
    tracemalloc.start()
    count = sum(1 for _ in traces.load(run))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 100_000
    assert peak < size / 50, f"peak {peak / 1e6:.1f} MB while reading a {size / 1e6:.0f} MB file"


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["traces", "summary", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


# --------------------------------------------------------------------------- CLI


def test_summary(run, capsys):
    assert cli.main(["traces", "summary", str(run), "--bucket", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| steps")]
    assert [r.split("|")[1].strip() for r in rows] == ["1–2", "3–4", "5–6"]
    last = [c.strip() for c in rows[-1].split("|")[1:-1]]
    assert last[1] == "16" and last[12] == "1"  # 16 completions, one aha
    assert "alarms: none" in out


def test_show_prints_the_group_side_by_side(run, capsys):
    assert cli.main(["traces", "show", str(run), "--step", "5", "--prompt", "q-add", "--width", "40", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "gold answer: '8'" in out and "#0" in out and "#3" in out and "adv +" in out
    assert any(line.count("│") >= 1 for line in out.splitlines())  # columns
    assert "⟦✗ 9⟧" in out and "⟦Wait⟧" in out


def test_show_lists_prompts_and_rejects_unknown_ones(run, capsys):
    assert cli.main(["traces", "show", str(run), "--step", "5"]) == 0
    assert "q-add" in capsys.readouterr().out
    assert cli.main(["traces", "show", str(run), "--step", "5", "--prompt", "nope"]) == 2
    assert "no completions at step 5" in capsys.readouterr().err


def test_show_aha(run, capsys):
    assert cli.main(["traces", "show", str(run), "--aha", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "'9' → '8' at “wait”" in out and "⟦✓ 8⟧" in out and "1 wrong→right revision(s) shown" in out


def test_grep_with_filters(run, capsys):
    assert cli.main(["traces", "grep", str(run), r"\bWait\b", "--steps", "5:5", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "2 matching completion(s)" in out
    assert cli.main(["traces", "grep", str(run), r"\bWait\b", "--steps", "5:5", "--correct"]) == 0
    assert "1 matching completion(s)" in capsys.readouterr().out
    assert cli.main(["traces", "grep", str(run), "answer", "--min-reward", "1.0"]) == 0
    assert "matching completion(s)" in capsys.readouterr().out
    assert cli.main(["traces", "grep", str(run), "(", "--steps", "1:2"]) == 2
    assert "bad pattern" in capsys.readouterr().err


def test_diff_between_two_steps(run, capsys):
    assert cli.main(["traces", "diff", str(run), "--prompt", "q-add", "--steps", "1", "5"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 4 | 25% |" in out and "| 5 | 4 | 75% |" in out and "--- step 1" in out
    assert cli.main(["traces", "diff", str(run), "--prompt", "q-add", "--steps", "1", "2"]) == 2
    assert "appears at steps [1, 3, 5]" in capsys.readouterr().err
    assert cli.main(["traces", "diff", str(run), "--split", "eval", "--prompt", "0", "--steps", "0", "6"]) == 0


def test_report_is_self_contained(run, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert cli.main(["report", str(run), "-o", str(out)]) == 0
    page = out.read_text()
    assert page.count("<img class=plot") >= 6 and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert page.count("<tr class=aha-row>") == 1 and "<mark class=point>Wait</mark>" in page
    assert "prompt q-add" in page and "step 5" in page and "id=eval-table" in page
    assert "6.000e+12" in page  # FLOPs summed from metrics


def test_report_recomputes_trace_metrics_for_runs_without_them(run, monkeypatch):
    """The fixture's metrics.jsonl has no traces/* keys: the plot is drawn from the traces, step by step."""
    import matplotlib.figure

    plotted = {}
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        for ax in fig.axes:
            plotted[ax.get_title()] = {line.get_label(): dict(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines()}
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    page = build_report(run)
    assert "Reflection and revision rates" in page
    rates = plotted["Reflection and revision rates"]
    # 8 completions a step. Step 5: AHA, RIGHT_TO_WRONG and WRONG_TO_WRONG reflect and revise, AHA from wrong to right;
    # step 6: VERIFIED checks its answer; "The wait time" (q-div, every step) is no reflection.
    assert rates["reflection rate"] == {1: 0, 2: 0, 3: 0, 4: 0, 5: 3 / 8, 6: 1 / 8}
    assert rates["revision rate"] == {1: 0, 2: 0, 3: 0, 4: 0, 5: 3 / 8, 6: 0}
    assert rates["wrong→right"] == {1: 0, 2: 0, 3: 0, 4: 0, 5: 1 / 8, 6: 0}
    assert rates["verification rate"] == {1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 1 / 8}


# --------------------------------------------------------------------------- multi-turn ("retry") episodes

FEEDBACK_3_5 = "That answer is wrong. Try again.\nWhat is 3 + 5?"


@pytest.fixture()
def retry_run(tmp_path):
    return write_retry_fixture_run(tmp_path / "retry")


def test_episode_view_of_a_record_with_turn_texts_and_feedback():
    ep = episode(retry_record("What is 3 + 5?", "8", [False, True], 2))
    assert ep.outcome == "fixed" and ep.separated and ep.verdicts == (False, True)
    assert [t.verdict for t in ep.turns] == [False, True]
    assert ep.turns[0].text == "<think>turn 1: What is 3 + 5?</think> <answer>9</answer>"
    assert ep.turns[1].text == "<think>turn 2: What is 3 + 5?</think> <answer>8</answer>"
    assert (ep.turns[0].feedback, ep.turns[1].feedback) == (FEEDBACK_3_5, None)


def test_old_records_get_their_turns_and_feedback_from_the_completion():
    new = retry_record("What is 3 + 5?", "8", [False, True], 2)
    old = retry_record("What is 3 + 5?", "8", [False, True], 2, old=True)
    assert "turn_texts" not in old and "feedback" not in old
    assert episode(old) == episode(new)
    without_feedback = {k: v for k, v in new.items() if k != "feedback"}  # turn_texts but no feedback (runs of early December)
    assert episode(without_feedback) == episode(new)
    # the model's own end-of-turn token closed turn 1 (decoded without special tokens): no <|im_end|> before the user turn
    closed = new["completion"].replace("<|im_end|>\n<|im_start|>user", "\n<|im_start|>user")
    assert split_completion(closed) == (new["turn_texts"], new["feedback"])
    assert split_completion("no scaffold here") == (["no scaffold here"], [])


REAL_FEEDBACK = ("That answer is wrong. Use the calculator now: write <tool>expression</tool> with the problem's numbers and its result "
                 "appears as <result>...</result>. Example: Calculate 47 - 85. <think>I use the calculator. <tool>47 - 85</tool>"
                 "<result>-38</result></think> <answer>-38</answer>\nCalculate {}.")


@pytest.mark.parametrize("completion, turn_texts, question", [
    # copied from a retry_2digit run (SmolLM2's chat template): turn 1 closed by the model's end-of-turn token ...
    ("<think>9</think>\n<|im_start|>user\n{feedback}<|im_end|>\n<|im_start|>assistant\n<think>2</think>",
     ["<think>9</think>", "<think>2</think>"], "6 - 1"),
    # ... and by the stop string </answer>, after which the scaffold writes <|im_end|> itself
    ("<think>30 - 64 = 12\n<answer>12</answer><|im_end|>\n<|im_start|>user\n{feedback}<|im_end|>\n<|im_start|>assistant\n"
     "<think>30 - 64 = 12\n<answer>12</answer>", ["<think>30 - 64 = 12\n<answer>12</answer>"] * 2, "30 - 64"),
])
def test_the_split_of_a_real_completion_gives_the_recorded_turn_texts(completion, turn_texts, question):
    feedback = REAL_FEEDBACK.format(question)
    assert split_completion(completion.format(feedback=feedback)) == (turn_texts, [feedback])


@pytest.mark.parametrize("verdicts, outcome", [
    ([True], "right_first"), ([False, True], "fixed"), ([False, False, True], "fixed"), ([False, False], "not_fixed"),
    ([False], "not_fixed"), ([], "unjudged"), ([True, False], "right_first"),
])
def test_outcome_from_the_verdicts(verdicts, outcome):
    assert outcome_of({"verdicts": verdicts}) == outcome


@pytest.mark.parametrize("bad", [
    {"verdicts": "yes"}, {"verdicts": [1, 0]}, {"verdicts": [None, True]}, {"verdicts": {"0": True}},
    {"turn_texts": "abc"}, {"turn_texts": [1, None]}, {"turn_texts": []}, {"turn_texts": ["\ud800"]}, {"turn_texts": [["a"]]},
    {"feedback": {"a": 1}}, {"feedback": [3]}, {"feedback": "x"}, {"turns": "2"}, {"turns": [2]}, {"turns": 10**30},
    {"turn_texts": ["a", "b", "c"], "verdicts": [False]}, {"turn_texts": ["a"], "verdicts": [False, True], "feedback": ["x", "y", "z"]},
    {"completion": None}, {"completion": 5}, {"completion": "a<|im_start|>user\n" * 1000},
])
def test_malformed_episode_fields_never_raise(bad):
    record = {"step": 1, "completion": "<think>x</think> <answer>1</answer>", "verdicts": [False, True], "turns": 2, **bad}
    ep = episode(record)
    assert ep.outcome in OUTCOMES and ep.turns
    assert all(isinstance(t.text, str) and t.verdict in (True, False, None) and (t.feedback is None or isinstance(t.feedback, str))
               for t in ep.turns)
    assert ep.turns[-1].feedback is None  # no feedback after the last turn
    from rl_reasoning.traces.cli import Highlighter, episode_lines

    assert episode_lines(record, Highlighter(color=False))[-1].startswith("outcome: ")


def test_malformed_fields_fall_back_to_what_the_record_shows():
    completion = "<think>x</think> <answer>1</answer>"
    ep = episode({"completion": completion, "turn_texts": [1, 2], "verdicts": [False, True], "turns": 2})
    assert [t.text for t in ep.turns] == [completion] and not ep.separated  # cannot be split: the whole completion
    assert ep.turns[0].verdict is None and ep.outcome == "fixed"  # two verdicts for one block: not pinned on it
    ep = episode({"completion": completion, "turn_texts": ["a", "b", "c"], "verdicts": [False, True], "feedback": ["f1"]})
    assert [(t.verdict, t.feedback) for t in ep.turns] == [(False, "f1"), (True, None), (None, None)]
    ep = episode({"completion": completion, "verdicts": [True], "turns": 1})  # single turn: the completion is the turn
    assert ep.separated and ep.turns[0].verdict is True and ep.outcome == "right_first"
    assert not is_multi_turn({"completion": completion, "verdicts": [], "turns": 1, "tool_calls": []})  # a tools-only record
    assert is_multi_turn({"verdicts": [True]}) and is_multi_turn({"verdicts": [], "turns": 2})


def test_show_prints_an_episode_turn_by_turn(retry_run, capsys):
    assert cli.main(["traces", "show", str(retry_run), "--step", "1", "--prompt", "q-add", "--width", "60", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "turn 1 ✗" in out and "turn 2 ✓" in out and "turn 2 ✗" in out
    assert "feedback: That answer is wrong. Try again. What is 3 + 5?" in out
    assert "outcome: wrong → fixed (verdicts ✗ → ✓)" in out and "outcome: wrong → not fixed" in out and "outcome: right at once" in out


def test_show_outcome_lists_the_episodes_of_one_outcome(retry_run, capsys):
    assert cli.main(["traces", "show", str(retry_run), "--outcome", "fixed", "--color", "never"]) == 0
    out = capsys.readouterr().out
    episodes = out.split("\n\n")[:-1]
    assert len(episodes) == 4 and out.endswith("4 episode(s) wrong → fixed shown\n")
    for text in episodes:
        lines = text.strip().splitlines()
        assert lines[1] == "turn 1 ✗" and lines[3].startswith("feedback: That answer is wrong.") and lines[4] == "turn 2 ✓"
        assert lines[-1] == "outcome: wrong → fixed (verdicts ✗ → ✓)"
    assert "step 2  prompt q-sub  #3" in out  # the old-style record (no turn_texts, no feedback) is split from its completion
    assert cli.main(["traces", "show", str(retry_run), "--outcome", "not-fixed", "--step", "1", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "2 episode(s) wrong → not fixed shown" in out and "wrong → fixed" not in out
    assert cli.main(["traces", "show", str(retry_run), "--step", "1", "--prompt", "q-add", "--outcome", "right_first", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "#2 ✓" in out and "#0" not in out and "#1" not in out and "#3" not in out
    assert cli.main(["traces", "grep", str(retry_run), "answer", "--outcome", "unjudged"]) == 0
    assert "step 2 prompt q-sub #2" in (out := capsys.readouterr().out) and "1 matching completion(s)" in out


@pytest.mark.parametrize("command", [["show", "--outcome", "fixd"], ["show", "--step", "1", "--prompt", "q-add", "--outcome", ""],
                                     ["grep", "x", "--outcome", "FIXED"]])
def test_a_bad_outcome_is_a_one_line_error(retry_run, capsys, command):
    assert cli.main(["traces", command[0], str(retry_run), *command[1:]]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "--outcome: expected one of right_first, fixed, not_fixed, unjudged" in captured.err


def test_show_makes_episode_text_terminal_safe(retry_run, capsys):
    record = {"step": 4, "prompt_id": "evil", "group_index": 0, "answer": "1", "completion": "x", "turns": 2, "verdicts": [False, True],
              "turn_texts": ["a\x1b[2Jb", "c\u202ed"], "feedback": ["\x1b]0;title\x07"]}
    with (retry_run / "traces.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    assert cli.main(["traces", "show", str(retry_run), "--outcome", "fixed", "--step", "4", "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert "a␛[2Jb" in out and "c\\u202ed" in out and "feedback: ␛]0;title\\x07" in out
    assert "\x1b[2J" not in out and "\x07" not in out and "\u202e" not in out


def test_report_shows_episodes_and_the_fix_rate_plot(retry_run, monkeypatch):
    import matplotlib.figure

    plotted = {}
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        for ax in fig.axes:
            plotted[ax.get_title()] = [(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    page = build_report(retry_run)
    lines = {label: dict(zip(x, y)) for label, x, y in plotted["Fix rate beside accuracy"]}
    # step 1: verdicts ✗✓, ✗✗, ✓, ✗ -> first turn 1/4, final turn 2/4, fixed 1 of 3 wrong first answers
    assert lines["first-turn accuracy"] == {1: 0.25, 2: 1 / 3, 3: 0.5}
    assert lines["final-turn accuracy"] == {1: 0.5, 2: 1.0, 3: 0.75}
    assert lines["fix rate (fixed / wrong first)"] == {1: 1 / 3, 2: 1.0, 3: 0.5}
    held = [dict(zip(x, y)) for _, x, y in plotted["Fix rate beside accuracy"] if x == [0, 3]]
    assert {0: 0.0, 3: 1.0} in held and {0: 0.5, 3: 0.5} in held  # held-out fix rate and first-turn accuracy
    assert "<h2 id=episodes>Multi-turn episodes</h2>" in page
    counts = {o: page.count(f"class='card episode out-{o} ") for o in OUTCOMES}
    assert counts == {"right_first": 4, "fixed": 4, "not_fixed": 3, "unjudged": 1}
    assert page.index("out-fixed ") < page.index("out-not_fixed ") < page.index("out-right_first ")  # "wrong → fixed" first
    old = page[page.index("step 2 · prompt q-sub · #3") :].split("class='card", 1)[0]  # the old-style record
    assert "turn 1 ✗ wrong" in old and "That answer is wrong. Try again.\nWhat is 9 - 4?" in old and "turn 2 ✓ right" in old
    assert "<script" not in page and "id=show-fixed" in page and "#show-fixed:checked~.episode-cards" in page


def test_report_has_no_episode_section_or_fix_plot_for_a_single_turn_run(run):
    page = build_report(run)
    assert "id=episodes" not in page and "Fix rate beside accuracy" not in page and "class='card episode" not in page


def test_report_episode_cards_are_capped_spread_and_escaped(tmp_path):
    from rl_reasoning.traces.report import MAX_EPISODES_PER_OUTCOME

    run = tmp_path / "many"
    run.mkdir()
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    with (run / "traces.jsonl").open("w") as f:
        for step in range(1, 41):
            record = retry_record("What is 3 + 5?", "8", [False, True], 2)
            record.update(turn_texts=[hostile, "8"], feedback=[hostile])
            f.write(json.dumps({"step": step, "prompt_id": "p", "group_index": 0, "answer": "8", **record}) + "\n")
    page = build_report(run)
    assert page.count("class='card episode out-fixed") == MAX_EPISODES_PER_OUTCOME < 40
    assert "step 1 · prompt p" in page and "step 40 · prompt p" in page  # spread over the run: first and last step
    assert "<script>alert" not in page and "<img src=x" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# --------------------------------------------------------------------------- a real (tiny) training run


def test_training_logs_trace_metrics_and_the_tools_read_the_run(tiny_model_dir, arithmetic_jsonl, tmp_path, capsys):
    from rl_reasoning.jsonl import read_records
    from tests.test_trainer import train

    run = tmp_path / "run"
    train(tiny_model_dir, arithmetic_jsonl, run, max_steps=2, traces__extra_reflection_markers="[the]")
    metrics = list(read_records(run / "metrics.jsonl"))
    for key in ("traces/reflection_rate", "traces/reflections_per_1k_tokens", "traces/revision_rate",
                "traces/revision/wrong_to_right", "traces/verification_rate", "traces/aha_count", "traces/degenerate_frac",
                "flops/step", "tokens/prompt", "tokens/trained"):
        assert key in metrics[0], key
    assert metrics[0]["alarms"] == [] and metrics[0]["flops/step"] > 0
    records = list(traces.load(run))
    assert len(records) == 2 * 2 * 4
    for key in ("extracted_answer", "reflections", "revision", "verified", "rewards"):
        assert key in records[0], key
    # the recorded analysis is the one the tools recompute
    a = Analyzer(extra_markers=["the"])
    for r in records:
        assert r["reflections"] == [s.label for s in a(r["completion"], r["answer"], r["correct"], r["length"]).reflections]
    evals = list(read_records(run / "eval.jsonl"))
    assert "eval/reflection_rate" in evals[0]

    assert cli.main(["traces", "summary", str(run), "--extra-marker", "the"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| steps")]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "2"]
    assert cli.main(["report", str(run)]) == 0
    assert (run / "report.html").stat().st_size > 10_000


def test_analysis_can_be_turned_off(tiny_model_dir, arithmetic_jsonl, tmp_path):
    from rl_reasoning.jsonl import read_records
    from tests.test_trainer import train

    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=1, traces__analyze="false")
    metrics = next(read_records(tmp_path / "run" / "metrics.jsonl"))
    assert not any(k.startswith("traces/") for k in metrics) and "alarms" not in metrics
