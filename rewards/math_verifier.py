"""Compare math answers with math-verify inside worker processes that can be killed.

Why not call math-verify directly: its timeout is SIGALRM-based (it fails off the main thread:
huggingface/Math-Verify issues 50 and 55), it can hang or eat all memory on exponent towers
(its issue 65), and it rounds
numbers to 6 decimals before comparing, so `1/2004!` equals `1/2006!`. Here:

- Every comparison runs in a long-lived worker process (spawned, so no torch state is
  inherited) with an address-space cap (`RLIMIT_AS`). The parent waits with a wall-clock
  deadline and SIGKILLs a worker that overruns, then starts a fresh one. This works from any
  thread and any process.
- Hostile shapes never reach the CAS: answers longer than `MAX_ANSWER_CHARS`, exponent towers
  (three or more stacked powers) and factorials of numbers above `MAX_FACTORIAL` are refused
  up front.
- Numbers are compared exactly when both are exact (rationals, roots, factorials...), and with a
  *relative* tolerance when a float is involved, after math-verify has said "equal".
- A gold answer with several values (a set, or `\\pm`) only matches a prediction with the same
  values; a prediction with several values never matches a single-valued gold.
- Infinities compare structurally (`\\infty` = `+\\infty`, never `-\\infty`): math-verify says
  equal but `oo - oo` is nan, so the exact check used to turn `\\infty` vs `\\infty` into "different".
- A percentage gold (`28\\%`) also matches the bare number of percent (`28`), as math-verify
  does for integers; `28\\%` in a prediction is always 0.28 (it never matches a gold `28`).

Verdicts: "equal", "different", "pred_unparseable", "gold_unparseable", "refused", "timeout",
"memory", "error". The reward maps gold_unparseable to None, "equal" to 1 and the rest to 0.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

MAX_ANSWER_CHARS = 512
MAX_FACTORIAL = 100_000
DEFAULT_TIMEOUT_S = 3.0
DEFAULT_MEMORY_BYTES = 2 * 1024**3
RELATIVE_TOLERANCE = 1e-6

_TOWER = re.compile(r"\^\s*[({]?[^^]{0,40}?\^\s*[({]?[^^]{0,40}?\^")  # three stacked carets
_PY_TOWER = re.compile(r"\*\*[^*]{0,40}\*\*[^*]{0,40}\*\*")
_FACTORIAL = re.compile(r"(\d+)\s*!")


def refuse_reason(text: str) -> str | None:
    """Why `text` must not be handed to a CAS, or None when it is safe to parse."""
    if len(text) > MAX_ANSWER_CHARS:
        return f"longer than {MAX_ANSWER_CHARS} characters"
    if _TOWER.search(text) or _PY_TOWER.search(text):
        return "exponent tower"
    for m in _FACTORIAL.finditer(text):
        if len(m.group(1)) > 7 or int(m.group(1)) > MAX_FACTORIAL:
            return "huge factorial"
    return None


# ----------------------------------------------------------------------------- worker side


def _parse(text: str):
    from math_verify import LatexExtractionConfig, parse

    # LaTeX extraction only: it goes through latex2sympy's grammar. math-verify's plain-expression
    # extractor hands text to sympy's parse_expr, which is an eval, so model text never goes there.
    wrapped = text if "$" in text or "\\boxed" in text else f"${text}$"
    parsed = parse(
        wrapped,
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
        parsing_timeout=None,  # the parent enforces the deadline
    )
    return [p for p in parsed if not isinstance(p, str)]  # drop math-verify's raw-string fallback


def _values(expr):
    """The set of values an answer denotes: a FiniteSet's elements, else the expression itself."""
    import sympy

    if isinstance(expr, sympy.FiniteSet):
        return list(expr.args)
    return [expr]


def _exact_equal(a, b) -> bool | None:
    """True/False when both are plain numbers we can compare exactly or relatively; None otherwise."""
    import sympy

    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)) or not (a.is_number and b.is_number):
        return None
    a, b = a.doit(), b.doit()  # math-verify leaves e.g. 25% as an unevaluated 25*(1/100)
    if a.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan) or b.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan):
        return a == b and not a.has(sympy.nan, sympy.zoo)  # oo - oo is nan: compare infinities structurally
    try:
        if a.has(sympy.Float) or b.has(sympy.Float):
            fa, fb = complex(sympy.N(a, 30)), complex(sympy.N(b, 30))
            scale = max(abs(fa), abs(fb))
            return abs(fa - fb) <= RELATIVE_TOLERANCE * scale if scale else True
        diff = sympy.simplify(a - b)
    except (TypeError, ValueError):
        return None  # not a plain number after all: keep math-verify's verdict
    return bool(diff == 0) if diff.is_number else None


def compare(gold: str, pred: str) -> str:
    """Run in a worker: the verdict for one (gold, prediction) pair."""
    from math_verify import verify

    if refuse_reason(gold):
        return "gold_unparseable"
    if refuse_reason(pred):
        return "refused"
    gold_parsed = _parse(gold)
    if not gold_parsed:
        return "gold_unparseable"
    pred_parsed = _parse(pred)
    if not pred_parsed:
        return "pred_unparseable"
    g, p = gold_parsed[0], pred_parsed[0]
    g_vals, p_vals = _values(g), _values(p)
    if len(g_vals) != len(p_vals):  # {1331, 1728} vs 1728; 2021 vs \pm 2021
        return "different"
    if len(g_vals) == 1 and _percent_gold_bare_pred(g, p):
        return "equal"
    if not verify(g, p, timeout_seconds=None):
        return "different"
    if len(g_vals) == 1:
        exact = _exact_equal(g, p)
        if exact is False:
            return "different"
    return "equal"


def _percent_of(expr):
    """X for math-verify's X% (X*UnevaluatedExpr(1/100)), else None."""
    import sympy

    if isinstance(expr, sympy.Mul) and len(expr.args) == 2 and expr.args[1] == sympy.UnevaluatedExpr(sympy.Rational(1, 100)):
        return expr.args[0]
    return None


def _percent_gold_bare_pred(g, p) -> bool:
    """Gold `28\\%`, prediction a bare `28`: the gold's percent sign names the unit the number is in
    (math-verify's own rule for integers). A prediction that carries a percent sign never gets this."""
    value = _percent_of(g)
    return value is not None and _percent_of(p) is None and _exact_equal(value, p) is True


def _worker_main(memory_bytes: int) -> None:
    """`python -m rewards.math_verifier --worker BYTES`: one JSON task per stdin line, one verdict per stdout line."""
    import json
    import resource
    import signal
    import sys

    # A Ctrl-C in the terminal reaches the whole process group; the trainer finishes its step on
    # the first one (docs/resume.md), so the checker must not die under that step's comparisons.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    import math_verify  # noqa: F401 - warm the import before the first task

    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        gold, pred = json.loads(line)
        try:
            verdict = compare(gold, pred)
        except MemoryError:
            verdict = "memory"
        except Exception:  # noqa: BLE001 - a CAS failure (RecursionError included) is a verdict, not a crash
            verdict = "error"
        out.write(verdict + "\n")
        out.flush()


# ----------------------------------------------------------------------------- parent side


class _Worker:
    """A child interpreter (not a multiprocessing spawn, so it never re-imports the user's __main__)."""

    def __init__(self, memory_bytes: int):
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        env.pop("OMP_NUM_THREADS", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rewards.math_verifier", "--worker", str(memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
        )
        self.ready = False

    @property
    def stdout(self):
        return self.process.stdout

    def send(self, gold: str, pred: str) -> None:
        self.process.stdin.write(json.dumps([gold, pred]) + "\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        for f in (self.process.stdin, self.process.stdout):
            try:
                f.close()
            except OSError:
                pass


class MathVerifierPool:
    """A few killable worker processes; `compare_many` is thread-safe."""

    def __init__(self, workers: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S, memory_bytes: int = DEFAULT_MEMORY_BYTES):
        self.size = max(1, workers)
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.restarts = 0

    def _ensure_workers(self) -> None:
        while len(self._workers) < self.size:
            self._workers.append(_Worker(self.memory_bytes))
        for w in self._workers:
            if not w.ready:
                ready, _, _ = select.select([w.stdout], [], [], 120)
                if not ready or w.stdout.readline().strip() != "ready":
                    raise RuntimeError("math verifier worker did not start")
                w.ready = True

    def compare_many(self, pairs: list[tuple[str, str]]) -> list[str]:
        """Verdicts for (gold, prediction) pairs, in order; refused inputs never reach a worker."""
        verdicts: list[str | None] = [None] * len(pairs)
        todo = []
        for i, (gold, pred) in enumerate(pairs):
            if refuse_reason(pred):
                verdicts[i] = "refused"
            elif refuse_reason(gold):
                verdicts[i] = "gold_unparseable"
            else:
                todo.append(i)
        if not todo:
            return verdicts  # type: ignore[return-value]
        with self._lock:
            self._ensure_workers()
            pending = list(reversed(todo))
            busy: dict[int, tuple[int, float]] = {}  # worker index -> (pair index, deadline)
            while pending or busy:
                for w_idx, worker in enumerate(self._workers):
                    if w_idx not in busy and pending:
                        i = pending.pop()
                        try:
                            worker.send(*pairs[i])
                        except (BrokenPipeError, OSError):  # died between tasks
                            self._replace(w_idx)
                            self._ensure_workers()
                            self._workers[w_idx].send(*pairs[i])
                        busy[w_idx] = (i, time.monotonic() + self.timeout_s)
                next_deadline = min(d for _, d in busy.values())
                streams = {self._workers[w].stdout: w for w in busy}
                ready, _, _ = select.select(list(streams), [], [], max(0.0, next_deadline - time.monotonic()))
                ready_workers = {streams[r] for r in ready}
                for w_idx in list(busy):
                    i, deadline = busy[w_idx]
                    if w_idx in ready_workers:
                        line = self._workers[w_idx].stdout.readline().strip()
                        verdicts[i] = line or "memory"  # EOF: the worker died (memory cap, OOM killer)
                        if not line:
                            self._replace(w_idx)
                        del busy[w_idx]
                    elif time.monotonic() >= deadline:
                        verdicts[i] = "timeout"
                        self._replace(w_idx)
                        del busy[w_idx]
                if any(not w.ready for w in self._workers):
                    self._ensure_workers()
        return verdicts  # type: ignore[return-value]

    def _replace(self, w_idx: int) -> None:
        self._workers[w_idx].kill()
        self._workers[w_idx] = _Worker(self.memory_bytes)
        self.restarts += 1

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        self._workers = []


_POOL: MathVerifierPool | None = None
_POOL_PID: int | None = None


def shared_pool() -> MathVerifierPool:
    """One pool per process (recreated after a fork)."""
    global _POOL, _POOL_PID
    if _POOL is None or _POOL_PID != os.getpid():
        workers = int(os.environ.get("RL_REASONING_MATH_WORKERS", min(2, os.cpu_count() or 1)))
        _POOL, _POOL_PID = MathVerifierPool(workers=workers), os.getpid()
        atexit.register(_POOL.close)
    return _POOL


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker_main(int(sys.argv[2]))
