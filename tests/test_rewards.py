"""Reward functions, answer extraction, the registry and the runner's checks."""

from __future__ import annotations

import pytest
import torch

import rewards
from rewards.extract import extract_answer, last_boxed
from rewards.format import format_reward, is_well_formatted
from rewards.math import math_reward
from rewards.reasoning_gym import reasoning_gym_reward
from rl_reasoning.config import RewardSpec
from rl_reasoning.errors import ConfigError, RewardError
from rl_reasoning.reward_runner import RewardRunner


def test_extraction_prefers_last_box_then_answer_tag():
    assert extract_answer("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("<answer> 7 </answer> and later <answer>8</answer>") == "8"
    assert extract_answer("<answer>\\boxed{5}</answer>") == "5"
    assert extract_answer("the answer is 12") is None
    assert extract_answer("the answer is 1,200.", fallback="last_number") == "1200"
    assert last_boxed("\\boxed{a{b}c") is None
    with pytest.raises(ValueError):
        extract_answer("x", fallback="first_word")


def test_format_reward_strict_and_tag_count():
    good = "<think>3 + 4 = 7</think>\n<answer>7</answer>"
    assert format_reward([good, "7", "<think>x</think> 7"]) == [1.0, 0.0, 0.0]
    assert format_reward([good, "<think>x</think> 7", "<answer>7</answer><answer>8</answer>"], mode="tag_count") == [1.0, 0.5, 0.0]
    assert not is_well_formatted("<think>a</think><answer>1</answer> extra text")
    assert not is_well_formatted("<think><think>a</think><answer>1</answer>")
    # chat-message completions (TRL's conversational format)
    assert format_reward([[{"role": "assistant", "content": good}]]) == [1.0]


def test_math_reward_symbolic_and_unparseable_gold():
    out = math_reward(
        ["<answer>\\frac{1}{2}</answer>", "<answer>0.5</answer>", "<answer>2</answer>", "no answer", "\\boxed{x+1}"],
        answer=["0.5", "1/2", "3", "3", "1+x"],
    )
    assert out == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert math_reward(["<answer>1</answer>"], answer=["\\frac{"]) == [None]


def test_reasoning_gym_reward_uses_the_task_verifier():
    meta = {"source_dataset": "basic_arithmetic"}
    out = reasoning_gym_reward(
        ["<answer>7</answer>", "<answer>8</answer>", "it is 7", "it is 7"],
        answer=["7"] * 4,
        metadata=[meta] * 4,
        question=["Calculate 3 + 4."] * 4,
    )
    assert out[:3] == [1.0, 0.0, 0.0]
    assert reasoning_gym_reward(["it is 7"], answer=["7"], task=["basic_arithmetic"], fallback="last_number") == [1.0]


def test_registry_dotted_path_and_unknown_name():
    assert rewards.get_reward("format") is format_reward
    assert rewards.get_reward("rewards.math:math_reward") is math_reward
    assert rewards.get_reward("rewards.math.math_reward") is math_reward
    with pytest.raises(rewards.UnknownRewardError) as err:
        rewards.get_reward("accuracy")
    assert "valid names: code, env_reward, format, length, math, reasoning_gym, repetition, tool_errors" in str(err.value)
    with pytest.raises(rewards.UnknownRewardError, match="cannot import module"):
        rewards.get_reward("no_such_pkg.mod:fn")


def test_runner_weights_columns_and_none():
    runner = RewardRunner(
        [RewardSpec("format"), RewardSpec("tests.reward_fns:skips_odd")], weights=[2.0, 1.0]
    )
    completions = ["<think>a</think><answer>1</answer>", "x", "<think>b</think><answer>2</answer>", "yy"]
    result = runner(completions, {"answer": ["1", "2", "3", "4"]}, prompts=["p"] * 4, step=1)
    fmt = result.components["format"]
    skips = result.components["tests.reward_fns:skips_odd"]
    torch.testing.assert_close(fmt, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert torch.isnan(skips[1]) and torch.isnan(skips[3])
    # None components drop out of the sum; the sample keeps its other rewards
    torch.testing.assert_close(result.total, torch.tensor([2.0 + len(completions[0]) % 5, 0.0, 2.0 + len(completions[2]) % 5, 0.0]))
    only_none = RewardRunner([RewardSpec("tests.reward_fns:skips_odd")], [1.0])(completions, {}, ["p"] * 4, 1)
    assert torch.isnan(only_none.total[1]) and not torch.isnan(only_none.total[0])


def test_runner_passes_prompts_and_step_only_when_accepted():
    seen = {}

    def needs_step(completions, step, answer):
        seen["step"], seen["answer"] = step, answer
        return [1.0] * len(completions)

    rewards.REGISTRY["_needs_step"] = needs_step
    try:
        RewardRunner([RewardSpec("_needs_step")], [1.0])(["a"], {"answer": ["1"], "question": ["q"]}, ["p"], step=4)
    finally:
        del rewards.REGISTRY["_needs_step"]
    assert seen == {"step": 4, "answer": ["1"]}


def test_runner_rejects_bad_outputs():
    for name, message in [
        ("tests.reward_fns:wrong_length", "returned 1 values for 2 completions (step 3)"),
        ("tests.reward_fns:returns_nan", "returned nan for sample 0 (step 3); use None to skip a sample"),
    ]:
        with pytest.raises(RewardError) as err:
            RewardRunner([RewardSpec(name)], [1.0])(["a", "b"], {}, ["p", "p"], step=3)
        assert message in str(err.value) and name in str(err.value)
    with pytest.raises(ConfigError, match="each reward may appear once"):
        RewardRunner([RewardSpec("format"), RewardSpec("format")], [1.0, 1.0])
    with pytest.raises(ConfigError, match="'math' takes no parameter 'strict'"):
        RewardRunner([RewardSpec("math", 1.0, {"strict": True})], [1.0])


def test_format_soft_mode():
    assert format_reward(["Sure! <think>a</think> <answer>1</answer> done", "<answer>1</answer>"], mode="soft") == [1.0, 0.0]


def test_cosine_length_reward_orders_completions():
    from rewards.length import length_reward

    right, wrong = "<answer>4</answer>", "<answer>5</answer>"
    ids = [[0] * 10, [0] * 90, [0] * 10, [0] * 90]
    out = length_reward([right, right, wrong, wrong], answer=["4"] * 4, max_len=100, completion_ids=ids)
    short_right, long_right, short_wrong, long_wrong = out
    assert short_right > long_right > 0 > long_wrong > short_wrong
    assert short_right == pytest.approx(0.5 + 0.25 * (1 + __import__("math").cos(0.1 * __import__("math").pi)))
    # without token ids the length is counted in words
    assert length_reward([right], answer=["4"], max_len=100) == [pytest.approx(1.0, abs=1e-3)]


def test_overlong_penalty():
    from rewards.length import length_reward

    out = length_reward(["x"] * 4, mode="overlong", max_len=100, cache_len=20, completion_ids=[[0] * 50, [0] * 80, [0] * 90, [0] * 120])
    assert out == [0.0, 0.0, pytest.approx(-0.5), -1.0]
    with pytest.raises(ValueError):
        length_reward(["x"], mode="overlong", max_len=10, cache_len=20)


def test_repetition_penalty():
    from rewards.repetition import repetition_reward

    loop, varied = "a b c " * 4, "the cat sat on the mat"
    assert repetition_reward([loop, varied, "too short"]) == [pytest.approx(-0.7), 0.0, 0.0]
    assert repetition_reward(["!!!! " * 50], ngram_size=2)[0] < -0.95


def test_rewards_from_an_installed_package_entry_point(tmp_path, monkeypatch):
    """A separate pip package adds a reward through the `rl_reasoning.rewards` entry-point group."""
    (tmp_path / "myplug_mod.py").write_text("def shout(completions, **kw):\n    return [float(c.isupper()) for c in completions]\n")
    dist = tmp_path / "myplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rl_reasoning.rewards]\nshout = myplug_mod:shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "shout" in rewards.available_rewards()
    fn = rewards.get_reward("shout")
    assert fn(["HEY", "hey"]) == [1.0, 0.0]
    with pytest.raises(rewards.UnknownRewardError) as err:
        rewards.get_reward("nope")
    assert "shout" in str(err.value)


def test_reasoning_section_is_the_think_text():
    from rewards.format import reasoning_section

    assert reasoning_section("<think> 2 + 3 = 5, check: 5 - 3 = 2 </think> <answer>5</answer>") == "2 + 3 = 5, check: 5 - 3 = 2"
    assert reasoning_section("<think>12 - 4 = 8 <answer>8</answer>") == "12 - 4 = 8"  # no </think>: up to <answer>
    assert reasoning_section("<think>still thinking") == "still thinking"
    assert reasoning_section("<answer>8</answer>") == "" and reasoning_section("<think></think><answer>8</answer>") == ""
