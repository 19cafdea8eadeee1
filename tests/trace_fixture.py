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
