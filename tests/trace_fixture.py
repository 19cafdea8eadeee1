"""A hand-written run directory (metrics, traces, evaluations) for the trace tools' tests.

6 steps x 2 prompts x G=4. Prompt "q-add" recurs at steps 1, 3 and 5. Reflection appears
from step 4 on; step 5 holds one wrong->right revision ("aha"), one right->wrong and one
wrong->wrong. Held-out evaluation at steps 0 and 6 on two problems.
"""

from __future__ import annotations

import json
from pathlib import Path

QUESTIONS = {
    "q-add": ("What is 3 + 5?", "8"),
    "q-sub": ("What is 9 - 4?", "5"),
    "q-mul": ("What is 6 * 7?", "42"),
    "q-div": ("What is 8 / 2?", "4"),
}
PLAN = {1: ("q-add", "q-sub"), 2: ("q-mul", "q-div"), 3: ("q-add", "q-mul"), 4: ("q-sub", "q-div"), 5: ("q-add", "q-sub"), 6: ("q-mul", "q-div")}

AHA = "<think>3 + 5 = 9. Wait, let me re-check: 3 + 5 = 8.</think> <answer>8</answer>"
RIGHT_TO_WRONG = "<think>9 - 4 = 5. Hmm, actually the answer is 6.</think> <answer>6</answer>"
WRONG_TO_WRONG = "<think>9 - 4 = 3. Wait, 9 - 4 = 6.</think> <answer>6</answer>"
VERIFIED = "<think>6 * 7 = 42. Let me verify: 42 / 7 = 6. Correct.</think> <answer>42</answer>"
WAIT_TIME = "<think>The wait time does not matter. 8 / 2 = 4.</think> <answer>4</answer>"


def _completions(step: int, pid: str) -> list[str]:
    question, gold = QUESTIONS[pid]
    plain_right = f"<think>{question.removeprefix('What is ').rstrip('?')} = {gold}</think> <answer>{gold}</answer>"
    plain_wrong = "<think>I think it is 1</think> <answer>1</answer>"
    if step == 5 and pid == "q-add":
        return [AHA, plain_right, plain_wrong, plain_right]
    if step == 5 and pid == "q-sub":
        return [RIGHT_TO_WRONG, WRONG_TO_WRONG, plain_right, plain_wrong]
    if step >= 4 and pid == "q-mul":
        return [VERIFIED, plain_right, plain_right, plain_wrong]
    if pid == "q-div":
        return [WAIT_TIME, plain_wrong, plain_wrong, plain_right]
    return [plain_right, plain_wrong, plain_wrong, plain_wrong] if step < 3 else [plain_right, plain_right, plain_wrong, plain_wrong]


def _is_correct(text: str, gold: str) -> bool:
    return text.rstrip().endswith(f"<answer>{gold}</answer>")


def write_fixture_run(run: Path) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    traces, metrics = [], []
    for step, pids in PLAN.items():
        step_rewards, correct_all = [], []
        for pid in pids:
            question, gold = QUESTIONS[pid]
            texts = _completions(step, pid)
            rewards = [1.5 if _is_correct(t, gold) else 0.5 for t in texts]
            mean = sum(rewards) / len(rewards)
            for g, (text, reward) in enumerate(zip(texts, rewards)):
                traces.append({
                    "step": step, "prompt_id": pid, "group_index": g, "prompt": f"<|im_start|>user\n{question}<|im_end|>\n",
                    "completion": text, "answer": gold, "rewards": {"reasoning_gym": reward - 0.5, "format": 0.5},
                    "reward": reward, "correct": _is_correct(text, gold), "advantage": reward - mean,
                    "length": len(text.split()) * 2, "truncated": False,
                })
            step_rewards += rewards
            correct_all += [_is_correct(t, gold) for t in texts]
        n = len(step_rewards)
        metrics.append({
            "step": step, "reward/mean": sum(step_rewards) / n, "reward/std": 0.4, "accuracy": sum(correct_all) / n,
            "format_rate": 1.0, "completions/mean_length": 20.0, "completions/max_length": 30.0, "completions/truncated_frac": 0.0,
            "entropy": 1.0, "groups/zero_std_frac": 0.0, "time/generation": 1.0, "time/reward": 0.01, "time/update": 2.0,
            "time/step": 3.01, "tokens/generated": 160, "tokens/prompt": 40, "tokens/trained": 240, "flops/step": 1e12,
        })
    evals, eval_traces = [], []
    for step in (0, 6):
        for problem, pid in enumerate(("q-add", "q-sub")):
            question, gold = QUESTIONS[pid]
            text = "<think>hmm</think> <answer>0</answer>" if step == 0 else f"<think>ok</think> <answer>{gold}</answer>"
            eval_traces.append({"step": step, "problem": problem, "question": question, "answer": gold, "completion": text,
                                "correct": step == 6, "formatted": True, "length": 6, "truncated": False})
        evals.append({"step": step, "eval/accuracy": 0.0 if step == 0 else 1.0, "eval/format_rate": 1.0, "eval/seconds": 2.0})
    for name, records in (("traces.jsonl", traces), ("metrics.jsonl", metrics), ("eval.jsonl", evals), ("eval_traces.jsonl", eval_traces)):
        (run / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "config.yaml").write_text("max_steps: 6\nprompts_per_step: 2\n")
    (run / "summary.json").write_text(json.dumps({"model_parameters": 1000}))
    return run


# --------------------------------------------------------------------------- a multi-turn ("retry") run

FEEDBACK = "That answer is wrong. Try again.\n{question}"
RETRY_PLAN = {1: "q-add", 2: "q-sub", 3: "q-add"}
OPEN_USER, OPEN_ASSISTANT = "<|im_end|>\n<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"


def _retry_group(step: int) -> list[tuple[list[bool], int]]:
    """(verdicts, answers written) per completion: which turns were right, and how many turns there were."""
    if step == 1:
        return [([False, True], 2), ([False, False], 2), ([True], 1), ([False], 1)]  # fixed, not fixed, right at once, no retry
    if step == 2:
        return [([False, True], 2), ([True], 1), ([], 1), ([False, True], 2)]  # the 3rd is truncated: nothing judged
    return [([False, True], 2), ([True], 1), ([True], 1), ([False, False], 2)]


def retry_metrics(verdicts: list[list[bool]], prefix: str = "") -> dict:
    """env/* as multiturn.episode_metrics defines them."""
    judged = [v for v in verdicts if v]
    wrong_first = [v for v in judged if not v[0]]
    m = {f"{prefix}env/first_turn_accuracy": sum(v[0] for v in judged) / len(judged),
         f"{prefix}env/final_turn_accuracy": sum(v[-1] for v in judged) / len(judged),
         f"{prefix}env/retried_frac": sum(len(v) > 1 for v in wrong_first) / len(wrong_first) if wrong_first else 0.0}
    if wrong_first:
        m[f"{prefix}env/second_turn_fix_rate"] = sum(len(v) > 1 and v[1] for v in wrong_first) / len(wrong_first)
    return m


def retry_record(question: str, gold: str, verdicts: list[bool], turns: int, old: bool = False) -> dict:
    """The episode fields of one completion: each turn answers right or wrong as its verdict says;
    `old` leaves out turn_texts and feedback (runs written before they were recorded)."""
    texts = [f"<think>turn {k + 1}: {question}</think> <answer>{gold if (verdicts[k] if k < len(verdicts) else False) else int(gold) + k + 1}</answer>"
             for k in range(turns)]
    feedback = [FEEDBACK.format(question=question)] * (turns - 1)
    completion = texts[0] + "".join(OPEN_USER + f + OPEN_ASSISTANT + t for f, t in zip(feedback, texts[1:]))
    record = {"completion": completion, "turns": turns, "verdicts": verdicts, "tool_calls": [],
              "correct": bool(verdicts and verdicts[-1]), "truncated": not verdicts}
    return record if old else {**record, "turn_texts": texts, "feedback": feedback}


def write_retry_fixture_run(run: Path) -> Path:
    """3 steps x 1 prompt x G=4 episodes of `rollout.environment: retry` with max_turns 2; step 2's
    last completion is an old-style record (no turn_texts, no feedback). Held-out evaluations at 0 and 3."""
    run.mkdir(parents=True, exist_ok=True)
    traces, metrics = [], []
    for step, pid in RETRY_PLAN.items():
        question, gold = QUESTIONS[pid]
        group = _retry_group(step)
        for g, (verdicts, turns) in enumerate(group):
            record = retry_record(question, gold, verdicts, turns, old=step == 2 and g == 3)
            reward = 1.0 if record["correct"] else 0.0
            traces.append({"step": step, "prompt_id": pid, "group_index": g, "prompt": f"<|im_start|>user\n{question}<|im_end|>\n",
                           "answer": gold, "rewards": {"env_reward": reward}, "reward": reward, "advantage": 0.0,
                           "length": 20 * turns, **record})
        correct = [bool(v and v[-1]) for v, _ in group]
        metrics.append({"step": step, "reward/mean": sum(correct) / 4, "reward/std": 0.5, "accuracy": sum(correct) / 4, "format_rate": 1.0,
                        "completions/mean_length": 30.0, "entropy": 1.0, "time/step": 2.0, "tokens/generated": 120,
                        "env/turns": sum(t for _, t in group) / 4, **retry_metrics([v for v, _ in group])})
    evals, eval_traces = [], []
    for step, verdicts in ((0, [[False, False], [True]]), (3, [[False, True], [True]])):
        for problem, (pid, v) in enumerate(zip(("q-add", "q-sub"), verdicts)):
            question, gold = QUESTIONS[pid]
            eval_traces.append({"step": step, "problem": problem, "question": question, "answer": gold, "length": 10,
                                **retry_record(question, gold, v, len(v))})
        evals.append({"step": step, "eval/accuracy": sum(v[-1] for v in verdicts) / 2, "eval/format_rate": 1.0, "eval/seconds": 1.0,
                      **retry_metrics(verdicts, "eval/")})
    for name, records in (("traces.jsonl", traces), ("metrics.jsonl", metrics), ("eval.jsonl", evals), ("eval_traces.jsonl", eval_traces)):
        (run / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "config.yaml").write_text("rollout:\n  environment: retry\n  max_turns: 2\n")
    return run
