"""Untrusted input (issue #18): model text in the terminal and the report, bad run files, recipes and data.

Each test builds the hostile input by hand and checks what the user sees: escaped text, a
skipped-and-counted record, or a one-line error (exit 2) raised before the model loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rl_reasoning import cli
from rl_reasoning.config import DataConfig, load_config
from rl_reasoning.errors import ConfigError, UserError
from rl_reasoning.tasks import load_task
from rl_reasoning.traces.report import build_report
from rl_reasoning.untrusted import shorten, terminal_safe
from tests.trace_fixture import AHA, write_fixture_run

XSS = '<img src=x onerror="document.title=\'X\'">'
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\u202eevil\rcr\x9b31m"


@pytest.fixture()
def run(tmp_path):
    return write_fixture_run(tmp_path / "run")


def append(path: Path, *records) -> None:
    with path.open("ab") as f:
        for r in records:
            f.write(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode())


def one_line_error(capsys, *names: str) -> str:
    """What a command that exited 2 printed: one `error: ...` line (after any warnings) naming each of `names`, no traceback."""
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err[-2000:]
    lines = err.splitlines()
    assert lines and lines[-1].startswith("error: ") and all(line.startswith("warning: ") for line in lines[:-1]), err[:2000]
    for name in names:
        assert name in lines[-1], (name, lines[-1])
    return lines[-1]


def trace(step=1, **fields):
    return {"step": step, "prompt_id": "q-add", "group_index": 0, "completion": "<answer>8</answer>", "answer": "8", "reward": 1.0,
            "correct": True, "length": 3, **fields}


# --------------------------------------------------------------------------- 1. the HTML report


def test_report_escapes_every_field_and_forbids_script(run):
    # step as text is a malformed record (skipped); every other text field carries markup
    append(run / "eval_traces.jsonl", {"step": XSS, "problem": 0, "completion": "x", "answer": "1", "correct": False})
    append(run / "traces.jsonl", trace(step=6, prompt_id=XSS, answer=XSS, question=XSS, completion=f"{XSS}</pre></textarea><script>alert(1)</script>"))
    append(run / "metrics.jsonl", {"step": XSS, "reward/mean": 1.0})
    (run / "config.yaml").write_text(f"name: '{XSS}'\n")
    page = build_report(run)
    assert "<img src=x" not in page and "<script" not in page and "onerror=\"" not in page
    assert "&lt;img src=x onerror=" in page  # shown, as text
    csp = re.search(r'<meta http-equiv=Content-Security-Policy content="([^"]+)">', page).group(1)
    assert "default-src 'none'" in csp and "script-src" not in csp and "img-src data:" in csp
    assert page.index("Content-Security-Policy") < page.index("<title>")  # in force before anything else is parsed


def test_report_step_axes_tick_at_whole_steps(run, monkeypatch):
    import matplotlib.figure

    ticks = []
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks.extend(t for t in ax.get_xticks() if lo <= t <= hi)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(metrics[:3]) + "\n")  # 3 steps: matplotlib alone ticks at 1.0, 1.25, 1.5, ...
    build_report(run)
    assert ticks and all(float(t).is_integer() for t in ticks), sorted(set(ticks))


def test_report_size_is_bounded(run):
    huge_line = "7" * 1_000_000
    tall = "\n".join(f"line {i}" for i in range(50_000))
    append(run / "traces.jsonl", trace(step=6, completion=huge_line), trace(step=6, completion=tall, group_index=1))
    append(run / "eval_traces.jsonl", {"step": 6, "problem": 0, "completion": tall, "answer": huge_line, "question": huge_line, "correct": False})
    page = build_report(run)
    plain = build_report(write_fixture_run(run.parent / "plain"))
    assert len(page) < len(plain) + 60_000, f"{len(page) - len(plain):,} bytes added by two huge completions"
    assert page.count("\n") < plain.count("\n") + 400
    assert "characters" in page and "left out" in page and "rl-reasoning traces show RUN --step 6 --prompt q-add" in page


def test_shorten_keeps_head_and_tail_within_budget():
    text = "".join(f"{i}\n" for i in range(10_000))
    short, note = shorten(text, 600, 30)
    assert short.startswith("0\n1\n") and short.rstrip().endswith("9999") and note in short
    assert len(short) < 600 + len(note) + 2 and short.count("\n") <= 32
    assert shorten("abc", 10, 2) == ("abc", "")
    one_line, _ = shorten("x" * 5000 + "END", 300, 10)
    assert one_line.startswith("x" * 100) and one_line.endswith("END") and len(one_line) < 400


# --------------------------------------------------------------------------- 2. the terminal


def test_terminal_safe_shows_controls_and_keeps_layout():
    assert terminal_safe("a\x1b[2Jb") == "a␛[2Jb"
    assert terminal_safe("x\u202ey\u2066z\x07\r\x9b") == "x\\u202ey\\u2066z\\x07\\x0d\\x9b"
    assert terminal_safe("line 1\n\tline 2 ✓ — é") == "line 1\n\tline 2 ✓ — é"


@pytest.mark.parametrize("argv", [
    ["traces", "show", "RUN", "--step", "6", "--prompt", "q-mul", "--color", "never"],
    ["traces", "show", "RUN", "--step", "6", "--color", "never"],
    ["traces", "show", "RUN", "--aha", "--color", "always"],
    ["traces", "grep", "RUN", "pwned", "--color", "always"],
    ["traces", "diff", "RUN", "--prompt", "q-mul", "--steps", "3", "6"],
])
def test_traces_commands_never_print_control_characters(run, capsys, argv):
    hostile = f"<think>3 + 5 = 9. {ESCAPES} Wait, let me re-check: 3 + 5 = 8.</think> <answer>8</answer>"
    lines = (run / "traces.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for r in records:
        if r["step"] in (4, 5, 6):
            r["completion"] = hostile
            r["question"] = f"What {ESCAPES}?"
    (run / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert cli.main([str(run) if a == "RUN" else a for a in argv]) == 0
    out = capsys.readouterr().out
    own_colours = re.sub(r"\x1b\[[0-9;]*m(?=[^\x1b]{0,40}\x1b\[0m)|\x1b\[0m", "", out)  # the highlighter's SGR codes only
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", own_colours), repr(own_colours[:400])
    assert "␛" in out  # the hostile text was printed, visibly


def test_error_messages_are_terminal_safe(tmp_path, capsys):
    name = tmp_path / "run\x1b]0;x\x07"
    assert cli.main(["traces", "summary", str(name)]) == 2
    err = one_line_error(capsys, "␛]0;x\\x07")
    assert "\x1b" not in err and "\x07" not in err


# --------------------------------------------------------------------------- 3. invalid UTF-8


def test_invalid_utf8_in_run_files_is_skipped_with_one_warning(run, capsys):
    append(run / "traces.jsonl", b'{"step": 6, "completion": "\xff\xfe wait", "prompt_id": "q"}\n', trace(step=6, completion="wait, recount"))
    append(run / "metrics.jsonl", b"\xc3\x28 not utf-8\n")
    assert cli.main(["traces", "grep", str(run), "(?i)wait"]) == 0
    out, err = capsys.readouterr()
    assert "recount" in out  # the good line after the bad one is still read
    assert err.count("warning:") == 1 and "skipped 1 malformed line(s) (first at line 49: invalid UTF-8)" in err
    build_report(run)
    assert "metrics.jsonl: skipped 1" in capsys.readouterr().err


def test_invalid_utf8_in_a_recipe_is_a_one_line_error(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_bytes(b"max_steps: 3\nname: caf\xe9\n")
    assert cli.main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {recipe}:2: not valid UTF-8 (byte 0xe9 at column 10)"


def test_invalid_utf8_in_data_names_the_line_or_is_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"question": "1+1", "answer": "2"}\n{"question": "caf\xe9", "answer": "3"}\n{"question": "2+2", "answer": "4"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 18\)"):
        load_task(DataConfig(source="file", path=str(path), eval_size=0))
    data = load_task(DataConfig(source="file", path=str(path), eval_size=0, on_bad_row="skip"))
    assert data.skipped_rows == 1 and [p["answer"] for p in data.train] == ["2", "4"]


# --------------------------------------------------------------------------- 4. YAML alias bombs


def alias_bomb(levels: int = 9) -> str:
    text = "lol: &l0 [x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, levels):
        text += f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n"
    return text


def test_yaml_alias_bomb_in_a_recipe_is_refused_before_it_is_built(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("data:\n  source: reasoning_gym\n  name: *l8\n".replace("data:", alias_bomb() + "data:"))
    with pytest.raises(ConfigError, match=r"aliases \(\*name\) expand to more than 100,000 values"):
        load_config(recipe)
    with pytest.raises(ConfigError, match="override data.name: aliases"):
        load_config(None, ["data.name=" + "{" + alias_bomb().replace("\n", ", ").rstrip(", ") + "}"])
    with pytest.raises(ConfigError, match="refers to the value that contains it"):
        load_config(None, ["data.name=&a [1, *a]"])


def test_ordinary_anchors_still_work(tmp_path):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text("rollout: {max_new_tokens: &n 48}\neval: {max_new_tokens: *n}\n")
    cfg = load_config(recipe)
    assert cfg.rollout.max_new_tokens == cfg.eval.max_new_tokens == 48


# --------------------------------------------------------------------------- 5. checked before the model loads


@pytest.fixture()
def no_model_load(monkeypatch):
    import rl_reasoning.trainer as trainer

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(trainer, "load_model", refuse)


def recipe(tmp_path, data_path, rewards="[{name: format}]") -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"data: {{source: jsonl, path: '{data_path}', eval_size: 4}}\nrewards: {rewards}\n")
    return str(path)


def test_output_dir_that_is_a_file_fails_before_the_model_loads(tmp_path, arithmetic_jsonl, no_model_load, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    for out, expected in ((blocker, "is a file, not a directory"), (blocker / "run", "is a file, so the directory cannot be created")):
        argv = ["train", recipe(tmp_path, arithmetic_jsonl), f"output_dir={out}"]
        assert cli.main(argv) == 2
        one_line_error(capsys, str(blocker), expected)
        assert blocker.read_text() == "not a directory"  # left as it was


@pytest.mark.parametrize("name, expected", [
    ("os:system", "is not a reward function (signature (command)"),
    ("builtins:print", "is not a reward function"),
    ("math:sqrt", "is not a reward function"),
    ("tests.reward_fns:completions_second", "takes `completions` as a later parameter"),
    ("builtins:len", "is not a reward function"),
])
def test_a_callable_that_is_not_a_reward_fails_before_the_model_loads(tmp_path, arithmetic_jsonl, no_model_load, capsys, name, expected):
    argv = ["train", recipe(tmp_path, arithmetic_jsonl, f"[{{name: '{name}'}}, {{name: format}}]"), f"output_dir={tmp_path / 'r'}",
            "accuracy_reward=format"]
    assert cli.main(argv) == 2
    one_line_error(capsys, name, expected)


def test_a_decorated_reward_without_functools_wraps_is_still_a_reward():
    from rl_reasoning.config import RewardSpec
    from rl_reasoning.reward_runner import RewardRunner

    runner = RewardRunner([RewardSpec("tests.reward_fns:decorated_char_variety", 1.0, {})], [1.0])
    runner.check_columns(["question", "answer"], "the data")
    assert runner(["ab", "aa"], {"answer": ["1", "2"]}, ["p", "p"], step=0).total.tolist() == pytest.approx([2 / 3, 1 / 3])


def test_a_reward_needing_a_column_the_data_lacks_fails_before_the_model_loads(tmp_path, arithmetic_jsonl, no_model_load, capsys):
    argv = ["train", recipe(tmp_path, arithmetic_jsonl, "[{name: 'tests.reward_fns:needs_difficulty'}, {name: format}]"), f"output_dir={tmp_path / 'r'}",
            "accuracy_reward=format"]
    assert cli.main(argv) == 2
    one_line_error(capsys, "tests.reward_fns:needs_difficulty", "needs 'difficulty', which the data does not have (its columns: answer, question")



# --------------------------------------------------------------------------- 6. data rows that are not objects


@pytest.mark.parametrize("line, kind", [("42", "int"), ("[1, 2]", "list"), ("null", "NoneType"), ('"text"', "str")])
def test_data_rows_that_are_not_objects(tmp_path, line, kind):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "1+1", "answer": "2"}\n' + line + '\n{"question": "2+2", "answer": "4"}\n')
    with pytest.raises(UserError, match=rf"d.jsonl:2: a JSON {kind}, not an object"):
        load_task(DataConfig(source="file", path=str(path), eval_size=0))
    data = load_task(DataConfig(source="file", path=str(path), eval_size=0, on_bad_row="skip"))
    assert data.skipped_rows == 1 and len(data.train) == 2


# --------------------------------------------------------------------------- 7. malformed run records


def test_malformed_run_records_are_skipped_and_counted(run, capsys):
    append(run / "traces.jsonl", trace(step=6, reward="high"), trace(step=6, completion=None), trace(step="6"), b"42\n", b"[[[[[[[[[[[[" * 10000 + b"\n")
    append(run / "eval_traces.jsonl", {"step": 6, "problem": 0, "completion": None, "answer": "1", "correct": False})
    append(run / "metrics.jsonl", {"step": 7, "reward/mean": "1.0"})
    (run / "summary.json").write_text(json.dumps({"model_parameters": "135M", "steps": "x"}))
    page = build_report(run)
    err = capsys.readouterr().err
    assert "traces.jsonl: skipped 5 malformed line(s) (first at line 49: 'reward' is not a number)" in err
    assert "eval_traces.jsonl: skipped 1" in err and "metrics.jsonl: skipped 1" in err
    assert "model parameters" not in page  # the text value is ignored, not formatted
    summary = traces_output(capsys, "summary", str(run))
    assert all(f"\n| {step} | 8 |" in summary for step in range(1, 7))  # every good record of every step is still read
    assert "#3 ✗ reward 0.5" in traces_output(capsys, "show", str(run), "--step", "6", "--prompt", "q-mul")
    assert traces_output(capsys, "grep", str(run), "x").endswith("0 matching completion(s)\n")
    assert "| 6 | 4 | 75% |" in traces_output(capsys, "diff", str(run), "--prompt", "q-mul", "--steps", "3", "6")
    assert "\n| 6 | 2 | – | 100% |" in traces_output(capsys, "summary", str(run), "--split", "eval")


def traces_output(capsys, *argv: str) -> str:
    """stdout of a `traces` command that must succeed (exit 0, no traceback)."""
    assert cli.main(["traces", *argv]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return out


def test_compare_refuses_files_that_are_not_results(tmp_path, capsys):
    good = {"model": "m", "task": "t", "metrics": {"accuracy": 0.5}, "per_problem": [{"question": "q", "correct": True}]}
    (tmp_path / "a.json").write_text(json.dumps(good))
    (tmp_path / "b.json").write_text(json.dumps({**good, "per_problem": [42]}))
    (tmp_path / "c.json").write_bytes(b"\xff\xfe{}")
    for other, expected in (("b.json", "is not a result written by `rl-reasoning eval`"), ("c.json", "cannot read")):
        assert cli.main(["eval", "--compare", str(tmp_path / "a.json"), str(tmp_path / other)]) == 2
        one_line_error(capsys, str(tmp_path / other), expected)


def test_numbers_too_large_for_a_float_and_lone_surrogates_are_malformed(run, capsys):
    big = 10**400
    append(run / "traces.jsonl", trace(step=6, reward=big), trace(step=big), trace(step=6, advantage=-big),
           b'{"step": 6, "prompt_id": "q-mul", "completion": "wait \\ud800 x", "reward": 1.0}\n')
    append(run / "metrics.jsonl", {"step": 7, "accuracy": big})
    append(run / "eval.jsonl", {"step": 7, "eval/accuracy": big})
    build_report(run)
    err = capsys.readouterr().err
    assert "traces.jsonl: skipped 4 malformed line(s)" in err and "metrics.jsonl: skipped 1" in err and "eval.jsonl: skipped 1" in err
    assert all(f"\n| {step} | 8 |" in traces_output(capsys, "summary", str(run)) for step in range(1, 7))  # nothing good lost
    assert traces_output(capsys, "grep", str(run), "wait").endswith("3 matching completion(s)\n")  # q-div at steps 2, 4, 6
    assert "q-mul  (4 completions)" in traces_output(capsys, "show", str(run), "--step", "6")
    assert terminal_safe("a\ud800b") == "a\\ud800b"


def test_data_rows_with_a_lone_surrogate_are_bad_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "1+1", "answer": "2"}\n{"question": "What is 1+1? \\ud800", "answer": "2"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: text with a lone surrogate"):
        load_task(DataConfig(source="file", path=str(path), eval_size=0))
    assert load_task(DataConfig(source="file", path=str(path), eval_size=0, on_bad_row="skip")).skipped_rows == 1


def test_a_partly_read_file_still_warns_once(run, capsys):
    lines = (run / "traces.jsonl").read_text().splitlines(keepends=True)
    first_of_step_4 = next(i for i, line in enumerate(lines) if json.loads(line)["step"] == 4)
    lines.insert(first_of_step_4, "not json\n")  # seen by both reads below; the second also sees the last one
    (run / "traces.jsonl").write_text("".join(lines) + "not json either\n")
    assert cli.main(["traces", "diff", str(run), "--prompt", "q-mul", "--steps", "3", "6"]) == 0
    assert capsys.readouterr().err.count("warning:") == 1


def test_compare_output_is_terminal_safe(tmp_path, capsys):
    hostile = {"model": "m\x1b]0;pwned\x07\x1b[2J", "task": "t\u202e", "metrics": {"accuracy": 0.5, "evil\x1b[31m_rate": 0.1},
               "per_problem": [{"question": "q", "correct": True}]}
    (tmp_path / "a.json").write_text(json.dumps(hostile))
    assert cli.main(["eval", "--compare", str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "␛]0;pwned" in out
    (tmp_path / "b.json").write_text(json.dumps({**hostile, "metrics": {"accuracy": 10**400}}))
    assert cli.main(["eval", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    one_line_error(capsys, str(tmp_path / "b.json"), "'metrics' is not an object of numbers")


def test_report_quotes_the_command_it_suggests_and_refuses_symlinks(run, tmp_path, capsys):
    append(run / "traces.jsonl", trace(step=6, prompt_id="q-add $(touch /tmp/pwned)", completion="y " * 5_000 + AHA))  # a long "aha" row
    page = build_report(run)
    assert "--prompt &#x27;q-add $(touch /tmp/pwned)&#x27;" in page and "--prompt q-add $(" not in page
    secret = tmp_path / "secret.env"
    secret.write_text("SECRET_TOKEN=abc123\n")
    (run / "config.yaml").unlink()
    (run / "config.yaml").symlink_to(secret)
    assert cli.main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 2
    one_line_error(capsys, "config.yaml is a symbolic link")
    assert not (tmp_path / "r.html").exists()


def test_a_run_file_that_is_a_directory_is_a_one_line_error(run, capsys):
    (run / "traces.jsonl").unlink()
    (run / "traces.jsonl").mkdir()
    for argv in (["report", str(run)], ["traces", "grep", str(run), "x"]):
        assert cli.main(argv) == 2
        one_line_error(capsys, f"{run / 'traces.jsonl'}: not a regular file")


def test_report_alarm_list_is_capped(run, monkeypatch):
    from rl_reasoning.traces import report
    from rl_reasoning.traces.alarms import Alarm

    monkeypatch.setattr(report, "alarms_from_metrics", lambda metrics: [Alarm(i, "entropy_collapse", "low") for i in range(10_000)])
    page = build_report(run)
    assert page.count("<li class=alarm>") == report.MAX_ALARMS and "10000 alarms fired" in page


def test_huge_integers_and_nul_bytes_in_a_recipe_fail_before_the_model_loads(tmp_path, arithmetic_jsonl, no_model_load, capsys):
    for override, expected in (("max_steps=" + "9" * 5000, "max_steps: an integer of thousands of digits is out of range"),
                               ("optim.lr=" + "9" * 5000, "optim.lr: must be a finite number"),
                               ("output_dir=a\x00b", "output_dir: contains a NUL character")):
        assert cli.main(["train", recipe(tmp_path, arithmetic_jsonl), override]) == 2
        one_line_error(capsys, expected)
