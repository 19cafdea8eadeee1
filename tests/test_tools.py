"""Tools and multi-turn rollouts: the calculator, bad user tools, the scripted multi-turn engine
(masking, budgets, limits, the retry environment), the loss on hand-built tensors, and the trainer."""

from __future__ import annotations

import sys
import time

import pytest
import torch

from rl_reasoning.config import RolloutConfig, load_config
from rl_reasoning.engine import RolloutBatch, cut_at_stop, left_pad
from rl_reasoning.environments import RetryEnvironment
from rl_reasoning.errors import ConfigError
from rl_reasoning.multiturn import MultiTurnEngine, episode_metrics, feedback_scaffold
from rl_reasoning.tools import Toolbox, ToolCall, calculator, describe_tools, resolve_tool
from tests.conftest import build_tokenizer
from tests.test_update import sgd_update
from tests.timing import hang_guard

# ---------------------------------------------------------------------------- the calculator


@pytest.mark.parametrize("expression, expected", [
    ("47 + 38", "85"), ("3 - 8", "-5"), ("(2 + 3) * 4", "20"), ("7 / 2", "3.5"), ("8 / 4", "2"), ("2 ** 10", "1024"),
    ("-(4 - 9)", "5"), ("17 // 5", "3"), ("17 % 5", "2"), (" 12 × 3 ", "36"), ("1 / 3", "0.3333333333"),
])
def test_calculator_values(expression, expected):
    assert calculator(expression) == expected


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('true')", "unsupported element Call"),
    ("x + 1", "unsupported element Name"),
    ("(1).real", "unsupported element Attribute"),
    ("'a' * 3", "unsupported element Constant"),
    ("9 ** 9 ** 9", "power too large"),
    ("1 / 0", "division by zero"),
    ("1 +", "not an arithmetic expression"),
    ("1" + "+1" * 150, "longer than"),
    ("", "empty expression"),
])
def test_calculator_refuses_everything_but_bounded_arithmetic(expression, message):
    with pytest.raises(ValueError, match=message):
        calculator(expression)


# ---------------------------------------------------------------------------- user tools, bad tools

USER_TOOLS = '''
import time

def lookup(key: str) -> str:
    """Look up a word in a tiny dictionary."""
    return {"cat": "a small animal"}.get(key, "unknown")

def add(a: int, b: int):
    """Add two integers."""
    return a + b

def boom(x: str):
    """Raises."""
    raise RuntimeError("tool exploded")

def hang(x: str):
    """Never returns."""
    time.sleep(60)

def flood(x: str):
    """Prints a megabyte and returns a short text."""
    print("x" * 1_000_000)
    return "done"

def not_text(x: str):
    """Returns a list."""
    return [1, 2]
'''


def importable_module(tmp_path, monkeypatch, name: str, source: str):
    """`source` as module `name`, importable (by the tool workers too) for one test."""
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def user_tools(tmp_path, monkeypatch):
    yield from importable_module(tmp_path, monkeypatch, "my_test_tools", USER_TOOLS)


def test_tools_are_described_from_signature_and_docstring(user_tools):
    specs = [resolve_tool("calculator"), resolve_tool(f"{user_tools}:lookup"), resolve_tool(f"{user_tools}:add")]
    text = describe_tools(specs)
    assert "- calculator(expression): Evaluate an arithmetic expression" in text
    assert "- lookup(key): Look up a word in a tiny dictionary." in text
    assert "- add(a, b): Add two integers." in text
    assert "<tool>lookup: arguments</tool>" in text and "JSON object" in text


def test_unknown_tools_are_config_errors(user_tools):
    with pytest.raises(ConfigError, match="rollout.tools: unknown tool 'calculater'; built-in tools: calculator, python"):
        resolve_tool("calculater")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        resolve_tool("no_such_module:f")
    with pytest.raises(ConfigError, match="has no callable 'missing'"):
        resolve_tool(f"{user_tools}:missing")


def test_bad_tools_are_recorded_time_and_size_limited_and_never_raise(user_tools):
    names = ["lookup", "add", "boom", "hang", "flood", "not_text"]
    box = Toolbox([f"{user_tools}:{n}" for n in names], timeout=3.0, max_output_chars=50, workers=4)
    try:
        start = time.perf_counter()
        with hang_guard(60, "a round with a hung tool"):  # hang guard: 3.0 s measured (the 3 s timeout)
            calls = box.run(["cat", 'add: {"a": 2, "b": 40}', "boom: x", "hang: x", "flood: x", "not_text: x",
                             "add: 2 + 40", 'add: {"c": 1}'])
        elapsed = time.perf_counter() - start
        by = {i: c for i, c in enumerate(calls)}
        assert (by[0].name, by[0].output, by[0].error) == ("lookup", "a small animal", None)  # unnamed: the first tool
        assert (by[1].name, by[1].output, by[1].error) == ("add", "42", None)
        assert by[2].error == "RuntimeError: tool exploded"
        assert by[3].error == "timeout" and by[3].seconds >= box.timeout  # killed at its limit, not before
        assert (by[4].output, by[4].error) == ("done", None)  # its megabyte went into a capped buffer
        assert by[5].error == "returned list; a tool must return text or a number"
        assert "takes a JSON object of a, b" in by[6].error
        assert "keys among a, b" in by[7].error
        assert max(c.seconds for c in calls) <= elapsed < sum(c.seconds for c in calls)  # the calls overlapped: in parallel
        # the pool was restarted after the timeout: the next round works
        assert [c.output for c in box.run(["dog", 'add: {"a": 1, "b": 1}'])] == ["unknown", "2"]
        long = box.run(["lookup: " + "y" * 10])[0]
        assert long.output == "unknown"
    finally:
        box.close()


def test_outputs_are_cut_to_the_limit():
    box = Toolbox(["calculator"], max_output_chars=5)
    call = box.run(["2 ** 100"])[0]
    assert call.output == "12676...[26 more characters]" and call.error is None
    assert call.result_text() == "<result>12676...[26 more characters]</result>"
    assert box.run(["1/0"])[0].result_text() == "<result>error: division by zero</result>"


def test_python_tool_runs_in_the_sandbox():
    box = Toolbox(["python"], timeout=3.0)
    with hang_guard(40, "the python tool on an endless loop"):  # hang guard: 3.1 s measured (the 3 s timeout)
        ok, loop, bad = box.run(["print(47 + 38)", "while True: pass", "raise ValueError('no')"])
    assert (ok.output, ok.error) == ("85\n", None)
    assert "killed" in loop.error and loop.seconds >= box.timeout  # killed at its limit
    assert "ValueError: no" in bad.error


# ---------------------------------------------------------------------------- the scripted multi-turn engine


class ScriptedEngine:
    """A GenerationEngine whose completions a function writes: script(context text) -> the next
    segment. Stop strings cut it as the real engine does; ids are the tokenised segment; each
    sampled token's log-prob is -0.1 (so observation tokens, which get 0, are told apart)."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.pad_token_id = tokenizer, script, tokenizer.pad_token_id
        self.calls: list[RolloutConfig] = []

    def generate(self, prompts, params, generator=None, shard=None):
        self.calls.append(params)
        G = params.num_generations
        rows, texts, truncated = [], [], []
        for p in prompts:
            for g in range(G):
                text = self.script(self.tokenizer.decode(p), g)
                cut = cut_at_stop(text, params.stop)
                ids = self.tokenizer(cut, add_special_tokens=False).input_ids
                truncated.append(len(ids) > params.max_new_tokens or (cut == text and not any(text.endswith(s) for s in params.stop)
                                                                     and len(ids) >= params.max_new_tokens))
                ids = ids[: params.max_new_tokens]
                rows.append(ids)
                texts.append(cut_at_stop(self.tokenizer.decode(ids), params.stop))
        width = max(max(len(r) for r in rows), 1)
        ids = torch.full((len(rows), width), self.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        p_ids, p_mask = left_pad(prompts, self.pad_token_id)
        return RolloutBatch(p_ids.repeat_interleave(G, 0), p_mask.repeat_interleave(G, 0), ids, mask, -0.1 * mask.float(),
                            0.5 * mask.float(), torch.tensor(truncated), texts, G)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def params(**kw):
    return RolloutConfig(**{"num_generations": 2, "max_new_tokens": 40, "stop": ["</answer>"], **kw})


def calc_script(context, g):
    """Row 0 calls the calculator and copies the result; row 1 answers from its head."""
    if g == 1 and "<tool>" not in context:
        return "<think>4 + 3 = 8</think> <answer>8</answer> trailing"
    if "<result>" not in context:
        return "<think>I use <tool>4 + 3</tool> and wait"
    return " so</think> <answer>7</answer> trailing"


def test_tool_call_result_is_appended_masked_and_generation_resumes(tok):
    engine = ScriptedEngine(tok, calc_script)
    mt = MultiTurnEngine(engine, tok, [tok.eos_token_id], Toolbox(["calculator"]), max_tool_calls=2)
    prompt = tok("Q: 4 + 3?", add_special_tokens=False).input_ids
    batch = mt.generate([prompt], params())
    assert batch.texts[0] == "<think>I use <tool>4 + 3</tool><result>7</result> so</think> <answer>7</answer>"
    assert batch.texts[1] == "<think>4 + 3 = 8</think> <answer>8</answer>"
    assert engine.calls[0].stop == ["</answer>", "</tool>"] and engine.calls[1].num_generations == 1
    # the ids are the three segments in order; the mask marks exactly the result's tokens
    seg1 = tok("<think>I use <tool>4 + 3</tool>", add_special_tokens=False).input_ids
    result = tok("<result>7</result>", add_special_tokens=False).input_ids
    seg2 = tok(" so</think> <answer>7</answer>", add_special_tokens=False).input_ids
    n = len(seg1) + len(result) + len(seg2)
    assert batch.completion_ids[0, :n].tolist() == seg1 + result + seg2
    assert batch.completion_mask[0].sum() == n
    expected_tool = [0] * len(seg1) + [1] * len(result) + [0] * len(seg2)
    assert batch.tool_mask[0, :n].tolist() == expected_tool
    assert batch.sampled_mask[0, :n].tolist() == [1 - t for t in expected_tool]
    assert torch.all(batch.logprobs[0, :n][torch.tensor(expected_tool, dtype=torch.bool)] == 0)
    assert torch.allclose(batch.logprobs[0, :n][~torch.tensor(expected_tool, dtype=torch.bool)], torch.tensor(-0.1))
    assert batch.tool_mask[1].sum() == 0
    call = batch.episodes[0]["tool_calls"][0]
    assert (call["name"], call["arguments"], call["output"], call["error"]) == ("calculator", "4 + 3", "7", None)
    assert batch.episodes[1]["tool_calls"] == []
    m = episode_metrics(batch.episodes, torch.tensor([True, False]))
    assert m["tools/calls_per_completion"] == 0.5 and m["tools/use_frac"] == 0.5
    assert m["tools/accuracy_with_tool"] == 1.0 and m["tools/accuracy_without_tool"] == 0.0


def test_tool_calls_are_limited_and_the_token_budget_excludes_results(tok):
    def always_calls(context, g):
        return "<tool>1 + 1</tool>"

    engine = ScriptedEngine(tok, always_calls)
    mt = MultiTurnEngine(engine, tok, [tok.eos_token_id], Toolbox(["calculator"]), max_tool_calls=2)
    per_call = len(tok("<tool>1 + 1</tool>", add_special_tokens=False).input_ids)
    batch = mt.generate([[5, 6]], params(num_generations=1, max_new_tokens=3 * per_call))
    episode = batch.episodes[0]
    assert len(episode["tool_calls"]) == 2  # then </tool> no longer stops it
    assert engine.calls[-1].stop == ["</answer>"]
    # three calls' worth of sampled tokens fit: the two results did not count against the budget
    assert int(batch.sampled_mask.sum()) == 3 * per_call and bool(batch.truncated[0])  # the third call text used up the budget
    assert int(batch.tool_mask.sum()) == 2 * len(tok("<result>2</result>", add_special_tokens=False).input_ids)


def test_rows_continuing_together_keep_their_own_budgets(tok):
    """Two rows continue in one round with different budgets left: each is cut to its own."""
    def script(context, g):
        written = context.split("Q", 1)[1]
        if "<result>" in written:
            return " " + "word " * 30
        return "<tool>1+1</tool>" if g == 0 else "<tool>1 + 1 + 1 + 1 + 1 + 1</tool>"

    mt = MultiTurnEngine(ScriptedEngine(tok, script), tok, [tok.eos_token_id], Toolbox(["calculator"]), max_tool_calls=1)
    batch = mt.generate([tok("Q", add_special_tokens=False).input_ids], params(num_generations=2, max_new_tokens=30))
    first = [len(tok(t, add_special_tokens=False).input_ids) for t in ("<tool>1+1</tool>", "<tool>1 + 1 + 1 + 1 + 1 + 1</tool>")]
    assert first[0] != first[1]
    assert batch.sampled_mask.sum(-1).tolist() == [30, 30] and batch.truncated.tolist() == [True, True]
    assert [len(e["tool_calls"]) for e in batch.episodes] == [1, 1]


def test_budget_cut_marks_truncated(tok):
    def long_after_result(context, g):
        return "<tool>2 * 3</tool>" if "<result>" not in context else " " + "word " * 50

    mt = MultiTurnEngine(ScriptedEngine(tok, long_after_result), tok, [tok.eos_token_id], Toolbox(["calculator"]), max_tool_calls=3)
    batch = mt.generate([[5]], params(num_generations=1, max_new_tokens=20))
    assert bool(batch.truncated[0]) and int(batch.sampled_mask.sum()) == 20


def test_a_close_without_an_open_is_a_failed_call_that_runs_nothing(tok):
    def script(context, g):
        return "I am done</tool>" if "<result>" not in context else "<answer>1</answer>"

    box = Toolbox(["calculator"])
    box.run = lambda bodies: pytest.fail(f"no tool should run, got {bodies}")
    batch = MultiTurnEngine(ScriptedEngine(tok, script), tok, [tok.eos_token_id], box, max_tool_calls=1).generate([[5]], params(num_generations=1))
    call = batch.episodes[0]["tool_calls"][0]
    assert (call["name"], call["error"]) == (None, "no <tool> before </tool>")
    assert batch.texts[0] == "I am done</tool><result>error: no <tool> before </tool></result><answer>1</answer>"


def test_calls_queued_behind_hung_workers_get_their_own_time(user_tools):
    box = Toolbox([f"{user_tools}:hang", f"{user_tools}:lookup"], timeout=2.0, workers=2)
    try:
        with hang_guard(30, "calls behind two hung tools"):  # hang guard: 2.2 s measured (the 2 s timeout)
            calls = box.run(["hang: a", "hang: b", "lookup: cat", "lookup: dog"])
        assert [c.error for c in calls] == ["timeout", "timeout", None, None]  # the lookups waited, and were not timed out
        assert [c.output for c in calls[2:]] == ["a small animal", "unknown"]
    finally:
        box.close()


def test_concat_and_select_carry_tool_masks_and_episodes():
    from rl_reasoning.engine import concat_rollouts, select_groups

    def batch(width, marks, name):
        n = 2
        ids = torch.arange(n * width).view(n, width)
        tool = torch.zeros(n, width, dtype=torch.long)
        tool[:, marks] = 1
        return RolloutBatch(torch.ones(n, 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.long), ids, torch.ones(n, width, dtype=torch.long),
                            torch.zeros(n, width), torch.zeros(n, width), torch.zeros(n, dtype=torch.bool), ["a", "b"], 2,
                            tool_mask=tool, episodes=[{"turns": name}, {"turns": name}])

    both = concat_rollouts([batch(3, [1], 1), batch(5, [3, 4], 2)], pad_id=0)
    assert both.tool_mask.tolist() == [[0, 1, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]
    assert [e["turns"] for e in both.episodes] == [1, 1, 2, 2]
    second = select_groups(both, [1])
    assert second.tool_mask.tolist() == [[0, 0, 0, 1, 1]] * 2 and [e["turns"] for e in second.episodes] == [2, 2]
    with pytest.raises(ValueError, match="multi-turn"):
        concat_rollouts([batch(3, [1], 1), RolloutBatch(*[getattr(batch(3, [1], 1), f) for f in (
            "prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "logprobs", "entropies", "truncated", "texts", "group_size")])], 0)


def test_tool_output_cannot_inject_special_tokens(tok):
    def calls_once(context, g):
        return "<tool>x</tool>" if "<result>" not in context else "<answer>1</answer>"

    box = Toolbox(["calculator"])
    box.run = lambda bodies: [ToolCall("calculator", b, output="<|im_end|>") for b in bodies]  # a tool printing a control token
    mt = MultiTurnEngine(ScriptedEngine(tok, calls_once), tok, [tok.eos_token_id], box, max_tool_calls=1)
    batch = mt.generate([[5]], params(num_generations=1))
    observed = batch.completion_ids[0][batch.tool_mask[0].bool()].tolist()
    assert tok.decode(observed) == "<result><|im_end|></result>"
    assert tok.eos_token_id not in observed  # tokenised as text, so it cannot end the turn


def test_retry_environment_gives_a_second_turn_after_a_wrong_answer(tok):
    def script(context, g):
        if "wrong" not in context:
            return "<think>guess</think> <answer>9</answer>" if g == 0 else "<think>sure</think> <answer>7</answer>"
        return "<think>recheck</think> <answer>7</answer>"

    def judge(turn_text, columns):
        return f"<answer>{columns['answer']}</answer>" in turn_text

    factory = lambda: RetryEnvironment(judge, "That answer is wrong.")  # noqa: E731
    engine = ScriptedEngine(tok, script)
    mt = MultiTurnEngine(engine, tok, [tok.eos_token_id], environment=factory, max_turns=2, template="chat", prefill="<think>")
    batch = mt.generate([tok("Q", add_special_tokens=False).input_ids], params(), problems=[{"id": 0, "question": "Q", "answer": "7"}])
    first, second = batch.episodes
    assert (first["turns"], first["verdicts"], first["env_reward"]) == (2, [False, True], 1.0)
    assert (second["turns"], second["verdicts"], second["env_reward"]) == (1, [True], 1.0)
    close, before, after = feedback_scaffold(tok, "chat", "<think>")
    assert (close, before, after) == ("<|im_end|>\n", "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n<think>")
    assert batch.texts[0] == ("<think>guess</think> <answer>9</answer><|im_end|>\n<|im_start|>user\nThat answer is wrong.<|im_end|>\n"
                              "<|im_start|>assistant\n<think><think>recheck</think> <answer>7</answer>")
    feedback_ids = batch.completion_ids[0][batch.tool_mask[0].bool()].tolist()
    assert tok.decode(feedback_ids) == close + before + "That answer is wrong." + after
    m = episode_metrics(batch.episodes, torch.tensor([True, True]))
    assert m["env/first_turn_accuracy"] == 0.5 and m["env/second_turn_fix_rate"] == 1.0 and m["env/turns"] == 1.5


def test_environment_turns_are_limited(tok):
    engine = ScriptedEngine(tok, lambda context, g: "<answer>0</answer>")
    factory = lambda: RetryEnvironment(lambda text, cols: False, "wrong")  # noqa: E731
    mt = MultiTurnEngine(engine, tok, [tok.eos_token_id], environment=factory, max_turns=3, template="chat")
    batch = mt.generate([[5]], params(num_generations=1), problems=[{"answer": "1"}])
    assert batch.episodes[0]["turns"] == 3 and batch.episodes[0]["verdicts"] == [False, False, False]
    assert batch.episodes[0]["env_reward"] == 0.0


def test_feedback_after_an_end_of_turn_token_does_not_repeat_it(tok):
    """A turn that ended with the end-of-turn token (one of two EOS ids) gets the scaffold without a
    second copy of it."""
    end = tok.convert_tokens_to_ids("<|im_end|>")
    other = tok.convert_tokens_to_ids("<|endoftext|>")
    assert other < end  # the first EOS id is not the one the turn ended with

    def script(context, g):
        return "<answer>1</answer><|im_end|>" if "wrong" not in context else "<answer>2</answer>"

    factory = lambda: RetryEnvironment(lambda text, cols: "<answer>2</answer>" in text, "wrong")  # noqa: E731
    mt = MultiTurnEngine(ScriptedEngine(tok, script), tok, [other, end], environment=factory, max_turns=2, template="chat")
    batch = mt.generate([[5]], params(num_generations=1, stop=[]), problems=[{"answer": "2"}])
    ids = batch.completion_ids[0][batch.completion_mask[0].bool()].tolist()
    assert ids.count(end) == 2  # the model's own, and the one that closes the feedback turn
    feedback = tok.decode(batch.completion_ids[0][batch.tool_mask[0].bool()].tolist())
    assert feedback == "\n<|im_start|>user\nwrong<|im_end|>\n<|im_start|>assistant\n"
    assert batch.episodes[0]["verdicts"] == [False, True]


def test_a_broken_environment_is_recorded_and_ends_the_episode(tok):
    class Broken:
        def reset(self, **columns):
            pass

        def step(self, text):
            raise KeyError("nope")

        def get_reward(self):
            return 1.0

    mt = MultiTurnEngine(ScriptedEngine(tok, lambda c, g: "<answer>1</answer>"), tok, [tok.eos_token_id], environment=Broken,
                         max_turns=3, template="chat")
    episode = mt.generate([[5]], params(num_generations=1), problems=[{"answer": "1"}]).episodes[0]
    assert episode["turns"] == 1 and episode["env_error"] == "step: KeyError: 'nope'" and episode["env_reward"] is None


# ---------------------------------------------------------------------------- the loss never trains observations


def test_loss_mask_leaves_out_observation_tokens():
    from rl_reasoning.update import loss_mask

    completion_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    tool_mask = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    batch = RolloutBatch(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long), torch.zeros(2, 6, dtype=torch.long),
                         completion_mask, torch.zeros(2, 6), torch.zeros(2, 6), torch.zeros(2, dtype=torch.bool), ["", ""], 2,
                         tool_mask=tool_mask)
    mask = loss_mask(batch.sampled_mask, torch.tensor([1.0, 0.0]), batch.truncated, torch.zeros(2, dtype=torch.bool), False)
    assert mask.tolist() == [[1, 0, 0, 1, 1, 0], [1, 1, 1, 0, 0, 0]]


@pytest.mark.parametrize("prefix_grouping", [True, False])
def test_update_attends_to_observations_but_never_trains_or_ratios_them(tiny, prefix_grouping):
    """With tool-result tokens in the middle of completions, PolicyUpdate moves the weights exactly
    as one SGD step on the plain loss whose forward attends to every completion token and whose
    mask leaves the results out, and the (garbage) old log-probs at result positions change nothing."""

    from rl_reasoning.grpo import LossNormalizer, group_advantages, policy_loss
    from rl_reasoning.logprobs import completion_logprobs
    from rl_reasoning.update import loss_mask, normalizer_counts

    model, tk = tiny
    torch.manual_seed(2)
    G, P, Lp, Lc = 2, 2, 4, 7
    prompt_ids = torch.randint(3, len(tk), (P, Lp)).repeat_interleave(G, 0)
    prompt_mask = torch.ones_like(prompt_ids)
    completion_ids = torch.randint(3, len(tk), (P * G, Lc))
    lengths = torch.tensor([7, 5, 6, 7])
    completion_mask = (torch.arange(Lc)[None] < lengths[:, None]).long()
    tool_mask = torch.zeros_like(completion_mask)
    tool_mask[0, 2:4] = 1
    tool_mask[2, 1:3] = 1
    tool_mask[3, 4:6] = 1
    with torch.no_grad():
        old = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, 1.0) + 0.05
    old = old * completion_mask * (1 - tool_mask) + 3.0 * tool_mask  # nonsense where the tool wrote
    rollout = RolloutBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, old, torch.zeros(P * G, Lc),
                           torch.zeros(P * G, dtype=torch.bool), [""] * (P * G), G, tool_mask=tool_mask)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    advantages = group_advantages(rewards, G, "group")
    dropped = torch.zeros(P * G, dtype=torch.bool)
    mask = loss_mask(rollout.sampled_mask, rewards, rollout.truncated, dropped, mask_truncated=False)

    cfg = load_config(None, ["grpo.loss_type=dapo", "rollout.max_new_tokens=7", "optim.micro_batch_size=2",
                             f"optim.prefix_grouping={str(prefix_grouping).lower()}", "optim.max_grad_norm=0"])
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, stats = sgd_update(cfg, model, rollout, advantages, mask, dropped)

    reference = {n: p.detach().clone().requires_grad_(True) for n, p in start.items()}
    attention = torch.cat([prompt_mask, completion_mask], 1)
    logp = torch.func.functional_call(model, reference, (), dict(
        input_ids=torch.cat([prompt_ids, completion_ids], 1), attention_mask=attention,
        position_ids=(attention.cumsum(-1) - 1).clamp(min=0), use_cache=False,
    )).logits[:, Lp - 1 : -1].float().log_softmax(-1).gather(-1, completion_ids[..., None]).squeeze(-1)  # (N, Lc)
    counts = normalizer_counts(mask, dropped)
    clean_old = old * (1 - tool_mask)
    loss, _ = policy_loss(logp, clean_old, advantages, mask, LossNormalizer("dapo", counts["sequences"], counts["tokens"], 7),
                          epsilon=0.2, epsilon_high=0.2)
    loss.backward()
    assert counts["tokens"] == int(completion_mask.sum() - tool_mask.sum())
    assert stats["loss"] == pytest.approx(float(loss.detach()), rel=1e-4, abs=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), start[name] - reference[name].grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- the trainer, with a scripted policy


def scripted_generate(script):
    """A RolloutEngine.generate replacement: the completions `script(context, g)` writes, with the
    tiny policy's own log-probs of them (so the update is on-policy)."""
    from rl_reasoning.logprobs import completion_logprobs_and_entropy

    def generate(self, prompts, params, generator=None, shard=None):
        batch = ScriptedEngine(self.tokenizer, script).generate(prompts, params)
        logp, ent = completion_logprobs_and_entropy(self.model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                                    batch.completion_mask, params.temperature if params.temperature > 0 else 1.0)
        batch.logprobs, batch.entropies = logp * batch.completion_mask, ent * batch.completion_mask
        return batch

    return generate


def sum_question(context: str) -> tuple[int, int]:
    import re

    a, b = re.findall(r"What is (\d+) \+ (\d+)\?", context)[-1]
    return int(a), int(b)


def tool_user(context, g):
    """Even rows call the calculator and copy its result; odd rows guess 0."""
    import re

    if g % 2:
        return "<think>no</think><answer>0</answer>"
    written = context.rsplit("<|im_start|>assistant\n", 1)[-1]  # the system prompt describes <result> too
    if "<result>" not in written:
        a, b = sum_question(context)
        return f"<think><tool>{a} + {b}</tool>"
    return f"</think><answer>{re.findall(r'<result>(.*?)</result>', written)[-1]}</answer>"


def tool_overrides(model_dir, data, out, *extra):
    return [f"model.name={model_dir}", "data.source=jsonl", f"data.path={data}", "data.eval_size=4",
            "rollout.num_generations=4", "rollout.max_new_tokens=64", "rollout.stop=[</answer>]", "prompts_per_step=2",
            "max_steps=2", "optim.lr=0.01", "optim.micro_batch_size=4", "eval.batch_size=4",
            "rewards=[{name: math}, {name: tool_errors, weight: 1.0}]", "accuracy_reward=math", f"output_dir={out}", *extra]


def test_training_with_tools_records_calls_in_metrics_traces_and_report(tiny_model_dir, arithmetic_jsonl, tmp_path, monkeypatch, capsys):
    from rl_reasoning import cli
    from rl_reasoning.jsonl import read_records
    from rl_reasoning.rollout import RolloutEngine
    from rl_reasoning.trainer import GRPOTrainer

    monkeypatch.setattr(RolloutEngine, "generate", scripted_generate(tool_user))
    run = tmp_path / "run"
    cfg = load_config(None, tool_overrides(tiny_model_dir, arithmetic_jsonl, run, "rollout.tools=[calculator]"))
    trainer = GRPOTrainer(cfg, quiet=True)
    assert "- calculator(expression): Evaluate an arithmetic expression" in trainer.prompt.system_prompt
    trainer.train()
    metrics = list(read_records(run / "metrics.jsonl"))
    assert len(metrics) == 2
    for m in metrics:
        assert m["tools/calls_per_completion"] == 0.5 and m["tools/use_frac"] == 0.5 and m["tools/error_rate"] == 0.0
        assert m["tools/accuracy_with_tool"] == 1.0
        assert m["accuracy"] >= 0.5 and m["loss"] == m["loss"]  # finite
    traces = list(read_records(run / "traces.jsonl"))
    called = [t for t in traces if t["tool_calls"]]
    assert len(called) == len(traces) // 2 and all(t["correct"] for t in called)
    call = called[0]["tool_calls"][0]
    assert call["name"] == "calculator" and call["error"] is None and call["output"] == str(sum(sum_question(called[0]["prompt"])))
    assert "<result>" in called[0]["completion"]
    evals = list(read_records(run / "eval_traces.jsonl"))
    assert evals and all(e["tool_calls"] for e in evals)  # greedy eval uses the tools too (row 0 of each problem)
    final = list(read_records(run / "eval.jsonl"))[-1]
    assert final["eval/tools/calls_per_completion"] == 1.0 and final["eval/accuracy"] == 1.0

    capsys.readouterr()
    first = called[0]
    assert cli.main(["traces", "show", str(run), "--step", str(first["step"]), "--prompt", str(first["prompt_id"]), "--color", "never"]) == 0
    shown = capsys.readouterr().out
    assert f"[tool 1] calculator({call['arguments']}) -> {call['output']}" in shown
    out = tmp_path / "report.html"
    assert cli.main(["report", str(run), "--out", str(out)]) == 0
    page = out.read_text()
    assert "<ol class=tools><li><b>calculator</b>" in page


def test_a_bad_tool_never_stops_training(tiny_model_dir, arithmetic_jsonl, tmp_path, monkeypatch, user_tools):
    from rl_reasoning.jsonl import read_records
    from rl_reasoning.rollout import RolloutEngine
    from rl_reasoning.trainer import GRPOTrainer

    monkeypatch.setattr(RolloutEngine, "generate", scripted_generate(tool_user))
    run = tmp_path / "run"
    cfg = load_config(None, tool_overrides(tiny_model_dir, arithmetic_jsonl, run, f"rollout.tools=[{user_tools}:hang]",
                                           "rollout.tool_timeout=1", "eval.at_start=false", "eval.at_end=false", "max_steps=1"))
    trainer = GRPOTrainer(cfg, quiet=True)
    trainer.train()
    m = list(read_records(run / "metrics.jsonl"))[0]
    assert m["tools/error_rate"] == 1.0 and m["tools/calls_per_completion"] == 0.5
    traces = list(read_records(run / "traces.jsonl"))
    errors = [c["error"] for t in traces for c in t["tool_calls"]]
    assert errors == ["timeout"] * 4
    assert sorted({round(t["rewards"]["tool_errors"], 6) for t in traces}) == [-0.1, 0.0]  # the penalty reads the calls


def test_retry_environment_in_training_measures_the_fix_rate(tiny_model_dir, arithmetic_jsonl, tmp_path, monkeypatch):
    from rl_reasoning.jsonl import read_records
    from rl_reasoning.rollout import RolloutEngine
    from rl_reasoning.trainer import GRPOTrainer

    def retry_script(context, g):
        a, b = sum_question(context)
        if "wrong, try again" not in context:  # first turn: rows 0, 1 wrong, rows 2, 3 right
            return f"<answer>{[a + b + 1, a + b + 3, a + b, a + b][g]}</answer>"
        fixes = f"<answer>{a + b + 1}</answer>" in context  # row 0 fixes it, row 1 does not
        return f"<answer>{a + b if fixes else a + b + 2}</answer>"

    monkeypatch.setattr(RolloutEngine, "generate", scripted_generate(retry_script))
    run = tmp_path / "run"
    cfg = load_config(None, tool_overrides(tiny_model_dir, arithmetic_jsonl, run, "rollout.environment=retry",
                                           "rollout.retry_feedback=wrong, try again", "eval.at_start=false", "eval.at_end=false",
                                           "max_steps=1", "rewards=[{name: math}, {name: env_reward, weight: 0.0}]"))
    GRPOTrainer(cfg, quiet=True).train()
    m = list(read_records(run / "metrics.jsonl"))[0]
    assert m["env/first_turn_accuracy"] == 0.5 and m["env/second_turn_fix_rate"] == 0.5 and m["env/turns"] == 1.5
    assert m["accuracy"] == 0.75  # the last answer is the one scored
    traces = list(read_records(run / "traces.jsonl"))
    assert [t["verdicts"] for t in traces[:4]] == [[False, True], [False, False], [True], [True]]
    assert [t["rewards"]["env_reward"] for t in traces[:4]] == [1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("override, expected", [
    ("rollout.tools=[calculater]", "rollout.tools: unknown tool 'calculater'; built-in tools: calculator, python"),
    ("rollout.tools=[no_such_mod:f]", "rollout.tools: tool 'no_such_mod:f': cannot import module 'no_such_mod'"),
    ("rollout.max_tool_calls=2", "rollout.max_tool_calls: has no effect without rollout.tools"),
    ("rollout.max_turns=3", "rollout.max_turns: has no effect without rollout.environment"),
    ("rollout.environment=nope", "rollout.environment: unknown environment 'nope'; built-in: retry"),
])
def test_bad_tool_settings_are_one_line_errors_before_the_model_loads(tmp_path, arithmetic_jsonl, capsys, override, expected):
    from rl_reasoning import cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    # the model does not exist: the error must come before anything tries to load it
    args = ["train", "--quiet", str(recipe), *tool_overrides(tmp_path / "no-model", arithmetic_jsonl, tmp_path / "run"), override]
    code = cli.main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


def test_tools_placeholder_and_column_clashes_are_errors(tiny_model_dir, tmp_path):
    from rl_reasoning.trainer import GRPOTrainer

    with pytest.raises(ConfigError, match="has a \\{tools\\} placeholder"):
        load_config(None, ["prompt.system_prompt=Use {tools}"])
    cfg = load_config(None, ["rollout.tools=[calculator]", "prompt.system_prompt=Tools: {tools}. Go."])
    assert cfg.rollout.tools == ["calculator"]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"question": "q{i}", "answer": "1", "turns": 3}}\n' for i in range(8)))
    cfg = load_config(None, [f"model.name={tiny_model_dir}", "data.source=jsonl", f"data.path={data}", "data.eval_size=2",
                             "rollout.tools=[calculator]", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="column\\(s\\) turns would be overwritten"):
        GRPOTrainer(cfg, quiet=True)


def test_vllm_backend_refuses_tools():
    with pytest.raises(ConfigError, match="the vLLM backend does not support tools or environments yet"):
        load_config(None, ["rollout.tools=[calculator]", "rollout.backend=vllm"])


# ---------------------------------------------------------------------------- hostile user tools (issue 32, item 8)

HOSTILE_TOOLS = '''
import os
import signal
import sys

def pid(x: str):
    """The worker's process id."""
    return os.getpid()

def interrupt(x: str):
    """Raises KeyboardInterrupt."""
    raise KeyboardInterrupt

def exits(x: str):
    """Raises SystemExit."""
    raise SystemExit(3)

def closes(x: str):
    """Raises GeneratorExit."""
    raise GeneratorExit("closing")

def hard_exit(x: str):
    """Ends its process at once."""
    os._exit(3)

def killed(x: str):
    """Its process is killed."""
    os.kill(os.getpid(), signal.SIGKILL)

class Unprintable(Exception):
    def __str__(self):
        raise ValueError("no message")

def unprintable(x: str):
    """Raises an exception whose message cannot be read."""
    raise Unprintable

def scribble(x: str):
    """Writes to the terminal behind print's back."""
    os.write(1, b"\\x1b[2Jout of the worker\\n")
    os.write(2, b"\\x1b[31merr of the worker\\n")
    sys.__stderr__.write("sys.__stderr__ of the worker\\n")
    sys.__stderr__.flush()
    return "ok"
'''


@pytest.fixture
def hostile_tools(tmp_path, monkeypatch):
    yield from importable_module(tmp_path, monkeypatch, "hostile_test_tools", HOSTILE_TOOLS)


@pytest.mark.parametrize("tool, error, same_worker", [
    ("interrupt", "KeyboardInterrupt", True),
    ("exits", "SystemExit: 3", True),
    ("closes", "GeneratorExit: closing", True),
    ("hard_exit", "the tool's process died (exit code 3)", False),  # the worker is gone: a new one takes the next call
    ("killed", "the tool's process died (killed by SIGKILL)", False),
    ("unprintable", "Unprintable", True),
])
def test_a_tool_raising_a_base_exception_or_ending_its_process_is_a_call_error_and_prints_nothing(hostile_tools, capfd, tool, error,
                                                                                                     same_worker):
    """Issue 32: a KeyboardInterrupt in a user tool used to kill its worker and print
    multiprocessing's traceback on the user's terminal. Every way out of a tool is the call's error."""
    box = Toolbox([f"{hostile_tools}:pid", f"{hostile_tools}:{tool}"], timeout=20.0, workers=1)
    try:
        before = box.run(["x"])[0]
        call = box.run([f"{tool}: x"])[0]
        after = box.run(["x"])[0]
        assert (call.name, call.output, call.error) == (tool, "", error)
        assert before.error is None and after.error is None and int(after.output) > 0  # the next call works
        assert (after.output == before.output) == same_worker
    finally:
        box.close()
    assert capfd.readouterr() == ("", "")  # captured at the file descriptors: the worker's writes included


def test_nothing_a_tool_writes_reaches_the_terminal(hostile_tools, capfd):
    box = Toolbox([f"{hostile_tools}:scribble"], workers=1)
    try:
        call = box.run(["x"])[0]
    finally:
        box.close()
    assert (call.output, call.error) == ("ok", None)
    assert capfd.readouterr() == ("", "")


def test_a_keyboard_interrupt_tool_in_training_is_recorded_and_prints_no_traceback(tiny_model_dir, arithmetic_jsonl, tmp_path,
                                                                                   monkeypatch, hostile_tools, capfd):
    """The issue's reproduction: one training step with such a tool as the only tool."""
    from rl_reasoning.jsonl import read_records
    from rl_reasoning.rollout import RolloutEngine
    from rl_reasoning.trainer import GRPOTrainer

    monkeypatch.setattr(RolloutEngine, "generate", scripted_generate(tool_user))
    run = tmp_path / "run"
    cfg = load_config(None, tool_overrides(tiny_model_dir, arithmetic_jsonl, run, f"rollout.tools=[{hostile_tools}:interrupt]",
                                           "eval.at_start=false", "eval.at_end=false", "max_steps=1"))
    GRPOTrainer(cfg, quiet=True).train()
    errors = [c["error"] for t in read_records(run / "traces.jsonl") for c in t["tool_calls"]]
    assert errors == ["KeyboardInterrupt"] * 4  # the even rows of both groups called it
    assert list(read_records(run / "metrics.jsonl"))[0]["tools/error_rate"] == 1.0
    err = capfd.readouterr().err
    assert "Traceback" not in err and "SpawnProcess" not in err and "KeyboardInterrupt" not in err, err


def test_ctrl_c_is_left_to_the_trainer(hostile_tools, capfd):
    """Ctrl-C signals the whole process group: a worker ignores it (the trainer stops cleanly and
    says so) instead of dying with a traceback on the terminal."""
    import os
    import signal

    box = Toolbox([f"{hostile_tools}:pid"], workers=1)
    try:
        worker = int(box.run(["x"])[0].output)
        os.kill(worker, signal.SIGINT)
        time.sleep(0.5)
        after = box.run(["x"])[0]
        assert (after.output, after.error) == (str(worker), None)
    finally:
        box.close()
    assert capfd.readouterr() == ("", "")


def test_rewards_get_the_sampled_completion_ids_without_the_tool_results(tiny_model_dir, arithmetic_jsonl, tmp_path, monkeypatch):
    """docs/tools.md: the `completion_ids` a reward receives are the model's own tokens, the
    <result>...</result> tokens left out (so a length reward does not count a tool's output)."""
    from rl_reasoning.jsonl import read_records
    from rl_reasoning.rollout import RolloutEngine
    from rl_reasoning.trainer import GRPOTrainer
    from tests import reward_fns

    monkeypatch.setattr(RolloutEngine, "generate", scripted_generate(tool_user))
    reward_fns.RECORDED.clear()
    run = tmp_path / "run"
    cfg = load_config(None, tool_overrides(tiny_model_dir, arithmetic_jsonl, run, "rollout.tools=[calculator]", "eval.at_start=false",
                                           "eval.at_end=false", "max_steps=1",
                                           "rewards=[{name: math}, {name: 'tests.reward_fns:recorded_completion_ids', weight: 0.0}]"))
    trainer = GRPOTrainer(cfg, quiet=True)
    trainer.train()
    [call] = reward_fns.RECORDED
    traces = list(read_records(run / "traces.jsonl"))
    assert call["completions"] == [t["completion"] for t in traces]
    called = 0
    for text, ids, trace in zip(call["completions"], call["completion_ids"], traces, strict=True):
        segments = [text]  # what the scripted policy wrote, each segment tokenised on its own as it sampled it
        if trace["tool_calls"]:
            [tool] = trace["tool_calls"]
            result = f"<result>{tool['output']}</result>"
            segments = text.split(result)
            assert len(segments) == 2 and tool["error"] is None
            called += 1
        assert ids == [i for s in segments for i in trainer.tokenizer(s, add_special_tokens=False).input_ids], text
        assert "<result>" not in trainer.tokenizer.decode(ids)
    assert called == len(traces) // 2 > 0  # the even rows called the calculator
