"""Problem sources, held-out disjointness and the resumable sampler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl_reasoning.config import DataConfig, PromptConfig
from rl_reasoning.errors import UserError
from rl_reasoning.prompts import R1ZERO_TEMPLATE, render_prompt
from rl_reasoning.tasks import PromptSampler, load_task


def test_reasoning_gym_held_out_is_disjoint_from_training():
    # A small problem space (1-digit sums) makes collisions between seeds certain.
    cfg = DataConfig(task="basic_arithmetic", task_config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"]},
                     train_size=300, eval_size=40, seed=3)
    data = load_task(cfg)
    held = {p["question"] for p in data.held_out}
    assert len(data.held_out) == 40
    sampler = PromptSampler(data, seed=0)
    served = [p["question"] for p in sampler.next_batch(600)]  # two epochs
    assert not held & set(served)
    collisions = sum(data.is_held_out(data.train[i]) for i in range(len(data.train)))
    assert collisions > 0  # the filter was actually needed
    first = data.train[0]
    assert set(first) >= {"question", "answer", "metadata", "task"}


def test_sampler_state_resumes_the_same_order(arithmetic_jsonl):
    data = load_task(DataConfig(source="jsonl", path=str(arithmetic_jsonl), eval_size=5))
    a = PromptSampler(data, seed=1)
    a.next_batch(30)
    state = a.state_dict()
    rest = [p["id"] for p in a.next_batch(20)]
    b = PromptSampler(data, seed=1)
    b.load_state_dict(state)
    assert [p["id"] for p in b.next_batch(20)] == rest


def test_jsonl_errors_name_file_row_and_column(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n" + json.dumps({"question": "2+2"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: column 'answer' is missing"):
        load_task(DataConfig(source="file", path=str(bad)))
    empty_q = tmp_path / "q.jsonl"
    empty_q.write_text(json.dumps({"question": " ", "answer": "2"}) + "\n")
    with pytest.raises(UserError, match=r"q.jsonl:1: column 'question' is empty"):
        load_task(DataConfig(source="jsonl", path=str(empty_q)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "1"}\n{not json\n')
    with pytest.raises(UserError, match=r"broken.jsonl:2: not valid JSON"):
        load_task(DataConfig(source="file", path=str(broken)))
    with pytest.raises(UserError, match="file not found"):
        load_task(DataConfig(source="file", path=str(tmp_path / "none.jsonl")))
    with pytest.raises(UserError, match="not one of .jsonl, .json, .csv, .parquet"):
        (tmp_path / "x.txt").write_text("hi")
        load_task(DataConfig(source="file", path=str(tmp_path / "x.txt")))
    with pytest.raises(UserError, match="reasoning-gym task 'no_such_task'"):
        load_task(DataConfig(task="no_such_task"))


def test_bad_rows_can_be_skipped_and_counted(tmp_path):
    path = tmp_path / "gsm.jsonl"
    rows = [{"question": "a", "answer": "x #### 1"}, {"question": "b", "answer": "no marker"}, {"question": "", "answer": "#### 3"},
            {"question": "d", "answer": "#### 4"}, {"answer": "#### 5"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"gsm.jsonl:2: column 'answer': no '#### <answer>' line"):
        load_task(DataConfig(source="file", path=str(path), answer_format="gsm8k", eval_size=0))
    data = load_task(DataConfig(source="file", path=str(path), answer_format="gsm8k", on_bad_row="skip", eval_size=0))
    assert data.skipped_rows == 3 and sorted(p["answer"] for p in data.train) == ["1", "4"]


DATA = Path(__file__).parent / "data"


def test_gsm8k_parquet_answers_are_extracted():
    data = load_task(DataConfig(source="file", path=str(DATA / "gsm8k_sample.parquet"), eval_size=2, seed=1))
    everything = list(data.train) + data.held_out
    assert len(everything) == 6 and len(data.held_out) == 2
    assert sorted(p["answer"] for p in everything) == sorted(["7", "1200", "30", "15", "5", "56"])
    assert not {p["question"] for p in data.held_out} & {p["question"] for p in data.train}


def test_math_parquet_boxed_answers_and_extra_columns():
    data = load_task(DataConfig(source="file", path=str(DATA / "math_sample.parquet"), eval_size=0))
    answers = {p["question"]: p["answer"] for p in data.train}
    assert answers["Simplify $\\frac{2}{4}$."] == "\\frac{1}{2}"
    assert answers["Find the set of roots of $x^2=1$."] == "\\{-1, 1\\}"
    assert all("level" in p and "type" in p for p in data.train)  # passed through to rewards


def test_csv_and_json_with_column_mapping():
    csv_data = load_task(DataConfig(source="file", path=str(DATA / "problems.csv"), eval_size=0))
    assert {p["question"]: p["answer"] for p in csv_data.train}["What is 3 + 3?"] == "6"
    json_data = load_task(DataConfig(source="file", path=str(DATA / "problems.json"), question_column="q", answer_column="a", eval_size=0))
    assert {p["question"]: p["answer"] for p in json_data.train}["What is 3 * 3?"] == "9"
    with pytest.raises(UserError, match="no column 'nope' for the question"):
        load_task(DataConfig(source="file", path=str(DATA / "problems.json"), question_column="nope", eval_size=0))


def test_reasoning_gym_mixture_is_weighted_and_deterministic():
    cfg = DataConfig(mixture=[{"task": "basic_arithmetic", "weight": 3, "config": {"max_digits": 1}}, {"task": "leg_counting", "weight": 1}],
                     train_size=400, eval_size=10)
    data = load_task(cfg)
    tasks = [data.train[i]["task"] for i in range(400)]
    share = tasks.count("basic_arithmetic") / 400
    assert 0.65 < share < 0.85 and "leg_counting" in tasks
    assert [load_task(cfg).train[i]["question"] for i in range(20)] == [data.train[i]["question"] for i in range(20)]
    with pytest.raises(UserError, match=r"data.mixture\[0\]"):
        load_task(DataConfig(mixture=[{"name": "x"}]))


def test_humaneval_source():
    data = load_task(DataConfig(source="humaneval", eval_size=20))
    assert len(data.train) + len(data.held_out) == 164
    p = data.held_out[0]
    assert p["entry_point"] in p["prompt"] and "def check" in p["test"] and p["prompt"] in p["question"]


def test_prompt_templates(tiny):
    _, tok = tiny
    chat = render_prompt(tok, "What is 2+2?", PromptConfig(system_prompt="Be brief.", prefill="<think>"))
    assert chat.startswith("<|im_start|>system\nBe brief.<|im_end|>") and chat.endswith("<|im_start|>assistant\n<think>")
    raw = render_prompt(tok, "What is 2+2?", PromptConfig(template="r1zero", prefill="<think>"))
    assert raw == R1ZERO_TEMPLATE.format(question="What is 2+2?") + " <think>"
    custom = render_prompt(tok, "2+2", PromptConfig(template="Q: {question}\nA:"))
    assert custom == "Q: 2+2\nA:"


def test_train_size_caps_a_file_source_at_the_first_shuffled_rows(arithmetic_jsonl):
    """data.train_size works for files (and every other source): the first rows of the seeded shuffle."""
    full = load_task(DataConfig(source="file", path=str(arithmetic_jsonl), eval_size=5))
    capped = load_task(DataConfig(source="file", path=str(arithmetic_jsonl), eval_size=5, train_size=7))
    assert len(full.train) == 35 and list(capped.train) == list(full.train)[:7]
    assert capped.held_out == full.held_out
