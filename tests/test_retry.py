"""The retry environment's knobs (cost, restated question, tools only after feedback), the
per-turn records and rewards, and the detectors analysing an episode turn by turn."""

from __future__ import annotations

import pytest
import torch

from rewards.format import format_reward
from rl_reasoning.config import load_config
from rl_reasoning.environments import RetryEnvironment
from rl_reasoning.errors import ConfigError
from rl_reasoning.multiturn import MultiTurnEngine, episode_metrics
from rl_reasoning.tools import Toolbox
from rl_reasoning.traces.analysis import Analyzer, turn_offsets
from tests.test_tools import ScriptedEngine, params
from tests.test_tools import tok as tok  # noqa: F401 - the tokenizer fixture


def judge(turn_text, columns):
    return f"<answer>{columns['answer']}</answer>" in turn_text


def test_retry_cost_pays_a_fixed_answer_less_and_a_wrong_one_nothing():
    env = RetryEnvironment(judge, "wrong", cost=0.25)
    env.reset(answer="7")
    assert env.get_reward() is None
    env.step("<answer>9</answer>")
    assert env.get_reward() == 0.0
    env.step("<answer>7</answer>")
    assert env.get_reward() == 0.75
    env.reset(answer="7")
    env.step("<answer>7</answer>")
    assert env.get_reward() == 1.0


def test_feedback_restates_the_question():
    env = RetryEnvironment(judge, "No. Again: {question}")
    env.reset(question="Calculate 2 + 5.", answer="7")
    assert env.step("<answer>8</answer>") == "No. Again: Calculate 2 + 5."
    assert env.step("<answer>7</answer>") is None


def tool_after_feedback_script(context, g):
    """Turn 1 writes a call (which must not run); after the feedback, turn 2 calls and copies the result."""
    if "told wrong" not in context:
        return "<tool>1 + 1</tool> so 5</think> <answer>5</answer>"
    if "<result>" not in context.split("told wrong")[-1]:
        return "I use <tool>3 + 4</tool>"
    return "</think> <answer>7</answer>"


def test_tools_become_available_only_after_the_feedback(tok):  # noqa: F811
    engine = ScriptedEngine(tok, tool_after_feedback_script)
    factory = lambda: RetryEnvironment(judge, "told wrong")  # noqa: E731
    mt = MultiTurnEngine(engine, tok, [tok.eos_token_id], Toolbox(["calculator"], 5.0, 100), max_tool_calls=1,
                         environment=factory, max_turns=2, template="chat", prefill="<think>", tools_from_turn=2)
    batch = mt.generate([tok("Q", add_special_tokens=False).input_ids], params(num_generations=1, max_new_tokens=400),
                        problems=[{"id": 0, "question": "Q", "answer": "7"}])
    e = batch.episodes[0]
    assert "</tool>" not in engine.calls[0].stop  # turn 1: a call is plain text
    assert "</tool>" in engine.calls[1].stop
    assert [c["arguments"] for c in e["tool_calls"]] == ["3 + 4"] and e["tool_calls"][0]["output"] == "7"
    assert e["verdicts"] == [False, True] and e["turns"] == 2
    assert e["feedback"] == ["told wrong"]
    t1, t2 = e["turn_texts"]
    assert t1 == "<think><tool>1 + 1</tool> so 5</think> <answer>5</answer>"
    assert t2 == "<think>I use <tool>3 + 4</tool><result>7</result></think> <answer>7</answer>"
    assert "told wrong" not in t1 + t2 and turn_offsets("<think>" + batch.texts[0], [t1, t2]) == [0, ("<think>" + batch.texts[0]).rindex("<think>")]


def test_fix_rate_counts_every_wrong_first_answer():
    episodes = [{"tool_calls": [], "turns": t, "verdicts": v} for t, v in
                [(2, [False, True]), (1, [False]), (1, [True]), (2, [False, False])]]  # the second: no budget left to retry
    m = episode_metrics(episodes, torch.tensor([True, False, True, False]))
    assert m["env/first_turn_accuracy"] == 0.25
    assert m["env/second_turn_fix_rate"] == pytest.approx(1 / 3)
    assert m["env/retried_frac"] == pytest.approx(2 / 3)
    assert m["env/final_turn_accuracy"] == 0.5


def test_format_reward_scores_each_turn_on_its_own():
    good = "<think>a</think><answer>1</answer>"
    episode = good + "<|im_end|>\n<|im_start|>user\nwrong<|im_end|>\n<|im_start|>assistant\n" + good
    assert format_reward([episode], mode="tag_count") == [0.0]  # every tag twice
    assert format_reward([episode], mode="tag_count", turn_texts=[[good, good]]) == [1.0]
    assert format_reward([episode], mode="strict", turn_texts=[[good, "<think>b"]]) == [0.5]
    assert format_reward([good], mode="strict", turn_texts=[[]]) == [1.0]  # no turns recorded: the whole text


@pytest.mark.parametrize("override, message", [
    ("rollout.retry_cost=0.5", "rollout.retry_cost: is read only by the 'retry' environment"),
    ("rollout.tools_from_turn=2", "rollout.tools_from_turn: has no effect without rollout.environment"),
])
def test_retry_keys_without_the_environment_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, message", [
    (["rollout.retry_cost=1.5"], "rollout.retry_cost: must be in \\[0, 1\\]"),
    (["rollout.tools_from_turn=2"], "rollout.tools_from_turn: has no effect without rollout.tools"),
    (["rollout.tools=[calculator]", "rollout.describe_tools=false", "rollout.tools_from_turn=3"],
     "rollout.tools_from_turn: must be between 1 and rollout.max_turns \\(2\\)"),
    (["rollout.tools=[calculator]", "rollout.tools_from_turn=2"], "rollout.describe_tools: with rollout.tools_from_turn > 1"),
])
def test_bad_retry_settings_are_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["rollout.environment=retry", *overrides])


def test_the_shipped_recipe_offers_the_calculator_only_after_feedback():
    cfg = load_config("recipes/retry_2digit.yaml", [])
    r = cfg.rollout
    assert (r.environment, r.tools, r.tools_from_turn, r.describe_tools) == ("retry", ["calculator"], 2, False)
    assert "{question}" in r.retry_feedback and "<tool>" in r.retry_feedback and "<tool>" not in cfg.prompt.system_prompt
    assert 0 < r.retry_cost < 1


FEEDBACK = "<|im_end|>\n<|im_start|>user\nThat answer is wrong. Example: <answer>-38</answer>. So 12.<|im_end|>\n<|im_start|>assistant\n"


def episode(turn1: str, turn2: str) -> tuple[str, list[str]]:
    return turn1 + FEEDBACK + turn2, [turn1, turn2]


def test_an_episode_is_analysed_turn_by_turn():
    analyze = Analyzer()
    text, turns = episode("<think>8 - 2 = 5</think> <answer>5</answer>", "<think>8 - 2 = 6</think> <answer>6</answer>")
    whole = analyze(text, "6", True)
    assert whole.revision is not None  # read as one text, the feedback's example and the second turn look like revisions
    a = analyze(text, "6", True, turn_texts=turns, verdicts=[False, True])
    assert a.revision is None  # a fix after feedback is the environment's, not a revision inside a turn
    assert [c.value for c in a.claims] == ["5", "6"]  # the feedback's "-38" and "12" are not the model's claims


def test_a_revision_inside_the_second_turn_is_found_and_placed_in_the_whole_text():
    analyze = Analyzer()
    turn2 = "<think>8 - 2 = 5. Wait, that is wrong. 8 - 2 = 6.</think> <answer>6</answer>"
    text, turns = episode("<think>8 - 2 = 5</think> <answer>5</answer>", turn2)
    a = analyze(text, "6", True, turn_texts=turns, verdicts=[False, True])
    assert a.revision is not None and a.revision.kind == "wrong_to_right"
    assert text[a.revision.before.start:a.revision.before.end] == "5" and a.revision.before.start > text.index(FEEDBACK)
    assert text[a.revision.after.start:a.revision.after.end] == "6"
    assert [text[r.start:r.end] for r in a.reflections] == ["Wait", "that is wrong"]


def test_turns_that_are_not_in_the_text_fall_back_to_the_whole_text():
    analyze = Analyzer()
    text, _ = episode("<answer>5</answer>", "<answer>6</answer>")
    assert analyze(text, "6", True, turn_texts=["nope", "<answer>6</answer>"]).revision is not None
    assert turn_offsets("a b a", ["a", "b", "a"]) == [0, 2, 4]
    assert turn_offsets("a b", ["b", "a"]) is None and turn_offsets("a", [3]) is None
