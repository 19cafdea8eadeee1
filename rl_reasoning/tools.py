"""Tools a model may call in the middle of a completion, and the runner that calls them safely.

The call format is plain text inside the completion, so it works with any chat template:
    ... <tool>47 + 38</tool>            (the first tool of `rollout.tools` takes the call)
    ... <tool>python: print(2**10)</tool>  (a tool named explicitly: "name: arguments")
The rollout (multiturn.py) stops a completion when it writes `</tool>`, the call runs here, and
`<result>85</result>` (or `<result>error: ...</result>`) is appended as tokens the loss ignores.

Tools:
- `calculator`: arithmetic on numbers with + - * / // % ** and parentheses, evaluated on the
  parsed syntax tree (no `eval`), with bounds on the expression's length and the size of powers.
- `python`: runs the argument as a program in the reward sandbox (rewards/sandbox.py, with its
  isolation and limits) and returns what it printed.
- user tools: plain Python functions named in the recipe (`tools: [my_tools:lookup]`, a module
  next to the recipe is importable). They are described to the model from their signature and
  docstring (as TRL does). A tool with one parameter gets the call's text; a tool with several
  takes a JSON object of keyword arguments. User tools run in worker processes (spawned, at most
  4 calls at once); a call's time limit starts when a worker takes it, and a worker that
  overruns `rollout.tool_timeout` is killed and replaced. What a user tool prints goes into a
  capped buffer and is dropped (what it writes to the file descriptors themselves goes to
  /dev/null: nothing from a worker reaches the terminal); its result must be text or a number.

Nothing a tool does stops a run: an exception of any kind (KeyboardInterrupt, SystemExit and
GeneratorExit included), the death of its worker (os._exit, a signal: the worker is replaced),
a timeout, an oversize or non-text result and a malformed call all become `ToolCall.error`,
recorded in the trace, and the model reads "error: ..." as the result. Outputs longer than
`rollout.max_tool_output_chars` are cut.
Departure from TRL: calls are text tags inside the assistant turn rather than the chat
template's tool-call format, because the small models this toolkit starts from (SmolLM2) have
no tool role in their template.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import json
import math
import multiprocessing
import operator
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from .dotted import load_dotted
from .errors import ConfigError

CALL_OPEN, CALL_CLOSE = "<tool>", "</tool>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
NAMED_CALL = re.compile(r"\s*([A-Za-z_]\w*)\s*:\s*(.*)\Z", re.DOTALL)


@dataclass
class ToolCall:
    """One call, as the trace records it."""

    name: str | None  # the tool that ran (None: the call named no known tool)
    arguments: str  # the text between <tool> and </tool>
    output: str = ""  # what the model reads inside <result>...</result> (after the size cap)
    error: str | None = None  # why the call failed; None when it succeeded
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def result_text(self) -> str:
        return f"{RESULT_OPEN}{'error: ' + self.error if self.error else self.output}{RESULT_CLOSE}"


# ---------------------------------------------------------------------------- built-in tools

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 1000
MAX_RESULT_DIGITS = 1000
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses. Example: 47 + 38"""
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    if not text:
        raise ValueError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {text!r}") from None
    return _format_number(_evaluate(tree.body))


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or (abs(left) > 1 and abs(right) * math.log10(abs(left)) > MAX_RESULT_DIGITS)):
            raise ValueError("power too large")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        except OverflowError:
            raise ValueError("result too large") from None
        if isinstance(value, complex):
            raise ValueError("complex result")
        if isinstance(value, int) and value.bit_length() > MAX_RESULT_DIGITS * 3.33:
            raise ValueError("result too large")
        return value
    raise ValueError(f"unsupported element {type(node).__name__} (numbers and + - * / // % ** only)")


def _format_number(value: int | float) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("result is not a finite number")
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.10g}"
    return str(value)


def python(code: str, *, seconds: float = 5.0) -> str:
    """Run a short Python program and return what it prints. Example: print(47 + 38)"""
    from rewards.sandbox import SandboxLimits, run_sample

    # The harness reports only an exception's type; the program reports its own error line on stderr.
    program = (f"import sys\ntry:\n    exec(compile({code!r}, '<tool>', 'exec'), {{'__name__': '__main__'}})\n"
               "except BaseException as _e:\n    sys.stderr.write(f'{type(_e).__name__}: {_e}\\n')\n")
    limits = SandboxLimits(sample_seconds=seconds, test_seconds=seconds, output_bytes=64 * 1024)
    result = run_sample(program, [], limits)
    errors = result.stderr.strip().splitlines()
    if errors or result.details:
        raise RuntimeError(errors[-1] if errors else "; ".join(result.details))
    return result.stdout


BUILTIN_TOOLS: dict[str, Callable] = {"calculator": calculator, "python": python}


# ---------------------------------------------------------------------------- tool specs

@dataclass(frozen=True)
class ToolSpec:
    name: str  # what the model writes ("calculator", or the function's name)
    target: str  # "calculator" | "python" | "module:function"
    parameters: tuple[str, ...]
    description: str
    builtin: bool

    def signature_line(self) -> str:
        return f"{self.name}({', '.join(self.parameters)}): {self.description}"


def resolve_tool(target: str, key: str = "rollout.tools") -> ToolSpec:
    """A tool by built-in name or dotted path (`module:function` or `module.function`); a
    ConfigError naming `key` when it does not exist or cannot be called with text."""
    if target in BUILTIN_TOOLS:
        fn, builtin = BUILTIN_TOOLS[target], True
    else:
        fn, builtin = _load_function(target, key), False
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {target!r} has no inspectable signature") from None
    params = [p for p in sig.parameters.values()
              if p.kind == p.POSITIONAL_OR_KEYWORD or (p.kind == p.KEYWORD_ONLY and p.default is p.empty)]  # keyword-only options are ours
    if not params or any(p.kind in (p.VAR_POSITIONAL,) for p in sig.parameters.values()):
        raise ConfigError(f"{key}: {target!r} must take at least one named parameter (the call's arguments)")
    doc = inspect.getdoc(fn) or ""
    first = doc.split("\n\n")[0].replace("\n", " ").strip() or "(no description)"
    name = target if builtin else fn.__name__
    return ToolSpec(name, target, tuple(p.name for p in params), first, builtin)


def _load_function(target: str, key: str) -> Callable:
    return load_dotted(target, key, "tool", f"built-in tools: {', '.join(BUILTIN_TOOLS)} (or a dotted path such as my_tools:lookup)")


def describe_tools(specs: list[ToolSpec]) -> str:
    """The text that tells the model which tools it has and how to call them."""
    lines = [f"You can call a tool by writing {CALL_OPEN}arguments{CALL_CLOSE}; its result comes back as {RESULT_OPEN}...{RESULT_CLOSE}."]
    if len(specs) > 1:
        lines.append(f"Name the tool first, as in {CALL_OPEN}{specs[1].name}: arguments{CALL_CLOSE}; without a name, {specs[0].name} is called.")
    lines.append("Tools:")
    lines += [f"- {s.signature_line()}" for s in specs]
    if any(len(s.parameters) > 1 for s in specs):
        lines.append("A tool with several parameters takes a JSON object of them.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- running calls

def _run_user_tool(target: str, arguments, max_chars: int) -> tuple[str | None, str | None]:
    """In a worker process: call the user's function; returns (output, error), text only, cut to
    `max_chars` here so a huge result never crosses the pipe."""
    sink = _CappedWriter(max_chars)
    try:
        fn = _load_function(target, "rollout.tools")
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            value = fn(**arguments) if isinstance(arguments, dict) else fn(arguments)
        output, error = _as_text(value)
    except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt, SystemExit, GeneratorExit too: the call's result
        return None, _exception_text(e)[:max_chars]
    return (output[:max_chars] if output is not None else None), error


def _exception_text(e: BaseException) -> str:
    """"Type: message", or "Type" when the message is empty (or cannot be read)."""
    try:
        message = str(e)
    except BaseException:  # noqa: BLE001 - a tool's exception whose __str__ fails
        message = ""
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def _as_text(value) -> tuple[str | None, str | None]:
    if isinstance(value, str):
        return value, None
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return str(value), None
    return None, f"returned {type(value).__name__}; a tool must return text or a number"


class _CappedWriter(io.TextIOBase):
    """stdout/stderr of a user tool: keeps the first `cap` characters and drops the rest."""

    def __init__(self, cap: int):
        self.cap, self.kept = cap, []
        self.size = 0

    def write(self, s: str) -> int:
        if self.size < self.cap:
            self.kept.append(s[: self.cap - self.size])
            self.size += len(self.kept[-1])
        return len(s)


def _worker_main(conn, paths: list[str]) -> None:
    """A user-tool worker process: run calls sent over `conn` until the pipe closes. Nothing it
    does reaches the terminal: Ctrl-C is the trainer's to handle, and its stdout and stderr
    (the file descriptors, so multiprocessing's tracebacks too) are /dev/null."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    while True:
        try:
            target, arguments, max_chars = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_run_user_tool(target, arguments, max_chars))  # plain str or None: always picklable


class _Worker:
    """One worker process and its pipe. A call's time limit starts when the call is sent, so a
    call never times out for waiting behind another; a worker that overruns is killed."""

    def __init__(self):
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, list(sys.path)), daemon=True)
        self.proc.start()
        child.close()

    def call(self, target: str, arguments, max_chars: int, timeout: float) -> tuple[str | None, str | None]:
        self.conn.send((target, arguments, max_chars))
        if not self.conn.poll(timeout):
            raise TimeoutError
        return self.conn.recv()  # EOFError when the process died

    def death(self) -> str:
        """The error of a call whose worker died: how it ended (exit code or signal)."""
        self.proc.join(2)
        code = self.proc.exitcode
        if code is None:
            return "the tool's process died"
        if code < 0:
            return f"the tool's process died (killed by {next((s.name for s in signal.Signals if s == -code), f'signal {-code}')})"
        return f"the tool's process died (exit code {code})"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class Toolbox:
    """The recipe's tools: parses calls, runs a round of them in parallel, cuts their outputs."""

    def __init__(self, targets: list[str], timeout: float = 5.0, max_output_chars: int = 500, workers: int = 4):
        self.specs = [resolve_tool(t) for t in targets]
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"rollout.tools: two tools share a name ({names})")
        self.by_name = {s.name: s for s in self.specs}
        self.timeout, self.max_output_chars, self.workers = timeout, max_output_chars, workers
        self._idle: queue.SimpleQueue = queue.SimpleQueue()  # user-tool workers not running a call; None = not started yet
        for _ in range(workers):
            self._idle.put(None)
        self._started: list[_Worker] = []
        self._lock = threading.Lock()

    def describe(self) -> str:
        return describe_tools(self.specs)

    def parse(self, body: str) -> tuple[ToolSpec, object, str | None]:
        """(tool, arguments, error) for the text between <tool> and </tool>."""
        spec, text = self.specs[0], body
        named = NAMED_CALL.match(body)
        if named and named.group(1) in self.by_name:
            spec, text = self.by_name[named.group(1)], named.group(2)
        if len(spec.parameters) == 1:
            return spec, text.strip(), None
        try:
            arguments = json.loads(text)
        except json.JSONDecodeError as e:
            return spec, None, f"{spec.name} takes a JSON object of {', '.join(spec.parameters)} ({e.msg})"
        if not isinstance(arguments, dict) or not set(arguments) <= set(spec.parameters):
            return spec, None, f"{spec.name} takes a JSON object with keys among {', '.join(spec.parameters)}"
        return spec, arguments, None

    def run(self, bodies: list[str]) -> list[ToolCall]:
        """Run one round of calls (their bodies), in parallel; never raises for what a tool does."""
        if not bodies:
            return []
        with ThreadPoolExecutor(max_workers=min(len(bodies), max(self.workers, 1))) as pool:
            return list(pool.map(self._call, bodies))

    def _call(self, body: str) -> ToolCall:
        start = time.perf_counter()
        spec, arguments, error = self.parse(body)
        call = ToolCall(spec.name, body)
        if error is None:
            try:
                output, error = self._invoke(spec, arguments)
            except (ValueError, RuntimeError) as e:  # the built-in tools' own errors, already worded for the model
                output, error = None, str(e)
            except Exception as e:  # noqa: BLE001 - anything else a tool does is the call's result
                output, error = None, f"{type(e).__name__}: {e}"
            if output is not None:
                call.output = self._cap(output)
        call.error = error[: max(self.max_output_chars, 200)] if error else None  # errors keep a readable line
        call.seconds = time.perf_counter() - start
        return call

    def _invoke(self, spec: ToolSpec, arguments) -> tuple[str | None, str | None]:
        if spec.builtin:
            fn = BUILTIN_TOOLS[spec.target]
            options = {"seconds": self.timeout} if spec.target == "python" else {}
            return _as_text(fn(**arguments, **options) if isinstance(arguments, dict) else fn(arguments, **options))
        worker = self._idle.get() or self._new_worker()  # waits while every worker is busy (not counted)
        try:
            result = worker.call(spec.target, arguments, self.max_output_chars + 100, self.timeout)
        except TimeoutError:
            self._replace(worker)
            return None, "timeout"
        except (EOFError, OSError):
            error = worker.death()
            self._replace(worker)
            return None, error
        self._idle.put(worker)
        return result

    def _new_worker(self) -> _Worker:
        worker = _Worker()
        with self._lock:
            self._started.append(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._started.remove(worker)
        self._idle.put(None)  # a fresh worker starts on the next call

    def _cap(self, text: str) -> str:
        if len(text) <= self.max_output_chars:
            return text
        return text[: self.max_output_chars] + f"...[{len(text) - self.max_output_chars} more characters]"

    def close(self) -> None:
        with self._lock:
            workers, self._started = self._started, []
        for worker in workers:
            worker.kill()
        self._idle = queue.SimpleQueue()
        for _ in range(self.workers):
            self._idle.put(None)
