"""Trace tools: detectors on hand-written completions, alarms, the reader, the CLI and the report."""

from __future__ import annotations

import json
import math
import tracemalloc

import pytest

from rl_reasoning import cli, traces
from rl_reasoning.traces import AlarmConfig, AlarmMonitor, Analyzer, step_statistics
from rl_reasoning.traces.detectors import find_verifications, is_degenerate, stated_answers
from rl_reasoning.traces.report import build_report
from tests.trace_fixture import AHA, write_fixture_run


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
    assert [c.value for c in stated_answers("3 + 5 = 9. Wait, 3 + 5 = 8. \\boxed{8}")] == ["9", "8"]
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
