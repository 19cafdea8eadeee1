"""Code reward: run the completion's program against the sample's tests in the local sandbox.

Program extraction: the last fenced code block (```python ...``` or ``` ... ```); with
`extract="full"` the whole completion when there is no block. When the dataset has a `prompt`
column holding a function stub (HumanEval) and the program does not define `entry_point`,
the stub is put in front.

Tests come from the `tests` column (a list of {"call", "expected"} / {"script"} dicts, see
`rewards.sandbox`) or, for HumanEval-style data, from a `test` column holding a `check(candidate)`
function plus an `entry_point` column (converted by `check_to_tests`).

Score per completion (`mode`): "binary" (1 if every test passes, HumanEval's pass@1 rule) or
"fraction" (share of tests passed); None when the sandbox itself failed (never 0 or 1).
Metrics: verdict counts per kind, `no_program_frac`, `sandbox_error_frac`, isolation level,
`runnable_frac` (a program that parses and defines the entry point), `cached_frac`, and with
a `shown_tests` column (the first that many tests are the prompt's examples) `examples_only_frac`:
programs that pass every shown example but fail a hidden test.
Identical (program, tests) pairs within one call run once (a group of G samples often repeats
a short program); `workers` samples (default: one per usable CPU) run at once.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

from .extract import completion_text
from .sandbox import SandboxLimits, isolation_level, run_sample
from .scored import ScoredList

FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
VERDICTS = ("pass", "fail", "timeout", "memory", "runtime_error", "sandbox_error")
_SAFE_BUILTINS = {name: getattr(builtins, name) for name in (
    "abs", "float", "int", "len", "list", "max", "min", "range", "round", "set", "sorted", "str", "sum", "tuple", "dict", "bool",
    "True", "False", "None", "frozenset",
)}


def default_workers() -> int:
    """Samples run at once: one per CPU this process may use (each is a child process doing the work)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def runnable(program: str | None, entry_point: str | None = None) -> bool:
    """The program parses (and defines `entry_point`, when given): judged on the text, nothing runs."""
    if program is None:
        return False
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return entry_point is None or any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point for n in ast.walk(tree))


def with_stub(program: str | None, stub: str | None, entry_point: str) -> str | None:
    """HumanEval-style data: the prompt's function stub put in front when the program does not define `entry_point` (the model wrote only the body)."""
    if program is None or not stub or re.search(rf"def\s+{re.escape(entry_point)}\s*\(", program):
        return program
    return stub + program


def extract_program(text: str, extract: str = "block") -> str | None:
    blocks = FENCE.findall(text)
    if blocks:
        return blocks[-1]
    if extract == "full":
        return text
    if extract != "block":
        raise ValueError(f"code reward: extract must be 'block' or 'full', got {extract!r}")
    return None


def _constant(node: ast.expr):
    """Evaluate a dataset's expected-value expression (trusted data, literals and arithmetic only)."""
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    if not names <= set(_SAFE_BUILTINS):
        raise ValueError("refers to names")
    return eval(compile(ast.Expression(node), "<expected>", "eval"), {"__builtins__": _SAFE_BUILTINS}, {})


def _candidate_call(node: ast.expr, entry_point: str) -> str | None:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "candidate"):
        return None
    arg_names = {n.id for arg in [*node.args, *(k.value for k in node.keywords)] for n in ast.walk(arg) if isinstance(n, ast.Name)}
    if not arg_names <= set(dir(builtins)):
        return None  # the arguments use helpers from the test file
    call = ast.Call(func=ast.Name(entry_point, ast.Load()), args=node.args, keywords=node.keywords)
    return ast.unparse(call)


def _assert_to_test(stmt: ast.stmt, entry_point: str) -> dict | None | bool:
    """A call test for `stmt`, True to skip it (e.g. `assert True`), None if it needs script mode."""
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return True  # a docstring or bare constant
    if not isinstance(stmt, ast.Assert):
        return None
    t = stmt.test
    if isinstance(t, ast.Constant) and t.value is True:
        return True
    try:
        if isinstance(t, ast.Call) and (call := _candidate_call(t, entry_point)):
            return {"call": call, "truthy": True}
        if isinstance(t, ast.UnaryOp) and isinstance(t.op, ast.Not) and (call := _candidate_call(t.operand, entry_point)):
            return {"call": call, "truthy": False}
        if isinstance(t, ast.Compare) and len(t.ops) == 1:
            op, left, right = t.ops[0], t.left, t.comparators[0]
            if isinstance(op, ast.Eq) and (call := _candidate_call(left, entry_point)):
                return {"call": call, "expected": _constant(right)}
            if isinstance(op, ast.Is) and isinstance(right, ast.Constant) and isinstance(right.value, bool) and (call := _candidate_call(left, entry_point)):
                return {"call": call, "expected": right.value, "identical": True}
            # abs(candidate(x) - e) < tol
            if isinstance(op, (ast.Lt, ast.LtE)) and isinstance(left, ast.Call) and getattr(left.func, "id", None) == "abs" and len(left.args) == 1:
                inner = left.args[0]
                if isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Sub) and (call := _candidate_call(inner.left, entry_point)):
                    return {"call": call, "expected": _constant(inner.right), "tolerance": _constant(right)}
    except (ValueError, TypeError, SyntaxError, ZeroDivisionError):
        return None
    return None


def check_to_tests(test_code: str, entry_point: str) -> list[dict]:
    """HumanEval `check(candidate)` -> call tests judged outside the sandbox, or one script test if any assert is not convertible."""
    tree = ast.parse(test_code)
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    script = [{"script": f"{test_code}\n\ncheck({entry_point})\n"}]
    if len(checks) != 1:
        return script
    tests = []
    for stmt in checks[0].body:
        converted = _assert_to_test(stmt, entry_point)
        if converted is None:
            return script
        if converted is not True:
            tests.append(converted)
    return tests or script


def _tests_for(i: int, columns: dict) -> list[dict]:
    if columns.get("tests") is not None and columns["tests"][i] is not None:
        tests = columns["tests"][i]
        if isinstance(tests, str):
            tests = json.loads(tests)
        return list(tests)
    if columns.get("test") is not None and columns.get("entry_point") is not None:
        return check_to_tests(columns["test"][i], columns["entry_point"][i])
    raise ValueError("code reward needs a 'tests' column, or HumanEval-style 'test' and 'entry_point' columns")


def code_reward(
    completions,
    mode: str = "binary",
    extract: str = "block",
    workers: int | None = None,
    test_seconds: float = 5.0,
    sample_seconds: float = 20.0,
    memory_mb: int = 1024,
    **columns,
) -> ScoredList:
    """Example: a completion with ```python\\ndef add(a, b): return a + b\\n``` and tests
    [{"call": "add(1, 2)", "expected": 3}] scores 1.0."""
    if mode not in ("binary", "fraction"):
        raise ValueError(f"code reward: mode must be 'binary' or 'fraction', got {mode!r}")
    limits = SandboxLimits(test_seconds=test_seconds, sample_seconds=sample_seconds, memory_bytes=memory_mb * 1024**2)
    n = len(completions)
    jobs = []
    for i, completion in enumerate(completions):
        program = extract_program(completion_text(completion), extract)
        if columns.get("prompt") is not None and columns.get("entry_point") is not None:
            program = with_stub(program, columns["prompt"][i], columns["entry_point"][i])
        jobs.append((program, _tests_for(i, columns)))

    # identical (program, tests) pairs run once: groups of G samples often repeat a short program
    keys = [None if program is None else (program, json.dumps(tests, sort_keys=True, default=repr)) for program, tests in jobs]
    unique = {key: job for key, job in zip(keys, jobs) if key is not None}

    def run(job):
        program, tests = job
        return run_sample(program, tests, limits)

    workers = workers or default_workers()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unique) or 1))) as pool:
        ran = dict(zip(unique, pool.map(run, unique.values())))
    results = [None if key is None else ran[key] for key in keys]
    scores, counts = [], dict.fromkeys(VERDICTS, 0)
    no_program = examples_only = 0
    shown = columns.get("shown_tests")
    for i, (result, (_, tests)) in enumerate(zip(results, jobs)):
        if result is None:
            no_program += 1
            scores.append(0.0)
            continue
        if shown is not None and shown[i] and not result.sandbox_error:
            k = int(shown[i])
            examples_only += result.verdicts[:k].count("pass") == k and result.passed < len(tests)
        for v in result.verdicts:
            counts[v] += 1
        if result.sandbox_error:
            scores.append(None)
        elif mode == "binary":
            scores.append(1.0 if result.passed == len(tests) and tests else 0.0)
        else:
            scores.append(result.passed / len(tests) if tests else 0.0)
    total_tests = max(sum(counts.values()), 1)
    metrics = {f"verdict_{k}_frac": v / total_tests for k, v in counts.items()}
    metrics["no_program_frac"] = no_program / max(n, 1)
    programs = n - no_program
    entries = columns.get("entry_point")
    metrics["runnable_frac"] = sum(runnable(p, entries[i] if entries is not None else None) for i, (p, _) in enumerate(jobs)) / max(n, 1)
    if shown is not None:  # passes every example the prompt shows, fails a hidden test: overfitting (or special-casing) the examples
        metrics["examples_only_frac"] = examples_only / max(n, 1)
    metrics["cached_frac"] = (programs - len(unique)) / programs if programs else 0.0  # programs judged by an identical one's run
    metrics["namespaces"] = float(isolation_level().startswith("namespaces"))
    return ScoredList(scores, metrics)
